"""Bad input and numerical trouble: each case fails with a clear error that names what is wrong."""

import os

import pytest
import torch

from pdp_hf import PDPConfig, PrunerTrainer, apply_pruning, get_pruner, sparsity_report
from tests.conftest import text_dataset, tiny_bert

TARGET = "bert.encoder.layer.1.intermediate.dense"


def test_nan_weight_named_at_threshold_update():
    # checked at every exact threshold refresh (here every step); between refreshes the loss check catches it
    config = PDPConfig(target_sparsity=0.5, pruning_start=0, pruning_end=4, threshold_refresh_steps=1)
    model = apply_pruning(tiny_bert(), config)
    pruner = get_pruner(model)
    pruner.set_total_steps(10)
    with torch.no_grad():
        model.get_submodule(TARGET).weight[3, 4] = float("nan")
    with pytest.raises(FloatingPointError, match=f"NaN/Inf in the weight of \\['{TARGET}'\\] at optimizer step 2"):
        pruner.step(2)


def test_inf_weight_named_at_hardening():
    model = apply_pruning(tiny_bert(), PDPConfig(target_sparsity=0.5))
    pruner = get_pruner(model)
    with torch.no_grad():
        model.get_submodule(TARGET).weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=f"{TARGET}.*hardening"):
        pruner.harden()


def test_non_finite_loss_names_the_bad_module(make_args):
    model = tiny_bert()
    with torch.no_grad():
        model.get_submodule(TARGET).weight.fill_(float("nan"))
    # step 0 is not an exact-refresh step here (start = 2, every 7), so the loss check is what fires
    config = PDPConfig(threshold_refresh_steps=7)
    trainer = PrunerTrainer(model=model, args=make_args(), train_dataset=text_dataset(), pdp_config=config)
    with pytest.raises(FloatingPointError, match=f"Training loss is nan at optimizer step 0; NaN/Inf weights in \\['{TARGET}'\\]"):
        trainer.train()


def test_non_finite_loss_with_finite_targets_says_so(make_args):
    model = tiny_bert()
    with torch.no_grad():
        model.classifier.weight.fill_(float("inf"))  # not a pruning target
    trainer = PrunerTrainer(model=model, args=make_args(), train_dataset=text_dataset(), pdp_config=PDPConfig())
    with pytest.raises(FloatingPointError, match="all targeted weights are finite"):
        trainer.train()


@pytest.mark.parametrize("setup", ["fsdp", "zero3"])
def test_sharded_weights_refused(setup, make_args):
    from types import SimpleNamespace

    trainer = PrunerTrainer(model=tiny_bert(), args=make_args(), train_dataset=text_dataset(), pdp_config=PDPConfig())
    # What Trainer records for these setups (they cannot be launched on a CPU-only test machine).
    if setup == "fsdp":
        trainer.is_fsdp_enabled = True
        match = "does not support FSDP"
    else:
        trainer.is_deepspeed_enabled = True
        trainer.accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)))
        match = "does not support DeepSpeed ZeRO stage 3"
    with pytest.raises(NotImplementedError, match=match):
        trainer._refuse_sharded_weights()


def test_load_best_model_at_end_refused(make_args):
    args = make_args(eval_strategy="steps", save_strategy="steps", eval_steps=5, save_steps=5, load_best_model_at_end=True)
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        PrunerTrainer(model=tiny_bert(), args=args, train_dataset=text_dataset(), eval_dataset=text_dataset(8), pdp_config=PDPConfig())


def test_thresholds_stay_float32_after_half():
    model = apply_pruning(tiny_bert(), PDPConfig(target_sparsity=0.5, pruning_start=0, pruning_end=2)).half()
    pruner = get_pruner(model)
    pruner.set_total_steps(4)
    pruner.step(1)
    layer = model.get_submodule(TARGET)
    state = layer.pdp_group.state
    assert state["threshold"].dtype == state["tau"].dtype == torch.float32 and float(state["tau"]) > 0


def test_zero_threshold_gives_finite_gradient():
    from pdp_hf.methods.pdp import pdp_masked_weight, pdp_threshold, relative_tau

    # 3 exact zeros (a re-pruned sparse model) and 2 to prune: both neighbours of the cut are 0, so t = 0
    w = torch.tensor([0.0, 0.0, 0.0, 0.5, 1.0, 3.0], requires_grad=True)
    t = pdp_threshold(w, 2)
    assert float(t) == 0.0
    pdp_masked_weight(w, t, relative_tau(t, 0.05)).sum().backward()
    assert torch.isfinite(w.grad).all()
    assert w.grad[3:].tolist() == [1.0, 1.0, 1.0]  # kept weights pass their gradient through


def test_quantized_or_subclassed_linear_refused():
    from torch import nn

    class Int8Linear(nn.Linear):
        pass

    model = tiny_bert()
    model.bert.encoder.layer[0].intermediate.dense.__class__ = Int8Linear
    with pytest.raises(ValueError, match="Int8Linear.*not plain nn.Linear"):
        apply_pruning(model, PDPConfig())
    with pytest.raises(ValueError, match="not plain nn.Linear"):
        apply_pruning(model, PDPConfig(target_modules=["intermediate.dense"]))


def test_export_never_deletes_training_checkpoints(tmp_path):
    from pdp_hf import export_pruned, finalize_pruning

    (tmp_path / "run" / "checkpoint-10").mkdir(parents=True)
    model = finalize_pruning(apply_pruning(tiny_bert(), PDPConfig(target_sparsity=0.5)))
    with pytest.raises(FileExistsError, match="holds training checkpoints"):
        export_pruned(model, tmp_path / "run", overwrite=True)
    assert (tmp_path / "run" / "checkpoint-10").is_dir()


def test_training_again_after_finalize_is_refused(make_args):
    trainer = PrunerTrainer(model=tiny_bert(), args=make_args(max_steps=6), train_dataset=text_dataset(), pdp_config=PDPConfig())
    trainer.train()
    with pytest.raises(RuntimeError, match="already finalized; build a new PrunerTrainer"):
        trainer.train()


def test_pre_zeroed_matrix_warns_that_it_ends_sparser(caplog):
    """95% pre-zeroed, target 0.5: the budget cannot un-prune zeros; the run says so once, at pruning start."""
    import logging

    model = tiny_bert()
    layer = model.bert.encoder.layer[0].attention.self.query
    with torch.no_grad():
        layer.weight[torch.rand_like(layer.weight) < 0.95] = 0
    zeros = int((layer.weight == 0).sum())
    model = apply_pruning(model, PDPConfig(target_sparsity=0.5, pruning_start=0, pruning_end=2))
    pruner = get_pruner(model)
    pruner.set_total_steps(4)
    with caplog.at_level(logging.WARNING, logger="pdp_hf.injection"):
        pruner.step(0)
        pruner.step(1)
    warnings = [r.message for r in caplog.records if "all-zero units" in r.message]
    assert len(warnings) == 1 and f"already has {zeros} all-zero units, more than its budget of 512" in warnings[0]


def test_full_budget_means_mask_zero_before_hardening():
    from pdp_hf.methods.pdp import PDPMethod
    from pdp_hf.units import Member, UnitGroup

    linear = torch.nn.Linear(4, 3)
    group = UnitGroup("x", "unstructured", [Member("x", linear)], "element")
    method = PDPMethod(0.05)
    method.update(group, group.num_units)
    weight, _ = method.train_weight(group, group.members[0], linear)
    assert torch.equal(weight, torch.zeros_like(weight))
    weight.sum().backward()
    assert torch.isfinite(linear.weight.grad).all()
    assert not method.eval_mask(group, linear).any()


def test_nan_beside_the_cut_propagates_instead_of_hiding():
    from pdp_hf.methods.pdp import pdp_threshold

    w = torch.tensor([0.1, 0.2, 0.3, float("nan")])
    assert torch.isnan(pdp_threshold(w, 3))  # the (k+1)-th is NaN: t must not be inf, which would mask the NaN away


def test_target_zero_keeps_plain_linear_layers(make_args):
    """A dense baseline through the same script pays no mask cost: no class swap, and the run still reports and
    exports as usual."""
    from torch import nn

    model = tiny_bert()
    trainer = PrunerTrainer(model=model, args=make_args(max_steps=6), train_dataset=text_dataset(),
                            pdp_config=PDPConfig(target_sparsity=0.0))
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    trainer.train()
    assert sparsity_report(model)["total"]["zeros"] == 0


def test_a_state_save_that_dies_midway_leaves_the_previous_state_readable(tmp_path, monkeypatch):
    import safetensors.torch

    from pdp_hf import PDPConfig, apply_pruning, get_pruner

    config = PDPConfig(target_sparsity=0.5, pruning_start=2, pruning_end=4, harden_at=6)
    pruner = get_pruner(apply_pruning(tiny_bert(), config))
    pruner.set_total_steps(10)
    pruner.step(3)
    pruner.save_state(str(tmp_path))  # a good checkpoint mid-ramp

    def dies_midway(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt  # the process is stopped while writing

    pruner.step(6)  # hardened: the next save would write masks
    monkeypatch.setattr(safetensors.torch, "save_file", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        pruner.save_state(str(tmp_path))
    monkeypatch.undo()
    resumed = get_pruner(apply_pruning(tiny_bert(), config))
    resumed.load_state(str(tmp_path))  # the previous state, whole
    assert not resumed.hardened and resumed.budgets == {g.name: g.num_units // 2 for g in resumed.groups}
    assert sorted(os.listdir(tmp_path)) == ["pruning_config.json", "pruning_state.safetensors"]  # no temporary left


@pytest.mark.parametrize("field, value, says", [
    ("target_sparsity", 1.0, "target_sparsity=1.0 is invalid"),
    ("target_sparsity", 1.5, "target_sparsity=1.5 is invalid"),
    ("method", "pdq", "method='pdq' is invalid"),
    ("granularity", "attention=neuron", "'neuron' units do not exist in the attention layers"),
])
def test_a_config_changed_after_construction_is_validated_again(field, value, says):
    config = PDPConfig(target_sparsity=0.5)
    setattr(config, field, value)  # dataclasses are mutable
    with pytest.raises(ValueError, match=says):
        apply_pruning(tiny_bert(), config)


def _export_twice_interrupted(tmp_path, monkeypatch, exchange_works: bool):
    """Export A, then export B over it with the process stopped right after the new folder is in place or, without
    an atomic exchange, between moving A aside and moving B in."""
    import pdp_hf.atomic as atomic
    from pdp_hf import export_pruned, load_pruned

    path = str(tmp_path / "export")
    first = tiny_bert(seed=1).eval()
    export_pruned(first, path)
    if not exchange_works:
        monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    real_rename = os.rename

    def stop_before_the_new_folder_arrives(src, dst):
        if dst == path:
            raise KeyboardInterrupt("stopped")
        real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", stop_before_the_new_folder_arrives)
    if exchange_works:
        export_pruned(tiny_bert(seed=2), path, overwrite=True)  # the exchange itself never calls os.rename
    else:
        with pytest.raises(KeyboardInterrupt):
            export_pruned(tiny_bert(seed=2), path, overwrite=True)
    monkeypatch.undo()
    return first, load_pruned(path), path


def test_an_export_over_an_old_one_is_an_atomic_exchange_where_the_os_has_one(tmp_path, monkeypatch):
    first, loaded, _ = _export_twice_interrupted(tmp_path, monkeypatch, exchange_works=True)
    assert not torch.equal(loaded.classifier.weight, first.classifier.weight)  # the new export, complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_an_interrupted_swap_is_completed_by_the_next_call_and_the_old_export_survives(tmp_path, monkeypatch):
    first, loaded, path = _export_twice_interrupted(tmp_path, monkeypatch, exchange_works=False)
    torch.testing.assert_close(loaded.classifier.weight, first.classifier.weight, rtol=0, atol=0)  # the old one, back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@pytest.mark.parametrize("fused", ["off", "on"])
@pytest.mark.parametrize("granularity", ["unstructured", "neuron", "head"])
def test_bf16_ties_at_the_cut_keep_the_ramp_counts_exact(granularity, fused):
    """bf16 weights on a coarse grid (thousands share each value): during the ramp magnitude's training mask prunes
    exactly the units in force, not every unit tied with the cut."""
    torch.manual_seed(0)
    model = tiny_bert(layers=3).to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.where(p < 0, -1.0, 1.0) * ((p.abs() * 50).ceil() / 50))
        for layer in model.bert.encoder.layer:  # head 1 a copy of head 0: their norms tie
            attention = layer.attention
            for linear in (attention.self.query, attention.self.key, attention.self.value):
                linear.weight[16:] = linear.weight[:16]
            attention.output.dense.weight[:, 16:] = attention.output.dense.weight[:, :16]
    config = PDPConfig(method="magnitude", granularity=granularity, target_sparsity=0.5, pruning_start=0,
                       pruning_end=4, fused_masks=fused)
    pruner = get_pruner(apply_pruning(model, config))
    pruner.set_total_steps(8)
    checked = 0
    for step in range(4):
        pruner.step(step)
        for group in (g for g in pruner.groups if g.zeros):  # the ramp's first steps prune no head yet
            pruned = int((group.state["keep"] == 0).sum())
            assert pruned == group.zeros, (step, group.name, pruned, group.zeros)
            checked += 1
    assert checked >= 3
