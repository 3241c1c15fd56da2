"""scripts/run_glue.py on small GLUE-layout files: every task, its metric names, JSON config, export, push; the
phases (--do_train/--do_eval/--do_predict), prediction files, resuming from the last checkpoint, result files."""

import importlib.util
import json
import logging
import os
import re
import shutil
import sys

import pytest
from transformers import AutoModelForSequenceClassification, BertTokenizerFast, TrainingArguments

from pdp_hf import PDPConfig
from pdp_hf.glue import GLUE_TASKS
from tests.conftest import tiny_bert
from tests.test_glue import ROWS, write_test_files

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "run_glue.py")
WORDS = "a b the it is man rains wet dry why how who him he came arrived sings singing boy ran fine film dull".split()


def load_script():
    spec = importlib.util.spec_from_file_location("run_glue", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_glue"] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-bert")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ".", "?", ","]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(root)
    tiny_bert().save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    for task in GLUE_TASKS.values():
        header, rows = ROWS[task.folder]
        (root / task.folder).mkdir()
        many = rows * 8  # enough rows for a few batches
        files = ["train.tsv"] + (["dev_matched.tsv", "dev_mismatched.tsv"] if task.folder == "MNLI" else ["dev.tsv"])
        for name in files:
            lines = ([header] if header else []) + many
            (root / task.folder / name).write_text("".join("\t".join(r) + "\n" for r in lines))
        write_test_files(root, task.folder, rows=6)  # test.tsv (MNLI: test_matched.tsv 5, test_mismatched.tsv 7)
    return root


def args_for(task, model_dir, glue_dir, out, *extra, phases=("--do_train", "--do_eval")):
    return [
        "--model_name_or_path", str(model_dir), "--task_name", task, "--glue_dir", str(glue_dir),
        "--output_dir", str(out), "--max_steps", "6", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8", "--learning_rate", "1e-3", "--report_to", "none",
        "--save_strategy", "no", "--use_cpu", "--target_sparsity", "0.5", "--max_seq_length", "16",
        "--disable_tqdm", "true", "--ignore_mismatched_sizes", *phases, *extra,
    ]


EXPECTED = {
    "cola": ["eval_matthews_correlation"],
    "sst2": ["eval_accuracy"],
    "mrpc": ["eval_accuracy", "eval_f1"],
    "stsb": ["eval_pearson", "eval_spearmanr"],
    "qqp": ["eval_accuracy", "eval_f1"],
    "mnli": ["eval_accuracy", "eval_accuracy_mm"],  # Transformers' convention: mismatched keys end in _mm
    "qnli": ["eval_accuracy"],
    "rte": ["eval_accuracy"],
    "wnli": ["eval_accuracy"],
}


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_every_task_trains_evaluates_and_exports(task, model_dir, glue_dir, tmp_path):
    summary = load_script().main(args_for(task, model_dir, glue_dir, tmp_path / task))
    assert summary["task"] == task and summary["sparsity"] == 0.5
    assert sorted(k for k in summary if k.startswith("eval_")) == EXPECTED[task]
    export = tmp_path / task / "export"
    assert PDPConfig.from_pretrained(export).target_sparsity == 0.5
    card = (export / "README.md").read_text()
    assert "model-index" in card and EXPECTED[task][0].removeprefix("eval_").split("_")[-1] in card
    if task == "stsb":
        assert len(json.loads((export / "config.json").read_text())["id2label"]) == 1  # regression head
    if task == "mnli":
        assert "validation_matched" in card and "validation_mismatched" in card


def test_json_config_file(model_dir, glue_dir, tmp_path):
    config = {
        "model_name_or_path": str(model_dir), "task_name": "rte", "glue_dir": str(glue_dir),
        "output_dir": str(tmp_path / "json"), "max_steps": 6, "per_device_train_batch_size": 4,
        "learning_rate": 1e-3, "report_to": "none", "save_strategy": "no", "use_cpu": True,
        "target_sparsity": 0.5, "harden_at": None, "max_seq_length": 16, "ignore_mismatched_sizes": True,
        "do_train": True, "do_eval": True,
    }
    path = tmp_path / "rte.json"
    path.write_text(json.dumps(config))
    summary = load_script().main([str(path)])
    assert summary["sparsity"] == 0.5 and "eval_accuracy" in summary
    # flags after the file override it
    overridden = load_script().main([str(path), "--target_sparsity", "0.25", "--output_dir", str(tmp_path / "o")])
    assert overridden["sparsity"] == 0.25


def test_push_uploads_the_export_only(model_dir, glue_dir, tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, exist_ok=True, private=None):
            calls.append(("create", repo_id))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload", repo_id, sorted(os.listdir(folder_path))))
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    out = tmp_path / "push"
    extra = ["--push_to_hub", "--hub_model_id", "me/tiny-sparse", "--save_strategy", "steps", "--save_steps", "3"]
    load_script().main(args_for("sst2", model_dir, glue_dir, out, *extra))
    assert calls[0] == ("create", "me/tiny-sparse")
    uploaded = calls[1][2]
    assert "model.safetensors" in uploaded and "README.md" in uploaded and "sparsity_report.json" in uploaded
    assert not any(f.startswith("checkpoint") or f == "pruning_state.safetensors" for f in uploaded)


def test_push_without_repo_id_fails_before_training(model_dir, glue_dir, tmp_path):
    with pytest.raises(ValueError, match="--push_to_hub needs --hub_model_id"):
        load_script().main(args_for("sst2", model_dir, glue_dir, tmp_path / "norepo", "--push_to_hub"))
    assert not (tmp_path / "norepo" / "export").exists()


def test_push_offline_fails_clearly_after_complete_export(model_dir, glue_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "offline"
    with pytest.raises(RuntimeError, match="local export is complete and intact"):
        load_script().main(args_for("sst2", model_dir, glue_dir, out, "--push_to_hub", "--hub_model_id", "me/x"))
    assert (out / "export" / "model.safetensors").is_file() and (out / "export" / "README.md").is_file()


@pytest.mark.parametrize(
    "config",
    sorted(
        p for p in os.listdir(os.path.join(os.path.dirname(SCRIPT), "configs"))
        if p.endswith(".json") and not p.startswith("demo_")  # demo_*: scripts/demo.py's recipes (tests/test_demo.py)
    ),
)
def test_reference_configs_parse(config):
    path = os.path.join(os.path.dirname(SCRIPT), "configs", config)
    gpu_only = json.load(open(path)).get("bf16", False)  # TrainingArguments refuses bf16 on a CPU-only machine
    argv = [path, "--bf16", "false"] if gpu_only else [path]
    with open(path, encoding="utf-8") as f:
        values = json.load(f)
    parsed = load_script().parse_args(argv)
    model_args, data_args, training_args, pdp_config = parsed
    assert data_args.task_name in GLUE_TASKS and isinstance(pdp_config, PDPConfig)
    # every key of the file reached one of the argument groups with its value (bf16 overridden on CPU)
    for key, value in values.items():
        owners = [group for group in parsed if hasattr(group, key)]
        assert owners, f"{config}: {key} is no argument of the script"
        parsed_value = getattr(owners[0], key)
        if key == "report_to" and value == "none":
            assert parsed_value in ([], "none", ["none"]), parsed_value  # TrainingArguments normalizes "none" to []
        elif key != "bf16":
            assert parsed_value == value or str(parsed_value) == str(value), key
    assert PDPConfig.from_dict(pdp_config.to_dict()) == pdp_config


@pytest.fixture(scope="module")
def trained_sst2(model_dir, glue_dir, tmp_path_factory):
    """One train + eval run on SST-2, shared by the tests that read its output folder or evaluate its export."""
    out = tmp_path_factory.mktemp("trained") / "sst2"
    return out, load_script().main(args_for("sst2", model_dir, glue_dir, out))


def test_train_and_eval_write_result_files(trained_sst2):
    out, summary = trained_sst2
    train, evals, combined = (json.loads((out / f).read_text()) for f in ("train_results.json", "eval_results.json", "all_results.json"))
    assert "train_loss" in train and train["train_samples"] == 16
    assert evals["eval_accuracy"] == pytest.approx(summary["eval_accuracy"], abs=1e-4) and evals["eval_samples"] == 16
    assert {"train_loss", "eval_accuracy"} <= set(combined)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6


def test_eval_only_evaluates_an_export_without_training(trained_sst2, glue_dir, tmp_path, caplog):
    trained_out, trained = trained_sst2
    out = tmp_path / "eval-only"
    with caplog.at_level(logging.INFO, logger="run_glue"):
        summary = load_script().main(args_for("sst2", trained_out / "export", glue_dir, out, phases=("--do_eval",)))
    assert "Process rank: 0, device: cpu, n_gpu: 0, distributed training: False" in caplog.text
    assert f"run_glue: {json.dumps(summary)}" in caplog.text  # the summary is logged, as Transformers logs
    assert summary["eval_accuracy"] == trained["eval_accuracy"] and summary["sparsity"] == 0.5
    assert "export" not in summary and not (out / "export").exists()
    assert sorted(os.listdir(out)) == ["all_results.json", "eval_results.json"]  # no training, no checkpoint


def test_eval_only_on_a_shrunk_export_reports_the_sparsity_it_was_pruned_to(model_dir, glue_dir, tmp_path):
    from pdp_hf import apply_pruning, export_pruned, finalize_pruning
    from pdp_hf.report import export_report

    config = PDPConfig(granularity="neuron", target_sparsity=0.5)
    model = finalize_pruning(apply_pruning(AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2), config))
    folder = export_pruned(model, tmp_path / "shrunk", BertTokenizerFast.from_pretrained(model_dir), pdp_config=config, shrink=True)
    expected = export_report(folder)["total"]["sparsity"]  # of the FFN matrices, the targets neurons cover
    assert expected == 0.5
    summary = load_script().main(args_for("sst2", folder, glue_dir, tmp_path / "eval", phases=("--do_eval",)))
    assert summary["sparsity"] == round(expected, 4)  # not 0.0: the cut neurons hold no zeros in the shrunk file


def test_eval_only_refuses_a_training_checkpoint(model_dir, glue_dir, tmp_path):
    from pdp_hf import PrunerTrainer
    from tests.conftest import training_args

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    trainer = PrunerTrainer(model=model, args=training_args(tmp_path / "run"), pdp_config=PDPConfig(method="smart"),
                            processing_class=BertTokenizerFast.from_pretrained(model_dir))
    trainer.save_model(str(tmp_path / "checkpoint"))  # weights + scores + pruning state, masks not baked in
    with pytest.raises(ValueError, match="is a PrunerTrainer checkpoint.*pdp-hf export"):
        load_script().main(args_for("sst2", tmp_path / "checkpoint", glue_dir, tmp_path / "eval", phases=("--do_eval",)))


@pytest.mark.parametrize("task", ["sst2", "stsb", "mnli"])
def test_predict_writes_glue_submission_files(task, model_dir, glue_dir, tmp_path, monkeypatch):
    descs, original = [], TrainingArguments.main_process_first

    def spy(self, local=True, desc="work"):  # tokenization runs on the main process first (distributed runs)
        descs.append(desc)
        return original(self, local=local, desc=desc)

    monkeypatch.setattr(TrainingArguments, "main_process_first", spy)
    out = tmp_path / "predict"
    extra = ["--max_predict_samples", "4"] if task == "sst2" else []
    summary = load_script().main(args_for(task, model_dir, glue_dir, out, *extra, phases=("--do_predict",)))
    assert descs == ["dataset map pre-processing"]
    expected = {"mnli": {"mnli": 5, "mnli-mm": 7}, "stsb": {"stsb": 6}, "sst2": {"sst2": 4}}[task]
    assert sorted(os.listdir(out)) == sorted(f"predict_results_{name}.txt" for name in expected)
    assert summary["predictions"] == [str(out / f"predict_results_{name}.txt") for name in expected]
    for name, rows in expected.items():
        lines = (out / f"predict_results_{name}.txt").read_text().splitlines()
        assert lines[0] == "index\tprediction" and len(lines) == rows + 1
        assert [line.split("\t")[0] for line in lines[1:]] == [str(i) for i in range(rows)]
        values = [line.split("\t")[1] for line in lines[1:]]
        if task == "stsb":
            assert all(re.fullmatch(r"-?\d+\.\d{3}", v) for v in values), values
        else:
            names = {"sst2": {"negative", "positive"}, "mnli": {"entailment", "neutral", "contradiction"}}[task]
            assert set(values) <= names, values


def test_rerun_resumes_from_last_checkpoint(model_dir, glue_dir, tmp_path, monkeypatch, caplog):
    out = tmp_path / "resume"
    argv = args_for("sst2", model_dir, glue_dir, out, "--save_strategy", "steps", "--save_steps", "3")
    run_glue = load_script()
    run_glue.main(argv)
    assert sorted(p for p in os.listdir(out) if p.startswith("checkpoint-")) == ["checkpoint-3", "checkpoint-6"]
    shutil.rmtree(out / "checkpoint-6")  # as if the first run had stopped between steps 3 and 6
    resumed_from = []
    original = run_glue.PrunerTrainer.train

    def spy(self, resume_from_checkpoint=None, *args, **kwargs):
        resumed_from.append(resume_from_checkpoint)
        return original(self, resume_from_checkpoint, *args, **kwargs)

    monkeypatch.setattr(run_glue.PrunerTrainer, "train", spy)
    with caplog.at_level(logging.INFO, logger="run_glue"):
        summary = run_glue.main(argv)  # the same command again
    assert resumed_from == [str(out / "checkpoint-3")]
    assert f"Checkpoint detected, resuming training at {out / 'checkpoint-3'}" in caplog.text
    assert summary["sparsity"] == 0.5
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6
    assert "train_loss" in json.loads((out / "train_results.json").read_text())


def test_non_empty_output_dir_without_checkpoint_needs_overwrite(model_dir, glue_dir, tmp_path):
    out = tmp_path / "used"
    out.mkdir()
    (out / "notes.txt").write_text("an earlier experiment\n")
    with pytest.raises(ValueError, match="already exists and is not empty.*--overwrite_output_dir"):
        load_script().main(args_for("rte", model_dir, glue_dir, out))
    assert os.listdir(out) == ["notes.txt"]
    summary = load_script().main(args_for("rte", model_dir, glue_dir, out, "--overwrite_output_dir"))
    assert (out / "export" / "model.safetensors").is_file() and "eval_accuracy" in summary


def test_a_phase_is_required(model_dir, glue_dir, tmp_path):
    out = tmp_path / "nothing"
    with pytest.raises(ValueError, match="pass at least one of --do_train, --do_eval, --do_predict"):
        load_script().main(args_for("rte", model_dir, glue_dir, out, phases=()))
    with pytest.raises(ValueError, match="--push_to_hub uploads the export that --do_train writes"):
        load_script().main(args_for("rte", model_dir, glue_dir, out, "--push_to_hub", "--hub_model_id", "me/x", phases=("--do_eval",)))
    assert not out.exists()


def test_torchrun_two_processes_train_eval_predict(model_dir, glue_dir, tmp_path):
    """run_glue.py under torchrun (2 ranks, gloo on CPU): all three phases, results files written once by rank 0,
    INFO logs (the summary line) from rank 0 only, one export."""
    import subprocess

    out = tmp_path / "ddp"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547", SCRIPT,
           *args_for("sst2", model_dir, glue_dir, out, "--ddp_backend", "gloo", phases=("--do_train", "--do_eval", "--do_predict"))]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = done.stdout + done.stderr
    assert logs.count("run_glue: {") == 1  # the summary, from rank 0 only
    assert "Process rank: 0" in logs and "Process rank: 1" in logs  # the one warning every rank prints, as in Transformers
    for name in ("train_results.json", "eval_results.json", "all_results.json", "trainer_state.json", "predict_results_sst2.txt"):
        assert (out / name).is_file(), name
    rows = (out / "predict_results_sst2.txt").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 1 + 6  # every test row once, not once per rank
    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] >= 0
    assert (out / "export" / "model.safetensors").is_file()
