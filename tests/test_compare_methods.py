"""benchmarks/compare_methods.py: the grid runs what is missing in its priority order, survives a failed run, builds its
table (mean ± std over the seeds that finished) from whatever exists, and every run's command is one the demo
accepts, differing from the others only in method settings, budget, distribution, seed and output directory."""

import importlib.util
import json
import os
import statistics
import sys

from tests.test_demo import SCRIPTS, load_demo


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (registered, so that its own imports of sibling scripts find it)."""
    folder = os.path.join(SCRIPTS, "..", "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_grid():
    return load_benchmark("compare_methods")


def test_grid_runs_what_is_missing_in_priority_order_and_tables_what_finished(tmp_path, monkeypatch):
    grid = load_grid()
    out = str(tmp_path / "grid")
    os.makedirs(out)
    accuracy = {"dense": 0.86, "magnitude": 0.78, "pdp": 0.79}
    for name in ("dense_s42", "magnitude_90u_s42"):  # finished in an earlier, interrupted session
        with open(os.path.join(out, name + ".json"), "w") as f:
            json.dump({"accuracy": accuracy[name.split("_")[0]], "sparsity": 0.9, "minutes": 10.0, "argv": []}, f)
    ran = []

    def fake_run(name, argv, out_dir):
        ran.append(name)
        if name == "pdp_90u_s43":
            return False  # a crashed run: reported, the grid goes on
        seed = int(name.rsplit("_s", 1)[1])
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump({"accuracy": accuracy[name.split("_")[0]] + (seed - 42) / 100, "sparsity": 0.9, "minutes": 9.0}, f)
        return True

    monkeypatch.setattr(grid, "run_one", fake_run)
    monkeypatch.setattr(grid, "available_methods", lambda: {"dense", "magnitude", "pdp"})  # no smart/movement yet
    grid.main(["--out", out, "--settings", "90u", "tune"])
    assert ran == [
        "pdp_90u_s42",  # every method at seed 42 of 90% uniform first
        "magnitude_tune_sparsity_schedulelinear_s42",  # the baseline's own knob
        "magnitude_90u_s43", "pdp_90u_s43", "magnitude_90u_s44", "pdp_90u_s44",  # the seeds of the compared methods
        "dense_s43", "dense_s44",
        "pdp_tune_temperature0.02_s42", "pdp_tune_temperature0.2_s42",
    ]
    table = open(out + ".md", encoding="utf-8").read()
    assert os.path.getsize(out + ".png") > 0
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in table.split("Differences")[0].splitlines()
            if line.startswith("| 9")}
    magnitude = [78.0, 79.0, 80.0]
    assert f"| 3 | {statistics.mean(magnitude):.2f} ± {statistics.stdev(magnitude):.2f} | 78.00, 79.00, 80.00 |" in rows[
        ("90% unstructured, uniform", "magnitude")]
    assert "| 2 | 80.00 ± 1.41 | 79.00, 81.00 |" in rows[("90% unstructured, uniform", "pdp")]  # seed 43 failed
    assert "not run yet" in rows[("90% unstructured, uniform", "smart")]
    # pdp finished seeds 42 and 44; each is 1 point above magnitude and 7 below dense at the same seed
    assert "| 90% unstructured, uniform | pdp | +1.00 ± 0.00 (2 seeds) | -7.00 ± 0.00 (2 seeds) |" in table
    assert "| magnitude | `--sparsity_schedule` | linear | 78.00 |" in table
    assert "| movement | `--movement_score_init` | magnitude (default) | not run yet |" in table


def test_every_run_is_a_demo_command_that_changes_only_the_compared_settings():
    grid, demo = load_grid(), load_demo()
    table = {**grid.runs(grid.ORDER)}
    assert len(table) == len(set(table))
    base_args, base_training, base_config = demo.parse_args([])
    compared = {"method", "target_sparsity", "sparsity_distribution", "granularity", "sparsity_schedule",
                "teacher_model_name_or_path", "score_learning_rate", "temperature", "smart_temperature_start",
                "movement_score_init"}
    shared = {"learning_rate", "max_steps", "per_device_train_batch_size", "warmup_steps", "weight_decay",
              "lr_scheduler_type", "pruning_start", "pruning_end", "harden_at", "threshold_refresh_steps"}
    longer = {"max_steps", "train_samples", "warmup_steps"}  # scaled together, for every method of such a setting
    for name, (setting, method, seed, argv) in table.items():
        demo_args, training, config = demo.parse_args(argv)  # every flag exists and parses
        assert training.seed == seed and training.output_dir == f"outputs/compare/{name}", name
        times = 3 if setting in grid.TRAINING_FLAGS else 1
        assert (demo_args.train_samples, demo_args.max_seq_length) == (times * base_args.train_samples, base_args.max_seq_length)
        for field in shared:
            ours, base = (config, base_config) if hasattr(config, field) else (training, base_training)
            assert getattr(ours, field) == getattr(base, field) * (times if field in longer else 1), (name, field)
        flags = {a[2:] for a in argv if a.startswith("--")} - {"output_dir", "seed"}
        assert flags <= compared | (longer if times > 1 else set()), (name, flags - compared)
        assert config.method == ("pdp" if method == "dense" else method), name
        assert (config.target_sparsity == 0) == (method == "dense"), name
