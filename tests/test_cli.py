"""pdp-hf report / export on real folders."""

import os

import pytest
import torch

from pdp_hf import PDPConfig, PrunerTrainer
from pdp_hf.cli import main
from tests.conftest import text_dataset, tiny_bert


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tests.conftest import training_args

    out = tmp_path_factory.mktemp("cli") / "run"
    trainer = PrunerTrainer(
        model=tiny_bert(), args=training_args(out, save_strategy="steps", save_steps=10), train_dataset=text_dataset(),
        pdp_config=PDPConfig(target_sparsity=0.75, pruning_end=0.5, harden_at=0.5),
    )
    trainer.train()
    return out


def test_report_of_mid_training_checkpoint(run_dir, capsys):
    assert main(["report", str(run_dir / "checkpoint-20")]) == 0
    out = capsys.readouterr().out
    assert "| **total** |" in out and "0.7500" in out and "bert.encoder.layer.1.intermediate.dense" in out


def test_report_plot_is_a_png(run_dir, tmp_path):
    png = tmp_path / "sparsity.png"
    assert main(["report", str(run_dir / "checkpoint-20"), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_report_of_mid_ramp_checkpoint_shows_its_schedule_position(tmp_path, capsys):
    from tests.conftest import training_args

    out = tmp_path / "ramp"
    PrunerTrainer(
        model=tiny_bert(), args=training_args(out, save_strategy="steps", save_steps=6), train_dataset=text_dataset(),
        pdp_config=PDPConfig(target_sparsity=0.8, pruning_start=2, pruning_end=12, harden_at=16),
    ).train()
    capsys.readouterr()  # drop the training logs
    assert main(["report", str(out / "checkpoint-6"), "--json"]) == 0
    import json

    sparsity = json.loads(capsys.readouterr().out)["total"]["sparsity"]
    assert sparsity == pytest.approx(0.8 * (6 - 2) / (12 - 2), abs=1e-3)  # the ramp at step 6, not 0 or 0.8


def test_export_then_report(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir / "checkpoint-20"), str(tmp_path / "exp")]) == 0
    assert os.path.isfile(tmp_path / "exp" / "model.safetensors")
    assert main(["report", str(tmp_path / "exp"), "--json"]) == 0
    assert '"sparsity": 0.75' in capsys.readouterr().out


def test_export_refuses_plain_folder(tmp_path):
    model = tiny_bert()
    model.save_pretrained(tmp_path / "plain")
    before = sorted(os.listdir(tmp_path / "plain"))
    with pytest.raises(SystemExit, match="not a PrunerTrainer checkpoint"):
        main(["export", str(tmp_path / "plain"), str(tmp_path / "exp")])
    assert not (tmp_path / "exp").exists()  # nothing written
    assert sorted(os.listdir(tmp_path / "plain")) == before


def test_structured_checkpoint_report_and_export(tmp_path, capsys):
    """A mid-ramp neuron+head checkpoint: the report shows pruned units at the checkpoint's schedule position, and
    the export holds whole zero neurons and heads."""
    import json

    from tests.conftest import training_args

    out = tmp_path / "structured"
    config = PDPConfig(granularity="attention=head,ffn=neuron", target_sparsity=0.5, pruning_start=2, pruning_end=10, harden_at=16)
    PrunerTrainer(
        model=tiny_bert(), args=training_args(out, save_strategy="steps", save_steps=6), train_dataset=text_dataset(),
        pdp_config=config,
    ).train()
    capsys.readouterr()
    assert main(["report", str(out / "checkpoint-6"), "--json"]) == 0
    units = json.loads(capsys.readouterr().out)["units"]
    assert units["bert.encoder.layer.0:neurons"]["pruned_units"] == round(0.5 * 32)  # half the ramp of 32 neurons
    assert main(["export", str(out / "checkpoint-18"), str(tmp_path / "exp")]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "exp")]) == 0
    text = capsys.readouterr().out
    assert "| `bert.encoder.layer.1:heads` | head | 2 | 1 |" in text and "| `bert.encoder.layer.1:neurons` | neuron | 64 | 32 |" in text


def test_speed_measures_both_ways_and_updates_the_card(tmp_path, capsys):
    from pdp_hf import apply_pruning, export_pruned, finalize_pruning

    config = PDPConfig(granularity="attention=head,ffn=neuron", target_sparsity=0.5)
    model = finalize_pruning(apply_pruning(tiny_bert(), config))
    folder = export_pruned(model, tmp_path / "exp", pdp_config=config, shrink=True)
    for _ in range(2):  # a second run replaces the section instead of adding another
        assert main(["speed", folder, "--batch", "2", "--seq", "8", "--rounds", "1", "--update_card"]) == 0
    out = capsys.readouterr().out
    assert "| 2 x 8 | PyTorch, `from_pretrained` (as stored) |" in out and "optimize=True)` |" in out
    assert "| 2 x 8 | PyTorch, dense shapes (zeros in place of what was cut out; the baseline) |" in out
    assert "| 2 x 8 | ONNX Runtime, `model.onnx` (as stored) |" in out
    card = (tmp_path / "exp" / "README.md").read_text()
    assert card.count("## Measured speed") == 1 and "| 2 x 8 |" in card and "## Pruning" in card


def test_dense_shaped_model_of_a_shrunk_export_has_the_original_shapes_and_equal_logits(tmp_path):
    from pdp_hf import apply_pruning, export_pruned, finalize_pruning, load_pruned
    from pdp_hf.speed import dense_shaped

    config = PDPConfig(granularity="neuron", target_sparsity=0.5)
    model = finalize_pruning(apply_pruning(tiny_bert(), config))
    shrunk = export_pruned(model, tmp_path / "shrunk", pdp_config=config, shrink=True)
    plain = export_pruned(model, tmp_path / "plain", pdp_config=config)
    stored = load_pruned(shrunk)
    assert stored.config.intermediate_size == 32
    dense = dense_shaped(stored, shrunk)
    assert dense.config.intermediate_size == 64 and dense.bert.encoder.layer[0].intermediate.dense.weight.shape == (64, 32)
    ids = torch.randint(1, 60, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(dense(input_ids=ids).logits, stored(input_ids=ids).logits, rtol=0, atol=1e-6)
    assert dense_shaped(load_pruned(plain), plain) is None  # nothing cut out: the stored model is the baseline


def test_export_of_an_export_shrinks_and_keeps_the_card(tmp_path, capsys):
    from huggingface_hub import EvalResult, ModelCard

    from pdp_hf import apply_pruning, export_pruned, finalize_pruning

    config = PDPConfig(granularity="neuron", target_sparsity=0.5)
    model = finalize_pruning(apply_pruning(tiny_bert(), config))
    result = EvalResult(task_type="text-classification", dataset_type="nyu-mll/glue", dataset_name="GLUE SST-2",
                        dataset_split="validation", metric_type="accuracy", metric_value=0.81)
    plain = export_pruned(model, tmp_path / "plain", pdp_config=config, base_model="org/base", dataset="nyu-mll/glue",
                          eval_results=[result])
    assert main(["export", plain, str(tmp_path / "shrunk"), "--shrink"]) == 0
    assert '"intermediate_size": 32' in (tmp_path / "shrunk" / "config.json").read_text()
    data = ModelCard.load(tmp_path / "shrunk" / "README.md").data
    assert data.base_model == "org/base" and data.eval_results[0].metric_value == 0.81
    assert PDPConfig.from_pretrained(tmp_path / "shrunk") == config


def test_export_shrinks_heads_per_layer_and_writes_onnx(tmp_path):
    import json

    from pdp_hf import apply_pruning, export_pruned, finalize_pruning, load_pruned

    config = PDPConfig(granularity="attention=head,ffn=neuron", target_sparsity=0.5, sparsity_distribution="global")
    model = finalize_pruning(apply_pruning(tiny_bert(layers=3), config)).eval()
    plain = export_pruned(model, tmp_path / "plain", pdp_config=config)
    assert main(["export", plain, str(tmp_path / "shrunk"), "--shrink", "--onnx"]) == 0
    files = set(os.listdir(tmp_path / "shrunk"))
    assert {"model.onnx", "modeling_pdp_shrunk.py"} <= files
    assert "pdp_shrunk" in json.loads((tmp_path / "shrunk" / "config.json").read_text())
    ids = torch.randint(1, 60, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(load_pruned(tmp_path / "shrunk")(input_ids=ids).logits, model(input_ids=ids).logits,
                                   rtol=0, atol=1e-5)


def test_speed_refuses_bad_flags_in_one_line_with_exit_code_2(tmp_path, capsys):
    import pytest

    from pdp_hf import export_pruned

    folder = export_pruned(tiny_bert(), tmp_path / "exp")
    for flags, says in ((["--batch", "0"], "--batch takes a whole number >= 1"),
                        (["--seq", "-1"], "--seq takes a whole number >= 1"),
                        (["--rounds", "0"], "--rounds takes a whole number >= 1")):
        with pytest.raises(SystemExit) as exit_info:
            main(["speed", folder, *flags])
        assert exit_info.value.code == 2 and says in capsys.readouterr().err
    assert main(["speed", folder, "--seq", "1000"]) == 2  # tiny_bert has 32 positions
    assert "--seq 1000 is longer than this model's 32 positions" in capsys.readouterr().err


def test_a_missing_path_or_a_folder_without_a_model_is_one_line_and_exit_code_2(tmp_path, capsys):
    import pytest

    from pdp_hf import load_pruned

    (tmp_path / "empty").mkdir()
    for command in ("report", "speed"):
        for path, says in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "folder without config.json")):
            assert main([command, str(path)]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and says in err and str(path) in err and "Traceback" not in err
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    with pytest.raises(FileNotFoundError, match="folder without config.json"):
        load_pruned(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pruned("./no-such-export")


def test_a_truncated_or_tampered_safetensors_file_is_refused_with_its_name(tmp_path, capsys):
    from pdp_hf import load_pruned

    good = tmp_path / "good"
    tiny_bert().save_pretrained(good)
    weights = (good / "model.safetensors").read_bytes()
    load_pruned(good)  # as saved: loads
    capsys.readouterr()  # the save's progress bar
    cases = {
        "truncated": (weights[: len(weights) - 100], "is truncated"),
        "header-cut": (weights[:20], "too few for its header"),
        "padded": (weights + b"\0" * 16, "longer than its header says"),
        "not-json": (weights[:8] + b"{" * (len(weights) - 8), "header does not parse"),
    }
    for name, (data, says) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_bytes((good / "config.json").read_bytes())
        (folder / "model.safetensors").write_bytes(data)
        with pytest.raises(ValueError, match=says) as err:
            load_pruned(folder)
        assert str(folder / "model.safetensors") in str(err.value)
        assert main(["report", str(folder)]) == 2
        out = capsys.readouterr().err
        assert out.count("\n") == 1 and says in out and "Traceback" not in out
