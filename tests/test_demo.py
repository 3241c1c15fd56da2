"""scripts/demo.py: the recipe it runs is its JSON file (TrainingArguments + PDPConfig, nothing re-declared or
silently changed), flags and other recipe files override it, a short run writes what Transformers' examples write
plus the export, and missing GLUE data is one line, not a stack trace."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.test_run_glue import glue_dir, model_dir  # noqa: F401 (fixtures)

SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "scripts")
RECIPE = os.path.join(SCRIPTS, "configs", "demo_minilm_sst2_90_pdp.json")


def load_demo():
    spec = importlib.util.spec_from_file_location("demo", os.path.join(SCRIPTS, "demo.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo"] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_default_recipe_is_the_measured_one():
    demo_args, training_args, pdp_config = load_demo().parse_args([])
    # The recipe behind README's 80.39 (`make demo`): every value its TrainingArguments had before the recipe file.
    expected = dict(
        max_steps=600, per_device_train_batch_size=32, per_device_eval_batch_size=128, learning_rate=1e-4,
        warmup_steps=30, weight_decay=0.0, logging_steps=50, seed=42, lr_scheduler_type="linear",
    )
    assert {k: getattr(training_args, k) for k in expected} == expected
    assert training_args.save_strategy == "no" and training_args.report_to == []
    assert (demo_args.train_samples, demo_args.max_seq_length) == (19200, 64)
    assert (pdp_config.method, pdp_config.target_sparsity, pdp_config.sparsity_distribution) == ("pdp", 0.9, "global")
    # The one departure from PDPConfig's defaults is written in the recipe, not set behind the user's back.
    with open(RECIPE, encoding="utf-8") as f:
        values = json.load(f)
    assert values["sparsity_distribution"] == "global"
    # Every key of the file reached an argument group with its value.
    parsed = (demo_args, training_args, pdp_config)
    for key, value in values.items():
        owner = next(group for group in parsed if hasattr(group, key))
        assert getattr(owner, key) == value or (key, getattr(owner, key)) == ("report_to", []), key


def test_flags_and_recipe_files_override(tmp_path):
    demo = load_demo()
    _, training_args, pdp_config = demo.parse_args(["--max_steps", "7", "--sparsity_distribution", "uniform"])
    assert (training_args.max_steps, training_args.learning_rate) == (7, 1e-4)
    assert pdp_config.sparsity_distribution == "uniform"
    # n:m implies its sparsity: the recipe names no target that could contradict it.
    _, _, pdp_config = demo.parse_args(["--granularity", "n:m", "--n_m", "1:4", "--sparsity_distribution", "uniform"])
    assert pdp_config.target_sparsity == 0.75
    other = tmp_path / "recipe.json"
    other.write_text(json.dumps({"output_dir": str(tmp_path / "o"), "max_steps": 3, "target_sparsity": 0.5}))
    _, training_args, pdp_config = demo.parse_args([str(other), "--seed", "3"])
    assert (training_args.max_steps, training_args.seed, pdp_config.target_sparsity) == (3, 3, 0.5)
    assert training_args.learning_rate == 5e-5  # another recipe file is the whole recipe: Transformers' defaults
    other.write_text(json.dumps({"output_dir": "o", "max_stepz": 3}))
    with pytest.raises(ValueError, match="max_stepz"):
        demo.parse_args([str(other), "--seed", "3"])


def test_short_run_writes_results_and_export(model_dir, glue_dir, tmp_path):  # noqa: F811
    out = tmp_path / "demo"
    argv = [
        "--model_name_or_path", str(model_dir), "--glue_dir", str(glue_dir), "--output_dir", str(out),
        "--max_steps", "4", "--train_samples", "12", "--per_device_train_batch_size", "4", "--logging_steps", "2",
        "--target_sparsity", "0.5",
    ]
    summary = load_demo().main(argv)
    assert summary["export"] == str(out / "export") and summary["sparsity"] == 0.5
    assert 0.0 <= summary["accuracy"] <= 1.0
    for name in ("train_results.json", "eval_results.json", "all_results.json", "trainer_state.json"):
        assert (out / name).is_file(), name
    with open(out / "train_results.json", encoding="utf-8") as f:
        assert json.load(f)["train_samples"] == 12
    assert (out / "export" / "config.json").is_file() and (out / "export" / "pruning_config.json").is_file()
    card = (out / "export" / "README.md").read_text(encoding="utf-8")
    assert "python scripts/demo.py --model_name_or_path" in card
    # `make demo` twice in a row: the recipe overwrites its own output_dir (no checkpoints are saved).
    assert load_demo().main(argv)["sparsity"] == 0.5


def test_missing_glue_data_is_one_line(model_dir, tmp_path):  # noqa: F811
    env = {**os.environ, "GLUE_DIR": str(tmp_path / "no-glue"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, "demo.py"), "--model_name_or_path", str(model_dir),
         "--output_dir", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("demo: ") and "no-glue" in last and "GLUE" in last


@pytest.mark.parametrize("recipe", sorted(f for f in os.listdir(os.path.join(SCRIPTS, "configs")) if f.startswith("demo_")))
def test_every_demo_recipe_parses_with_every_key(recipe):
    """scripts/configs/demo_*.json: each key reaches an argument group with its value (the speed recipes included)."""
    path = os.path.join(SCRIPTS, "configs", recipe)
    with open(path, encoding="utf-8") as f:
        values = json.load(f)
    parsed = load_demo().parse_args([path])
    for key, value in values.items():
        owners = [group for group in parsed if hasattr(group, key)]
        assert owners, f"{recipe}: {key} is no argument of the demo"
        got = getattr(owners[0], key)
        assert got == value or (key == "report_to" and got in ([], "none", ["none"])), (key, got)
