"""scripts/run_glue.py on small GLUE-layout files: every task, its metric names, JSON config, export, push."""

import importlib.util
import json
import os
import sys

import pytest
from transformers import BertTokenizerFast

from pdp_hf import PDPConfig
from pdp_hf.glue import GLUE_TASKS
from tests.conftest import tiny_bert
from tests.test_glue import ROWS

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
    return root


def args_for(task, model_dir, glue_dir, out, *extra):
    return [
        "--model_name_or_path", str(model_dir), "--task_name", task, "--glue_dir", str(glue_dir),
        "--output_dir", str(out), "--max_steps", "6", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8", "--learning_rate", "1e-3", "--report_to", "none",
        "--save_strategy", "no", "--use_cpu", "--target_sparsity", "0.5", "--max_seq_length", "16",
        "--disable_tqdm", "true", "--ignore_mismatched_sizes", *extra,
    ]


EXPECTED = {
    "cola": ["eval_matthews_correlation"],
    "sst2": ["eval_accuracy"],
    "mrpc": ["eval_accuracy", "eval_f1"],
    "stsb": ["eval_pearson", "eval_spearmanr"],
    "qqp": ["eval_accuracy", "eval_f1"],
    "mnli": ["eval_matched_accuracy", "eval_mismatched_accuracy"],
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


def test_json_config_file(model_dir, glue_dir, tmp_path):
    config = {
        "model_name_or_path": str(model_dir), "task_name": "rte", "glue_dir": str(glue_dir),
        "output_dir": str(tmp_path / "json"), "max_steps": 6, "per_device_train_batch_size": 4,
        "learning_rate": 1e-3, "report_to": "none", "save_strategy": "no", "use_cpu": True,
        "target_sparsity": 0.5, "harden_at": None, "max_seq_length": 16, "ignore_mismatched_sizes": True,
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
    "config", sorted(p for p in os.listdir(os.path.join(os.path.dirname(SCRIPT), "configs")) if p.endswith(".json"))
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
