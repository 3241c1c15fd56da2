"""PrunerTrainer end to end on tiny models: exact sparsity, schedule per optimizer step, logs, resume, cleanup."""

import os

import pytest
import torch
from torch import nn
from transformers import TrainerCallback

from pdp_hf import PDPConfig, PrunerTrainer, get_pruner, sparsity_report
from pdp_hf.injection import PrunedLinear
from pdp_hf.methods import METHODS
from tests.conftest import image_dataset, text_dataset, tiny_bert, tiny_distilbert, tiny_roberta, tiny_vit


def assert_plain(model, reference, targets):
    assert get_pruner(model) is None
    assert not any(isinstance(m, PrunedLinear) for m in model.modules())
    assert list(model.state_dict()) == list(reference.state_dict())
    assert not any(name.startswith("pdp_") or ".pdp_" in name for name, _ in model.named_buffers())
    assert all(type(model.get_submodule(n)) is nn.Linear for n in targets)
    assert not any(k.startswith("pdp_") for m in model.modules() for k in vars(m))


@pytest.mark.parametrize(
    "factory,dataset",
    [(tiny_bert, text_dataset), (tiny_vit, image_dataset), (tiny_roberta, text_dataset), (tiny_distilbert, text_dataset)],
)
def test_reaches_exact_uniform_target(factory, dataset, make_args):
    model = factory()
    config = PDPConfig(target_sparsity=0.9, pruning_start=0.1, pruning_end=0.5, harden_at=0.75)
    trainer = PrunerTrainer(model=model, args=make_args(), train_dataset=dataset(), pdp_config=config)
    trainer.train()
    report = sparsity_report(model)
    assert len(report["modules"]) == 12
    for name, row in report["modules"].items():
        assert row["zeros"] == round(0.9 * row["numel"]), name
        assert int((model.get_submodule(name).weight == 0).sum()) == row["zeros"]
    assert_plain(model, factory(), list(report["modules"]))


def test_global_distribution_reaches_total_budget(make_args):
    model = tiny_bert()
    config = PDPConfig(target_sparsity=0.8, sparsity_distribution="global", harden_at=None)
    trainer = PrunerTrainer(model=model, args=make_args(), train_dataset=text_dataset(), pdp_config=config)
    budgets = {}

    class Grab(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            budgets.update(get_pruner(model).budgets)

    trainer.add_callback(Grab())
    trainer.train()
    report = sparsity_report(model)
    assert report["total"]["zeros"] == round(0.8 * report["total"]["numel"])
    assert {n: r["zeros"] for n, r in report["modules"].items()} == budgets
    assert len({r["zeros"] for r in report["modules"].values()}) > 2  # budgets differ by layer


class RecordSparsity(TrainerCallback):
    """Zeros in force during each optimizer step (read at its end, before the next step's update)."""

    def __init__(self):
        self.by_step = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        pruner = get_pruner(model)
        self.by_step[state.global_step] = sum(g.zeros for g in pruner.groups)  # unstructured: units are weights


@pytest.mark.parametrize("accumulation", [1, 3])
def test_schedule_advances_once_per_optimizer_step(accumulation, make_args):
    model = tiny_bert()
    config = PDPConfig(target_sparsity=0.5, pruning_start=4, pruning_end=12, harden_at=16)
    args = make_args(per_device_train_batch_size=4, gradient_accumulation_steps=accumulation)
    trainer = PrunerTrainer(model=model, args=args, train_dataset=text_dataset(96), pdp_config=config)
    recorder = RecordSparsity()
    trainer.add_callback(recorder)
    trainer.train()
    numel = sum(row["numel"] for row in sparsity_report(model)["modules"].values())
    per_layer = [1024] * 4 + [2048] * 2  # q, k, v, o (32x32) and ffn (64x32, 32x64) per layer
    expected = {}
    for step in range(20):  # global_step after step `step` ran = step + 1
        frac = min(max((step - 4) / 8, 0.0), 1.0)
        expected[step + 1] = 2 * sum(int(round(frac * round(0.5 * n))) for n in per_layer)
    assert recorder.by_step == expected
    assert numel == 2 * sum(per_layer)


def test_logs_sparsity_temperature_and_gap(make_args):
    trainer = PrunerTrainer(
        model=tiny_bert(), args=make_args(logging_steps=2), train_dataset=text_dataset(),
        pdp_config=PDPConfig(target_sparsity=0.6, pruning_start=0, pruning_end=0.5, harden_at=0.8),
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all({"sparsity", "mask_gap"} <= set(h) for h in logs)
    by_step = {h["step"]: h for h in logs}
    assert "temperature" in by_step[8] and "temperature" not in by_step[20]  # the soft masks' temperature, while soft
    # a log reports the sparsity in force during the step just taken: step 11 (0-based 10) is the first at full target
    assert by_step[2]["sparsity"] < by_step[10]["sparsity"] < by_step[12]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert by_step[8]["mask_gap"] > 0 and by_step[20]["mask_gap"] == 0  # soft while ramping, hard after


def test_masks_fixed_after_hardening(make_args):
    model = tiny_bert()
    masks = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            pruner = get_pruner(model)
            if pruner.hardened:
                masks.setdefault("first", {g.name: g.hard_mask.clone() for g in pruner.groups})

    trainer = PrunerTrainer(
        model=model, args=make_args(), train_dataset=text_dataset(),
        pdp_config=PDPConfig(target_sparsity=0.7, pruning_end=0.4, harden_at=0.5),
    )
    trainer.add_callback(Snapshot())
    trainer.train()
    for name, mask in masks["first"].items():
        assert torch.equal(model.get_submodule(name).weight != 0, mask), name


def test_bf16_autocast_training_step_is_finite():
    from pdp_hf import apply_pruning

    model = apply_pruning(tiny_bert(), PDPConfig(target_sparsity=0.9, temperature=1e-12))
    pruner = get_pruner(model)
    pruner.set_total_steps(10)
    pruner.step(9)
    ids = torch.randint(1, 60, (4, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=torch.tensor([0, 1, 0, 1])).loss
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_schedule_longer_than_training_refused(make_args):
    trainer = PrunerTrainer(
        model=tiny_bert(), args=make_args(max_steps=10), train_dataset=text_dataset(),
        pdp_config=PDPConfig(pruning_start=2, pruning_end=50, harden_at=None),
    )
    with pytest.raises(ValueError, match="pruning_end=50 is step 50, after the end of training \\(10"):
        trainer.train()


def test_checkpoints_keep_dense_weights_and_pruning_state(make_args, tmp_path):
    model = tiny_bert()
    config = PDPConfig(target_sparsity=0.8, pruning_start=0.1, pruning_end=0.6, harden_at=0.8)
    args = make_args(save_strategy="steps", save_steps=10)
    PrunerTrainer(model=model, args=args, train_dataset=text_dataset(), pdp_config=config).train()
    ckpt = os.path.join(args.output_dir, "checkpoint-10")
    assert {"pruning_state.safetensors", "pruning_config.json", "model.safetensors"} <= set(os.listdir(ckpt))
    from safetensors.torch import load_file

    weights = load_file(os.path.join(ckpt, "model.safetensors"))
    query = weights["bert.encoder.layer.0.attention.self.query.weight"]
    assert int((query == 0).sum()) == 0  # dense: pruned weights may still come back
    assert PDPConfig.from_pretrained(ckpt) == config


def _train_with_checkpoints(output_dir, resume=None, **config_overrides):
    from tests.conftest import training_args

    model = tiny_bert(seed=1)
    config = PDPConfig(**{"target_sparsity": 0.8, "pruning_start": 0.1, "pruning_end": 0.6, "harden_at": 0.8, **config_overrides})
    args = training_args(output_dir, save_strategy="steps", save_steps=6)
    trainer = PrunerTrainer(model=model, args=args, train_dataset=text_dataset(), pdp_config=config)
    trainer.train(resume_from_checkpoint=resume)
    return model


@pytest.mark.parametrize(
    "checkpoint,overrides",
    [
        ("checkpoint-6", {"pruning_start": 0.4}),  # dense warm-up: saved before pruning starts
        ("checkpoint-6", {}),  # mid-ramp
        ("checkpoint-18", {}),  # after hardening
        ("checkpoint-6", {"threshold_refresh_steps": 4, "sparsity_distribution": "global"}),
    ],
)
def test_resume_reproduces_uninterrupted_run(tmp_path, checkpoint, overrides):
    full = _train_with_checkpoints(tmp_path / "full", **overrides)
    resumed = _train_with_checkpoints(tmp_path / "resumed", resume=str(tmp_path / "full" / checkpoint), **overrides)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert sparsity_report(resumed)["total"]["zeros"] == sparsity_report(full)["total"]["zeros"]


def test_resume_with_another_config_refused(tmp_path):
    _train_with_checkpoints(tmp_path / "full")
    trainer = PrunerTrainer(
        model=tiny_bert(seed=1), args=__import__("tests.conftest").conftest.training_args(tmp_path / "other"),
        train_dataset=text_dataset(), pdp_config=PDPConfig(target_sparsity=0.5),
    )
    with pytest.raises(ValueError, match="another PDPConfig.*target_sparsity"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-6"))


def test_trainer_needs_a_config(make_args):
    with pytest.raises(ValueError, match="pdp_config"):
        PrunerTrainer(model=tiny_bert(), args=make_args())


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("schedule", ["linear", "cubic"])
@pytest.mark.parametrize("refresh", [1, 4])
def test_every_method_and_schedule_reaches_exact_target(method, schedule, refresh, make_args):
    model = tiny_bert()
    config = PDPConfig(
        target_sparsity=0.85, method=method, sparsity_schedule=schedule, harden_at=None, threshold_refresh_steps=refresh
    )
    PrunerTrainer(model=model, args=make_args(), train_dataset=text_dataset(), pdp_config=config).train()
    for name, row in sparsity_report(model)["modules"].items():
        assert row["zeros"] == round(0.85 * row["numel"]), name


def test_magnitude_masks_smallest_weights_and_blocks_their_gradient():
    from pdp_hf import apply_pruning

    model = apply_pruning(tiny_bert(), PDPConfig(target_sparsity=0.6, method="magnitude", pruning_start=0, pruning_end=4))
    pruner = get_pruner(model)
    pruner.set_total_steps(10)
    pruner.step(2)  # half way: 30% zeros
    layer = model.bert.encoder.layer[0].intermediate.dense
    keep = layer.pdp_group.state["keep"].bool()
    assert int((~keep).sum()) == round(0.5 * round(0.6 * layer.weight.numel()))
    assert layer.weight.abs()[~keep].max() <= layer.weight.abs()[keep].min()
    model(input_ids=torch.randint(1, 60, (2, 8)), labels=torch.tensor([0, 1])).loss.backward()
    assert torch.all(layer.weight.grad[~keep] == 0) and layer.weight.grad[keep].abs().sum() > 0
