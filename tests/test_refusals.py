"""Every refusal of a bad input, as one table: the case, what is done, and the message it must give.

Each row builds its input from scratch on a tiny model (no training), does the one thing a user would do, and checks
that pdp_hf refuses it with a message naming the input (file, field or module) and the cause. Rows that must fail
on the code before the refusal existed are marked in their id with the class of the issue they close.
"""

import json
import os
import shutil

import pytest
import torch

from pdp_hf import PDPConfig, apply_pruning, get_pruner
from tests.conftest import tiny_bert

STATE = "pruning_state.safetensors"
SCHEDULE = dict(pruning_start=2, pruning_end=4, harden_at=6)


def _config(**fields) -> PDPConfig:
    budget = {} if "target_speedup" in fields else {"target_sparsity": 0.5}
    return PDPConfig(**{**budget, **SCHEDULE, **fields})


def _saved(directory, step: int, **config) -> str:
    """A pruning state saved at optimizer step `step` of 10 (mid-ramp at 3, hardened from 6) into `directory`."""
    pruner = get_pruner(apply_pruning(tiny_bert(), _config(**config)))
    pruner.set_total_steps(10)
    pruner.step(step)
    pruner.save_state(str(directory))
    return str(directory)


def _resume(directory: str, **config):
    pruner = get_pruner(apply_pruning(tiny_bert(), _config(**config)))
    pruner.load_state(directory)
    return pruner


def _rewrite(path: str, tensors=None, metadata=None, drop=()) -> None:
    """Change a safetensors file as a hand edit or another tool would: tensors and metadata entries replaced (None
    removes a metadata entry), tensors in `drop` removed; the file stays well formed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(path, framework="pt") as f:
        held = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    held.update(tensors(held) if tensors else {})
    meta.update(metadata or {})
    save_file({k: v for k, v in held.items() if k not in drop}, path,
              metadata={k: v for k, v in meta.items() if v is not None})


def _rewrite_state(directory: str, tensors=None, metadata=None) -> None:
    _rewrite(os.path.join(directory, STATE), tensors, metadata)


def state_of_another_run(tmp):
    """Silently wrong before: a state file copied from a run at 0.8 into a checkpoint of a run at 0.5."""
    ours, theirs = _saved(tmp / "ours", 3), _saved(tmp / "theirs", 3, target_sparsity=0.8)
    shutil.copy(os.path.join(theirs, STATE), os.path.join(ours, STATE))
    return lambda: _resume(ours)


def old_state_with_other_budgets(tmp):
    """A state without its config (pdp_hf 0.3) whose budgets are another sparsity's."""
    ours = _saved(tmp / "ours", 3)
    budgets = {name: 3 * n // 4 for name, n in json.loads(_meta(ours)["budgets"]).items()}
    _rewrite_state(ours, metadata={"config": None, "budgets": json.dumps(budgets)})
    return lambda: _resume(ours)


def budgets_out_of_range(tmp):
    ours = _saved(tmp / "ours", 3, sparsity_distribution="global")
    budgets = json.loads(_meta(ours)["budgets"])
    first = next(iter(budgets))
    budgets[first] = 10 ** 9
    _rewrite_state(ours, metadata={"budgets": json.dumps(budgets)})
    return lambda: _resume(ours, sparsity_distribution="global")


def global_budgets_moved(tmp):
    """Units moved from one layer to another keep each count in range but change the total."""
    ours = _saved(tmp / "ours", 3, sparsity_distribution="global")
    budgets = json.loads(_meta(ours)["budgets"])
    first = next(iter(budgets))
    budgets[first] -= 1
    _rewrite_state(ours, metadata={"budgets": json.dumps(budgets)})
    return lambda: _resume(ours, sparsity_distribution="global")


SPEED = dict(target_speedup=1.2, granularity="attention=head,ffn=neuron", sparsity_distribution="global")


@pytest.fixture(autouse=True)
def fixed_prices(monkeypatch):
    """Prices of heads and neurons that do not depend on how busy this machine is."""
    prices = {"dense": 1.0, "head": 0.06, "neuron": 0.003}
    monkeypatch.setattr("pdp_hf.injection.measure_unit_costs", lambda model, groups, batch, seq, rounds=5: dict(prices))
    monkeypatch.setattr("pdp_hf.injection.calibrate_unit_costs", lambda model, groups, costs, *args: costs)


def speed_calibration_tampered(tmp):
    """Silently wrong before: any number was taken back as a price; a negative calibration fixed other budgets."""
    ours = _saved(tmp / "ours", 2, **SPEED)
    _rewrite_state(ours, metadata={"unit_costs": json.dumps({"dense": 1.0, "head": 0.06, "neuron": 0.003,
                                                              "calibration": -0.5})})
    return lambda: _resume(ours, **SPEED)


def speed_budgets_emptied(tmp):
    """Budgets by speed (global) that no longer reach the target with the saved prices."""
    ours = _saved(tmp / "ours", 3, **SPEED)
    budgets = {name: 0 for name in json.loads(_meta(ours)["budgets"])}
    _rewrite_state(ours, metadata={"budgets": json.dumps(budgets)})
    return lambda: _resume(ours, **SPEED)


def hardened_mask_all_kept(tmp):
    """Silently wrong before: stats said 0.5 while the finalized model came out dense."""
    ours = _saved(tmp / "ours", 6)
    _rewrite_state(ours, tensors=lambda held: {k: torch.ones_like(v) for k, v in held.items() if k.startswith("mask.")})
    return lambda: _resume(ours)


def hardened_mask_not_bool(tmp):
    """A mask stored as 0/1 floats is not one pdp_hf wrote."""
    ours = _saved(tmp / "ours", 6)
    _rewrite_state(ours, tensors=lambda held: {k: v.float() for k, v in held.items() if k.startswith("mask.")})
    return lambda: _resume(ours)


def hardened_mask_missing(tmp):
    ours = _saved(tmp / "ours", 6)
    _rewrite(os.path.join(ours, STATE), drop=("mask.bert.encoder.layer.0.attention.self.query",))
    return lambda: _resume(ours)


# -- compressed exports ----------------------------------------------------------------------------------------------
QUERY = "bert.encoder.layer.0.attention.self.query.weight"


def _compressed(tmp) -> tuple[str, str]:
    """(export folder, its compressed weights file) of a tiny BERT at 90% unstructured."""
    from pdp_hf import export_pruned, finalize_pruning
    from pdp_hf.compressed import COMPRESSED_WEIGHTS_NAME

    model = finalize_pruning(apply_pruning(tiny_bert(seed=3), PDPConfig(target_sparsity=0.9)))
    out = export_pruned(model, tmp / "packed", compressed=True)
    return out, os.path.join(out, COMPRESSED_WEIGHTS_NAME)


def _load(out: str):
    from pdp_hf import load_pruned

    return lambda: load_pruned(out)


def bitmask_byte_moved(tmp):
    """Silently wrong before: two bitmask bytes swapped keep the count of values, so the rebuilt matrix fit."""
    out, path = _compressed(tmp)

    def swap(held):
        mask = held[QUERY + ".__pdp_bitmask"].clone()
        j = next(i for i in range(1, mask.numel()) if mask[i] != mask[0])
        mask[0], mask[j] = mask[j].clone(), mask[0].clone()
        return {QUERY + ".__pdp_bitmask": mask}

    _rewrite(path, swap)
    return _load(out)


def value_changed(tmp):
    """Silently wrong before: one stored weight changed."""
    out, path = _compressed(tmp)
    _rewrite(path, lambda held: {QUERY + ".__pdp_values": held[QUERY + ".__pdp_values"] + 1})
    return _load(out)


def crafted_shape(tmp):
    """A crash before (an allocation of 1 TiB): a shape in the metadata that the model does not have."""
    out, path = _compressed(tmp)
    _rewrite(path, metadata={"shapes": json.dumps({QUERY: [2 ** 20, 2 ** 18]})})
    return _load(out)


def values_miscounted_in_a_v1_file(tmp):
    """A pdp_hf 0.3 file (no checksums) whose values do not match its bitmask."""
    out, path = _compressed(tmp)
    _rewrite(path, lambda held: {QUERY + ".__pdp_values": held[QUERY + ".__pdp_values"][:-1].clone()},
             metadata={"pdp_hf_format": "bitmask-v1", "sha256": None})
    return _load(out)


def bitmask_missing(tmp):
    out, path = _compressed(tmp)
    _rewrite(path, metadata={"sha256": None, "pdp_hf_format": "bitmask-v1"}, drop=(QUERY + ".__pdp_bitmask",))
    return _load(out)


def tensor_added(tmp):
    out, path = _compressed(tmp)
    _rewrite(path, lambda held: {"extra.weight": torch.zeros(2)})
    return _load(out)


def unknown_format(tmp):
    out, path = _compressed(tmp)
    _rewrite(path, metadata={"pdp_hf_format": "bitmask-v9"})
    return _load(out)


def _meta(directory: str) -> dict:
    from safetensors import safe_open

    with safe_open(os.path.join(directory, STATE), framework="pt") as f:
        return dict(f.metadata())


def _shrunk_with_config_edited(tmp, model, granularity: str, edit):
    """A per-layer shrunk export of `model` (global budgets at 50%) whose config.json `edit(linear sizes)` changed."""
    from pdp_hf import export_pruned, finalize_pruning

    model = apply_pruning(model, PDPConfig(granularity=granularity, target_sparsity=0.5, sparsity_distribution="global"))
    get_pruner(model).set_total_steps(10)
    get_pruner(model).step(1)
    out = export_pruned(finalize_pruning(model), tmp / "shrunk", shrink=True)
    path = os.path.join(out, "config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    edit(config["pdp_shrunk"]["linear"])
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    return _load(out)


def shrunk_config_changed(tmp):
    """A crash before (Transformers' size-mismatch error after a table of reinitialized weights): a per-layer shrunk
    export whose config.json was given other kept sizes than its weights."""
    def edit(linear):
        linear["bert.encoder.layer.0.intermediate.dense"] = [32, 40]

    return _shrunk_with_config_edited(tmp, tiny_bert(), "attention=head,ffn=neuron", edit)


def shrunk_vit_config_changed(tmp):
    """The same for a ViT, whose weights file keeps the key names of older Transformers."""
    from tests.conftest import tiny_vit

    def edit(linear):
        linear[next(name for name in linear if name.endswith("fc1"))][1] += 8

    return _shrunk_with_config_edited(tmp, tiny_vit(), "neuron", edit)


def _plain_export(tmp, name: str, seed: int = 0, layers: int = 2) -> str:
    from pdp_hf import export_pruned, finalize_pruning

    model = apply_pruning(tiny_bert(seed=seed, layers=layers), PDPConfig(target_sparsity=0.5))
    return export_pruned(finalize_pruning(model), tmp / name)


def weights_of_another_model(tmp):
    """Silently wrong before: a weights file from another export (one layer more) loaded with the missing weights
    started from random values, and only Transformers' table said so."""
    ours, theirs = _plain_export(tmp, "ours", layers=3), _plain_export(tmp, "theirs", seed=1)
    shutil.copy(os.path.join(theirs, "model.safetensors"), os.path.join(ours, "model.safetensors"))
    return _load(ours)


def weight_dropped(tmp):
    """Silently wrong before: a weights file without one tensor loaded with that tensor random."""
    ours = _plain_export(tmp, "ours")
    _rewrite(os.path.join(ours, "model.safetensors"), drop=("bert.encoder.layer.1.attention.self.query.weight",))
    return _load(ours)


def _edit_shrunk_spec(tmp, edit):
    def change(linear):
        pass

    action = _shrunk_with_config_edited(tmp, tiny_bert(), "attention=head,ffn=neuron", change)
    path = os.path.join(str(tmp / "shrunk"), "config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    edit(config)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    return action


def shrunk_spec_names_a_missing_module(tmp):
    """A crash before (AttributeError from torch): config.json's pdp_shrunk names a layer the model does not have."""
    return _edit_shrunk_spec(tmp, lambda c: c["pdp_shrunk"]["linear"].update({"bert.encoder.layer.7.output.dense": [8, 32]}))


def shrunk_spec_with_a_string_size(tmp):
    return _edit_shrunk_spec(tmp, lambda c: c["pdp_shrunk"]["heads"].update(
        {next(iter(c["pdp_shrunk"]["heads"])): "2"}))


def shrunk_spec_removed(tmp):
    """A crash before (Transformers' size-mismatch RuntimeError): pdp_shrunk deleted from a per-layer export."""
    return _edit_shrunk_spec(tmp, lambda c: c.pop("pdp_shrunk"))


# (case, builds the input and returns the action, the error, what the message must say)
REFUSALS = [
    (state_of_another_run, ValueError, r"pruning_state.safetensors belongs to another run.*target_sparsity.*\(0\.8, 0\.5\)"),
    (old_state_with_other_budgets, ValueError, r"budgets are not this config's.*prunes 384 units, this config 512"),
    (budgets_out_of_range, ValueError, r"the budget of .* is 1000000000, not a count of its \d+ units"),
    (global_budgets_moved, ValueError, r"element budgets prune \d+ units in all; target_sparsity 0.5 prunes \d+"),
    (speed_budgets_emptied, ValueError, r"its budgets do not give target_speedup 1.2 with the saved prices"),
    (speed_calibration_tampered, ValueError, r"holds unusable unit costs: calibration=-0.5 is not a positive number\."),
    (hardened_mask_all_kept, ValueError, r"the mask of .* prunes 0 units, its budget says \d+"),
    (hardened_mask_not_bool, ValueError, r"the mask of .* is torch.float32, not bool"),
    (hardened_mask_missing, ValueError, r"says its masks are hardened but has no mask for"),
    (bitmask_byte_moved, ValueError, r"pdp-compressed.safetensors: the bytes of .*query.weight.__pdp_bitmask changed"),
    (value_changed, ValueError, r"pdp-compressed.safetensors: the bytes of .*query.weight.__pdp_values changed"),
    (crafted_shape, ValueError, r"query.weight is stored with shape \[1048576, 262144\], but the model has \[32, 32\]"),
    (values_miscounted_in_a_v1_file, ValueError, r"query.weight has \d+ values of torch.float32, its bitmask marks \d+"),
    (bitmask_missing, ValueError, r"query.weight has no bitmask"),
    (tensor_added, ValueError, r"other tensors than its checksums list \(\['extra.weight'\]\)"),
    (unknown_format, ValueError, r"unknown compressed format 'bitmask-v9'"),
    (shrunk_vit_config_changed, ValueError, r"its weights do not have the per-layer sizes config.json \(pdp_shrunk\)"),
    (shrunk_config_changed, ValueError, r"config.json \(pdp_shrunk\) gives bert.encoder.layer.0.intermediate.dense "
                                        r"\[32, 40\] \(in, out\) features, but its weights file holds a \[\d+, 32\]"),
    (weights_of_another_model, ValueError, r"ours: its weights file lacks \d+ weights of the model \(bert.encoder.layer.2"),
    (weight_dropped, ValueError, r"lacks 1 weights of the model \(bert.encoder.layer.1.attention.self.query.weight\)"),
    (shrunk_spec_names_a_missing_module, ValueError, r"pdp_shrunk names 'bert.encoder.layer.7.output.dense', which this "
                                                     r"PDPShrunkBertForSequenceClassification does not have"),
    (shrunk_spec_with_a_string_size, ValueError, r"gives 'bert.encoder.layer.\d.attention.self' '2' heads, not a positive"),
    (shrunk_spec_removed, ValueError, r"shrunk: its weights do not have the sizes its config.json gives them"),
]


@pytest.mark.parametrize("case, error, says", REFUSALS, ids=[case.__name__ for case, _, _ in REFUSALS])
def test_refused_with_a_message_that_names_it(case, error, says, tmp_path):
    action = case(tmp_path)
    with pytest.raises(error, match=says):
        action()


def test_a_v1_compressed_file_still_loads_and_says_it_has_no_checksums(tmp_path, caplog):
    out, path = _compressed(tmp_path)
    _rewrite(path, metadata={"pdp_hf_format": "bitmask-v1", "sha256": None})
    assert _load(out)() is not None
    assert "bitmask-v1 file (pdp_hf 0.3) without checksums" in caplog.text


def test_an_untouched_state_still_loads(tmp_path):
    """The refusals above are not a refusal of everything: the same states, untouched, resume."""
    for step, config in ((3, {}), (6, {}), (3, {"sparsity_distribution": "global"}), (3, SPEED), (6, SPEED)):
        pruner = _resume(_saved(tmp_path / f"s{step}_{len(config)}", step, **config), **config)
        assert pruner.budgets is not None and pruner.hardened == (step >= 6)


def test_the_cli_refuses_a_changed_compressed_file_in_one_line(tmp_path, capsys):
    from pdp_hf.cli import main

    out = value_changed(tmp_path) and str(tmp_path / "packed")
    for command in (["report", out], ["speed", out, "--batch", "1", "--seq", "8", "--rounds", "1"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "changed since export" in err and "Traceback" not in err


def _tiny_mlm():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=32))


def test_a_target_tied_to_the_embeddings_is_refused_unless_asked_for():
    """Silently wrong before: the decoder's pruning zeroed word embeddings through the tie."""
    config = dict(target_sparsity=0.5, target_modules=["cls.predictions.decoder"])
    with pytest.raises(ValueError, match=r"cls.predictions.decoder.weight is tied to "
                                         r"bert.embeddings.word_embeddings.weight: pruning it would prune it too"):
        apply_pruning(_tiny_mlm(), PDPConfig(**config))
    from pdp_hf import finalize_pruning

    model = finalize_pruning(apply_pruning(_tiny_mlm(), PDPConfig(prune_tied_weights=True, **config)))
    embeddings = model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight is embeddings and int((embeddings == 0).sum()) == 32 * 64 // 2
    untied = _tiny_mlm()
    untied.cls.predictions.decoder.weight = torch.nn.Parameter(untied.cls.predictions.decoder.weight.detach().clone())
    apply_pruning(untied, PDPConfig(**config))  # not tied: nothing to refuse
