"""benchmarks/frontier.py: runs what is missing in plan order, skips finished runs (resume), retrains a missing dense
teacher before a distillation run, times each export, and writes the table, plot and the JSON the frontier issue
asks for."""

import json
import os

from tests.test_compare_methods import load_benchmark


def load_frontier():
    return load_benchmark("frontier")


def test_grid_resumes_measures_and_writes_the_frontier_json(tmp_path, monkeypatch):
    frontier = load_frontier()
    out = str(tmp_path / "frontier")
    os.makedirs(out)
    monkeypatch.setattr(frontier, "ROOT", str(tmp_path))
    monkeypatch.setattr(frontier, "PLAN", [
        (("dense",), ("-",), ("-",), (42, 43)),
        (("smart", "magnitude"), ("x2",), ("ftkd",), (42, 43)),
    ])
    with open(os.path.join(out, "dense_s42.json"), "w") as f:  # finished in an earlier session
        json.dump({"accuracy": 0.87, "sparsity": 0.0, "export": "outputs/frontier/dense_s42/export"}, f)
    ran, timed = [], []

    def fake_run(name, argv, out_dir, started=None):
        ran.append(name)
        assert (started is None) == name.startswith("dense")  # pruned runs hold the quiet lock while they price
        if name.startswith("dense"):  # a teacher: its export appears where the next runs read it
            os.makedirs(tmp_path / argv[1] / "export")
            (tmp_path / argv[1] / "export" / "config.json").write_text("{}")
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump({"accuracy": 0.86 if "smart" in name else 0.84, "sparsity": 0.6, "export": f"x/{name}"}, f)
        return True

    def fake_measure(name, out_dir, rounds=7):
        timed.append(name)
        with open(os.path.join(out_dir, name + ".speed.json"), "w") as f:
            json.dump({"b32": {"speedup": 2.1}, "b1": {"speedup": 1.9}}, f)

    monkeypatch.setattr(frontier, "run_one", fake_run)
    monkeypatch.setattr(frontier, "measure", fake_measure)
    frontier.main(["--out", out])
    # dense_s42's result exists but its export does not (another machine): retrained into a scratch result first
    assert ran == ["dense_s43", "dense_s42", "smart_x2_ftkd_s42", "magnitude_x2_ftkd_s42", "smart_x2_ftkd_s43",
                   "magnitude_x2_ftkd_s43"]
    assert json.load(open(os.path.join(out, "dense_s42.json")))["accuracy"] == 0.87  # the finished result stays
    assert timed == ["smart_x2_ftkd_s42", "magnitude_x2_ftkd_s42", "smart_x2_ftkd_s43", "magnitude_x2_ftkd_s43"]
    data = json.load(open(out + ".json"))
    assert data["dense"]["accuracy"] == [87.0, 84.0]
    smart = next(r for r in data["rows"] if r["method"] == "smart")
    assert smart["accuracy"] == [86.0, 86.0] and smart["speedup_b32"] == 2.1 and smart["speedup_b1"] == 1.9
    assert "--target_speedup 2" in smart["command"] and "--teacher_model_name_or_path" in smart["command"]
    assert os.path.getsize(out + ".png") > 0 and "| smart |" in open(out + ".md").read()
    ran.clear()
    frontier.main(["--out", out])  # everything finished: nothing runs again
    assert ran == []


def test_long_recipe_distils_from_the_teacher_over_three_times_the_steps():
    frontier = load_frontier()
    argv = frontier.demo_argv("smart", "x2", "ftkd3x", 43)
    flag = dict(zip(argv[::1], argv[1:]))
    assert flag["--teacher_model_name_or_path"] == flag["--model_name_or_path"] == "outputs/frontier/dense_s43/export"
    assert flag["--max_steps"] == "1800" and flag["--train_samples"] == "57600" and flag["--warmup_steps"] == "90"
    assert "--max_steps" not in frontier.demo_argv("smart", "x2", "ftkd", 43)  # the 600-step recipe stays as it was
    assert frontier.run_name("smart", "x2", "ftkd3x", 42) in frontier.runs()


def test_the_quiet_lock_holds_a_run_back_until_other_work_lets_go(tmp_path):
    """Other work holding the lock (`flock FILE make test`) keeps a starting run stopped; then the grid holds it over
    the run's first seconds."""
    import fcntl
    import subprocess
    import sys
    import threading
    import time

    lock = str(tmp_path / "cpu.lock")
    other = open(lock, "a")
    fcntl.flock(other, fcntl.LOCK_EX)
    child = subprocess.Popen([sys.executable, "-c", "print('ran')"], stdout=subprocess.PIPE, text=True)
    threading.Timer(1.5, other.close).start()  # the other work ends after 1.5 s
    start = time.time()
    load_frontier().QuietLock(lock).hold_while(child, 0.5)
    assert time.time() - start >= 1.5  # waited for the other holder
    assert child.wait(timeout=30) == 0 and child.stdout.read() == "ran\n"
    probe = open(lock, "a")
    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released afterwards
    probe.close()
