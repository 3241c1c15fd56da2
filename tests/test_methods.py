"""SMART and movement: learnable unit scores end to end (exact budgets, exports, optimizer group, resume, no trace),
and the formulas each rests on, against slow direct references."""

import json
import logging

import pytest
import torch
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification, HfArgumentParser

from pdp_hf import PDPConfig, PrunerTrainer, apply_pruning, finalize_pruning, get_pruner, sparsity_report
from pdp_hf.methods import METHODS
from pdp_hf.methods.smart import SmartMethod
from pdp_hf.schedules import PruningSchedule
from pdp_hf.topk import solve_lambda
from tests.conftest import image_dataset, text_dataset, tiny_bert, tiny_vit, training_args
from tests.test_granularity import GRANULARITIES, check_structure

LEARNED = ("smart", "movement")
SETTINGS = {"unstructured": dict(target_sparsity=0.75), **{k: GRANULARITIES[k] for k in ("2:4", "neuron", "head", "block", "mixed")}}
RESUMED = {**SETTINGS, "learned": dict(target_sparsity=0.75, sparsity_distribution="learned")}
SCHEDULE = dict(pruning_start=0.1, pruning_end=0.5, harden_at=0.75)


def inputs_for(factory):
    return {"pixel_values": torch.randn(3, 1, 8, 8)} if factory is tiny_vit else {"input_ids": torch.randint(1, 60, (3, 8))}


@pytest.mark.parametrize("factory,dataset", [(tiny_bert, text_dataset), (tiny_vit, image_dataset)], ids=["bert", "vit"])
@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_reaches_the_exact_target_and_exports_plain(factory, dataset, name, method, make_args, tmp_path):
    model = factory()
    config = PDPConfig(method=method, **SCHEDULE, **SETTINGS[name])
    trainer = PrunerTrainer(model=model, args=make_args(max_steps=12), train_dataset=dataset(), pdp_config=config)
    trainer.train()
    assert get_pruner(model) is None and not hasattr(model, "pdp_scores")
    assert not [k for k in model.state_dict() if "pdp_scores" in k]
    if name == "unstructured":
        for row in sparsity_report(model, config=config)["modules"].values():
            assert row["zeros"] == round(0.75 * row["numel"])
    else:
        check_structure(model, name)
    folder = trainer.export_pruned(str(tmp_path / "export"))
    auto = AutoModelForImageClassification if factory is tiny_vit else AutoModelForSequenceClassification
    loaded = auto.from_pretrained(folder).eval()
    inputs = inputs_for(factory)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model.eval()(**inputs).logits, rtol=0, atol=1e-5)
    from safetensors import safe_open

    with safe_open(f"{folder}/model.safetensors", framework="pt") as f:
        assert not [k for k in f.keys() if "score" in k]
    from pdp_hf.methods import get_method

    assert get_method(method).description in open(f"{folder}/README.md", encoding="utf-8").read()


@pytest.mark.parametrize("method", LEARNED)
def test_learned_methods_train_under_bf16_autocast(method, make_args):
    model = tiny_bert()
    config = PDPConfig(method=method, target_sparsity=0.75, **SCHEDULE)
    trainer = PrunerTrainer(model=model, args=make_args(max_steps=12, bf16=True), train_dataset=text_dataset(), pdp_config=config)
    trainer.train()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
    for row in sparsity_report(model, config=config)["modules"].values():
        assert row["zeros"] == round(0.75 * row["numel"])


def test_scores_get_their_own_optimizer_group_and_learn(make_args):
    model = tiny_bert()
    config = PDPConfig(method="smart", target_sparsity=0.5, score_learning_rate=0.05, **SCHEDULE)
    trainer = PrunerTrainer(model=model, args=make_args(max_steps=12, weight_decay=0.1), train_dataset=text_dataset(),
                            pdp_config=config)
    pruner = trainer.pruner
    scores = pruner.score_parameters()
    before = [s.detach().clone() for s in scores]
    assert len(scores) == len(pruner.groups) == 12
    optimizer = trainer.create_optimizer()
    score_ids = {id(s) for s in scores}
    groups = [g for g in optimizer.param_groups if any(id(p) in score_ids for p in g["params"])]
    assert len(groups) == 1 and groups[0]["lr"] == 0.05 and groups[0]["weight_decay"] == 0.0
    assert {id(p) for p in groups[0]["params"]} == score_ids  # and no weight of the model in that group
    others = [p for g in optimizer.param_groups if g is not groups[0] for p in g["params"]]
    assert not score_ids & {id(p) for p in others} and len(others) == sum(1 for p in model.parameters()) - len(scores)
    trainer.train()
    assert all(not torch.equal(b, s.detach()) for b, s in zip(before, scores))  # every group's scores moved


def test_an_optimizer_without_the_scores_is_a_clear_error(make_args):
    model = tiny_bert()
    optimizer = torch.optim.AdamW([p for n, p in model.named_parameters()], lr=1e-3)  # before the scores exist
    trainer = PrunerTrainer(model=model, args=make_args(max_steps=4), train_dataset=text_dataset(),
                            pdp_config=PDPConfig(method="movement", target_sparsity=0.5), optimizers=(optimizer, None))
    with pytest.raises(ValueError, match="optimizer does not hold them.*optimizer_param_groups"):
        trainer.train()


def test_scores_only_for_groups_that_are_masked():
    config = PDPConfig(method="smart", granularity="attention=n:m,ffn=neuron", target_sparsity=0.0)
    model = apply_pruning(tiny_bert(), config)
    pruner = get_pruner(model)
    with_scores = {g.kind for g in pruner.groups if g.score is not None}
    assert with_scores == {"n:m"}  # at target 0 the neuron groups stay plain Linear layers: no scores to train
    assert len(pruner.score_parameters()) == len(list(model.pdp_scores.parameters())) == 8


def test_non_finite_scores_are_named():
    model, pruner = smart_model("neuron", target_sparsity=0.5)
    with torch.no_grad():
        pruner.groups[0].score[0] = float("nan")
    with pytest.raises(FloatingPointError, match="pdp_scores of bert.encoder.layer.0"):
        pruner.step(10)


def test_scores_stay_float32_when_the_model_is_cast_and_are_not_counted_as_model_parameters():
    model = apply_pruning(tiny_bert(), PDPConfig(method="smart", target_sparsity=0.5)).to(torch.bfloat16)
    pruner = get_pruner(model)
    assert {s.dtype for s in pruner.score_parameters()} == {torch.float32}
    assert model.bert.encoder.layer[0].attention.self.query.weight.dtype == torch.bfloat16
    own = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("pdp_scores."))
    assert sparsity_report(model)["model"]["parameters"] == own == sum(p.numel() for p in tiny_bert().parameters())


def test_movement_eval_uses_the_current_scores():
    config = PDPConfig(method="movement", target_sparsity=0.5, pruning_start=0, pruning_end=4, harden_at=None)
    model = apply_pruning(tiny_bert(), config)
    pruner = get_pruner(model)
    pruner.set_total_steps(10)
    pruner.step(2)
    group = pruner.groups[0]
    with torch.no_grad():  # an optimizer step moves the scores after the step's update
        group.score.copy_(torch.randn_like(group.score))
    module = group.members[0].module
    model.eval()
    weight, _ = module.pruned_weight_and_bias()
    expected = group.masked(pruner.method.hard_mask(group, group.zeros), group.members[0])[0]
    assert torch.equal(weight, expected)


def test_pdp_and_magnitude_have_no_scores():
    for method in ("pdp", "magnitude"):
        model = apply_pruning(tiny_bert(), PDPConfig(method=method))
        assert get_pruner(model).score_parameters() == [] and not hasattr(model, "pdp_scores")


# -- SMART --------------------------------------------------------------------------------------------------------
def smart_model(granularity="unstructured", **kw):
    config = PDPConfig(method="smart", granularity=granularity, pruning_start=0, pruning_end=10, harden_at=None, **kw)
    model = apply_pruning(tiny_bert(), config)
    pruner = get_pruner(model)
    pruner.set_total_steps(20)
    return model, pruner


@pytest.mark.parametrize("granularity,kw", [("unstructured", dict(target_sparsity=0.9)), ("neuron", dict(target_sparsity=0.5)),
                                            ("n:m", dict(n_m="2:4"))])
def test_smart_soft_mask_sums_to_k(granularity, kw):
    model, pruner = smart_model(granularity, **kw)
    for step in (3, 7, 12):
        pruner.step(step)
        for group in pruner.groups:
            mask = pruner.method.soft_mask(group).detach().double()
            if group.kind == "n:m":
                selected = group.state.get("selected")
                sums = mask.sum(-1, keepdim=True)
                rows = sums if selected is None else sums[selected]
                torch.testing.assert_close(rows, torch.full_like(rows, group.n), rtol=1e-3, atol=0)
            else:
                k = group.num_units - group.zeros
                assert abs(float(mask.sum()) - k) <= 1e-3 * k, (group.name, float(mask.sum()), k)


def test_smart_mask_is_the_formula_and_its_gradient_matches_finite_differences():
    model, pruner = smart_model("neuron", target_sparsity=0.5)
    pruner.step(5)
    group = next(g for g in pruner.groups if g.kind == "neuron")
    tau = pruner.method.temperature
    k = group.num_units - group.zeros
    mask = pruner.method.soft_mask(group)
    # Formula: sigmoid(s / tau + lambda) with lambda re-solved in float64 from scratch.
    lam = solve_lambda(group.score.detach().double().view(1, -1), k, tau)
    direct = torch.sigmoid(group.score.detach().double() / tau + lam.view(-1))
    torch.testing.assert_close(mask.double(), direct, rtol=0, atol=1e-5)
    # Gradient of a fixed linear read-out w.r.t. the scores vs central differences of the re-solved mask.
    weights = torch.randn(group.num_units, dtype=torch.float64)
    (mask.double() * weights).sum().backward()
    eps = 1e-4
    for i in range(0, group.num_units, 17):
        def value(delta, i=i):
            s = group.score.detach().double().clone().view(1, -1)
            s[0, i] += delta
            return float((torch.sigmoid(s / tau + solve_lambda(s, k, tau)) * weights).sum())

        numeric = (value(eps) - value(-eps)) / (2 * eps)
        assert abs(float(group.score.grad.view(-1)[i]) - numeric) <= 1e-3 * max(1.0, abs(numeric)), i


def test_smart_cold_temperature_gives_the_hard_top_k_of_the_scores():
    model, pruner = smart_model("unstructured", target_sparsity=0.75, smart_temperature_start=1e-5, smart_temperature_end=1e-5)
    with torch.no_grad():  # distinct scores, at least 1/n apart, in a random order
        for group in pruner.groups:
            n = group.num_units
            group.score.copy_(torch.linspace(0, 1, n)[torch.randperm(n)].view(group.unit_shape))
    pruner.step(12)  # full budget
    for group in pruner.groups:
        soft = pruner.method.soft_mask(group).detach()
        hard = pruner.method.hard_mask(group, group.zeros)
        top = torch.zeros(group.num_units, dtype=torch.bool)
        top[torch.topk(group.score.detach().view(-1), group.num_units - group.zeros).indices] = True
        assert torch.equal(hard.view(-1), top)
        torch.testing.assert_close(soft.view(-1), top.float(), rtol=0, atol=1e-4)  # float32 count tolerance


def test_smart_temperature_decays_geometrically_over_the_ramp():
    method = SmartMethod(temperature_start=1.0, temperature_end=0.01)
    schedule = PruningSchedule(pruning_start=10, pruning_end=30, harden_at=None, total_steps=50)
    values = [method.temperature_at(step, schedule) for step in (0, 10, 20, 30, 45)]
    assert values == pytest.approx([1.0, 1.0, 0.1, 0.01, 0.01])


def test_smart_scores_start_as_normalized_unit_norms():
    model, pruner = smart_model("neuron", target_sparsity=0.5)
    for group in pruner.groups:  # a neuron's norm over its FFN-in row, bias excluded, and its FFN-out column
        ffn_in, ffn_out = (m.module.weight.detach() for m in group.members)
        norms = (ffn_in.square().sum(1) + ffn_out.square().sum(0)).sqrt()
        torch.testing.assert_close(group.score.detach(), norms / norms.mean())


@pytest.mark.parametrize("distribution", ["uniform", "global", "learned"])
def test_smart_scores_start_again_from_the_weights_at_pruning_start_with_fresh_optimizer_state(distribution):
    """The weights train in the dense stage and the scores do not: at pruning_start the scores are the normalized
    unit norms of the weights then (the magnitudes global budgets rank), and Adam's state for them starts anew."""
    model = tiny_bert()
    pruner = get_pruner(apply_pruning(model, PDPConfig(method="smart", granularity="neuron", target_sparsity=0.5,
                                                       sparsity_distribution=distribution, pruning_start=3,
                                                       pruning_end=6, harden_at=8)))
    pruner.set_total_steps(10)
    params = [p for n, p in model.named_parameters() if not n.startswith("pdp_scores.")]
    optimizer = torch.optim.AdamW([{"params": params}, *pruner.optimizer_param_groups()], lr=1e-2)
    pruner.set_optimizer(optimizer)
    x = torch.randint(1, 60, (4, 8))
    started = []
    for step in range(4):
        pruner.step(step)
        if step == 3:
            for group in pruner.groups:
                torch.testing.assert_close(group.score.detach(), SmartMethod.init_scores(pruner.method, group))
                assert group.score not in optimizer.state
            assert any(not torch.equal(g.score.detach(), s) for g, s in zip(pruner.groups, started))
        model(input_ids=x, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 0:
            started = [g.score.detach().clone() for g in pruner.groups]  # apply_pruning's scores, untrained so far


# -- sparsity_distribution="learned": the scores rank the layers, SMART shares one lambda ---------------------------
def pool_scores(pruner):
    return torch.cat([g.score.detach().reshape(-1) for g in pruner.groups])


@pytest.mark.parametrize("unused_layer", [False, True], ids=["all-layers-in-the-loss", "a-layer-without-gradient"])
def test_smart_shared_lambda_sums_to_k_over_all_layers_and_its_gradient_matches_finite_differences(unused_layer):
    model, pruner = smart_model("neuron", target_sparsity=0.5, sparsity_distribution="learned")
    with torch.no_grad():  # layers' scores on different levels, so the shared lambda moves mass between layers
        for i, group in enumerate(pruner.groups):
            group.score.add_(0.05 * i)
    pruner.step(5)
    groups, tau = pruner.groups, pruner.method.temperature
    assert len({g.zeros for g in groups}) == len(groups) and all(g.zeros for g in groups)  # the ranking split them
    assert len({float(g.state["lambda"]) for g in groups}) == 1
    k = sum(g.num_units - g.zeros for g in groups)
    masks = [pruner.method.soft_mask(g) for g in groups]
    assert abs(float(sum(m.detach().double().sum() for m in masks)) - k) <= 1e-3 * k
    assert len({round(float(m.detach().sum())) for m in masks}) > 1  # not each layer's own k: one lambda for all
    # Formula: sigmoid(s / tau + lambda), lambda re-solved in float64 over all layers' scores together.
    scores = pool_scores(pruner).double().view(1, -1)
    direct = torch.sigmoid(scores / tau + solve_lambda(scores, k, tau)).view(-1)
    torch.testing.assert_close(torch.cat([m.detach().double().view(-1) for m in masks]), direct, rtol=0, atol=1e-5)
    # Gradient of a fixed linear read-out (autograd + the pre-step fix-up) vs central differences of the re-solved mask.
    weights = torch.randn(scores.numel(), dtype=torch.float64)
    if unused_layer:  # the last layer's mask is not in the loss: no gradient reaches its scores, lambda still couples them
        weights[-groups[-1].num_units:] = 0
        masks_in_loss = masks[:-1]
    else:
        masks_in_loss = masks
    (torch.cat([m.double().view(-1) for m in masks_in_loss]) * weights[: sum(m.numel() for m in masks_in_loss)]).sum().backward()
    assert (groups[-1].score.grad is None) == unused_layer
    pruner.adjust_score_gradients()
    grad = torch.cat([g.score.grad.view(-1) for g in groups])
    eps = 1e-4
    for i in range(0, scores.numel(), 11):  # units of every layer
        def value(delta, i=i):
            s = scores.clone()
            s[0, i] += delta
            return float((torch.sigmoid(s / tau + solve_lambda(s, k, tau)).view(-1) * weights).sum())

        numeric = (value(eps) - value(-eps)) / (2 * eps)
        assert abs(float(grad[i]) - numeric) <= 1e-3 * max(1.0, abs(numeric)), i


@pytest.mark.parametrize("method", LEARNED)
def test_learned_distribution_follows_the_ranking_of_the_scores_across_layers(method, caplog):
    config = PDPConfig(method=method, target_sparsity=0.75, sparsity_distribution="learned", pruning_start=0,
                       pruning_end=10, harden_at=None, threshold_refresh_steps=5)
    model = apply_pruning(tiny_bert(), config)
    pruner = get_pruner(model)
    pruner.set_total_steps(20)

    def set_scores(favoured):
        with torch.no_grad():
            for i, group in enumerate(pruner.groups):
                group.score.copy_(torch.rand_like(group.score) + (1.0 if i == favoured else 0.0))

    def expected_budgets():  # the round(0.75 * N) lowest scores over all layers, counted per layer
        scores = pool_scores(pruner)
        cut = scores.kthvalue(round(0.75 * scores.numel())).values
        return {g.name: int((g.score.detach() <= cut).sum()) for g in pruner.groups}

    set_scores(favoured=0)
    ranked, compute = [], pruner.compute_budgets
    pruner.compute_budgets = lambda: ranked.append(1) or compute()
    pruner.step(0)
    assert pruner.budgets == expected_budgets()
    assert len(ranked) == 1  # the first pruning step (also an exact refresh) ranks once
    first = pruner.groups[0].name
    assert pruner.budgets[first] < min(b for n, b in pruner.budgets.items() if n != first)  # the favoured layer keeps more
    set_scores(favoured=3)
    with caplog.at_level(logging.WARNING, logger="pdp_hf.injection"):
        pruner.step(3)  # between refreshes: the budgets stay
    assert pruner.budgets != expected_budgets()
    assert ("no optimizer was handed over" in caplog.text) == (method == "smart")  # SMART's fix-up needs it
    pruner.step(10)  # an exact refresh at the full budget: re-ranked by the scores as they are now
    assert pruner.budgets == expected_budgets()
    assert sum(pruner.budgets.values()) == round(0.75 * pool_scores(pruner).numel())
    at_refresh = dict(pruner.budgets)
    set_scores(favoured=5)
    final = expected_budgets()
    assert final != at_refresh
    model = finalize_pruning(model)  # hardening ranks the final scores once more, exactly
    zeros = {name: int((m.weight == 0).sum()) for name, m in model.named_modules() if name in final}
    assert zeros == final


@pytest.mark.parametrize("method", LEARNED)
def test_a_layer_whose_learned_budget_falls_to_zero_trains_unmasked(method):
    """At an exact refresh the learned distribution may move a layer's whole budget elsewhere: from then on its
    training forward must use every unit (movement masks before pruning too, so its last mask must not linger)."""
    config = PDPConfig(method=method, granularity="head", target_sparsity=0.5, sparsity_distribution="learned",
                       pruning_start=0, pruning_end=10, harden_at=None, threshold_refresh_steps=5)
    model = apply_pruning(tiny_bert(layers=4), config).train()
    pruner = get_pruner(model)
    pruner.set_total_steps(20)

    def favour(layers, by):
        with torch.no_grad():
            for i, group in enumerate(pruner.groups):
                group.score.copy_(torch.tensor([0.0, 1.0]) + (by if i in layers else 0.0))

    favour(layers=(1, 2, 3), by=5.0)  # layer 0 holds the lowest scores: it prunes first
    pruner.step(0)
    pruner.step(4)
    first = pruner.groups[0]
    assert first.zeros == 1
    favour(layers=(0,), by=9.0)
    pruner.step(5)  # an exact refresh: layer 0 now ranks highest and prunes nothing
    assert first.zeros == 0 and pruner.budgets[first.name] == 0
    for member in first.members:
        weight, _ = member.module.pruned_weight_and_bias()
        assert torch.equal(weight, member.module.weight), member.name


def test_deepspeed_zero_gets_a_warning_instead_of_the_shared_lambda_fix_up(caplog):
    """ZeRO hands the torch optimizer flat partitions (the scores' .grad stays None): the fix-up cannot run, and the
    scores cannot be found in its groups. Said, not refused, wherever DeepSpeed sits in the wrapper chain."""
    model = apply_pruning(tiny_bert(), PDPConfig(method="smart", target_sparsity=0.5, sparsity_distribution="learned"))
    pruner = get_pruner(model)
    base = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(4))])  # a flat partition, not the scores
    zero = type("DeepSpeedZeroOptimizer", (), {"__module__": "deepspeed.runtime.zero.stage_1_and_2"})()
    zero.optimizer, zero.param_groups = base, base.param_groups
    accelerated = type("AcceleratedOptimizer", (), {})()
    accelerated.optimizer = zero
    with caplog.at_level(logging.WARNING, logger="pdp_hf.injection"):
        pruner.set_optimizer(accelerated)
    assert "which DeepSpeedZeroOptimizer does not allow" in caplog.text
    assert pruner._score_grad_hook is None and not base._optimizer_step_pre_hooks


def test_learned_distribution_ranks_equal_scores_by_magnitude_across_layers():
    """Movement's scores all start at 0: ranked across layers, the ties must go by the units' relative norms (as
    within a layer), not by layer order (which pruned the first layer whole)."""
    config = PDPConfig(method="movement", target_sparsity=0.5, sparsity_distribution="learned")
    model = apply_pruning(tiny_bert(), config)
    pruner = get_pruner(model)
    norms = {g.name: (g.scores() / g.scores().mean()).reshape(-1) for g in pruner.groups}
    cut = torch.cat(list(norms.values())).kthvalue(round(0.5 * sum(n.numel() for n in norms.values()))).values
    expected = {name: int((n <= cut).sum()) for name, n in norms.items()}
    model = finalize_pruning(model)
    zeros = {name: int((m.weight == 0).sum()) for name, m in model.named_modules() if name in expected}
    assert zeros == expected


def test_smart_learned_distribution_trains_to_the_exact_total_with_gradients_through_the_shared_lambda(make_args):
    model = tiny_bert()
    config = PDPConfig(method="smart", target_sparsity=0.75, sparsity_distribution="learned", **SCHEDULE)
    trainer = PrunerTrainer(model=model, args=make_args(max_steps=12), train_dataset=text_dataset(), pdp_config=config)
    groups = trainer.pruner.groups
    sums = []

    from transformers import TrainerCallback

    class Spy(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kw):  # after the step, before zero_grad
            if all(g.zeros for g in groups) and not trainer.pruner.hardened:
                grads = torch.cat([g.score.grad.view(-1) for g in groups])
                sums.append(float(grads.sum()) / float(grads.abs().sum()))

    trainer.add_callback(Spy())
    trainer.train()
    assert sums and max(abs(x) for x in sums) < 1e-4  # the fix-up ran: the projected gradient sums to 0 over the pool
    rows = sparsity_report(model, config=config)["modules"].values()
    assert sum(r["zeros"] for r in rows) == round(0.75 * sum(r["numel"] for r in rows))
    assert len({r["zeros"] / r["numel"] for r in rows}) > 1  # the layers got different sparsities


# -- movement ------------------------------------------------------------------------------------------------------
def test_movement_scores_get_minus_w_times_the_weight_gradient_straight_through():
    # the per-group path, whose masked weights can be read (tests/test_fused.py: the fused path trains identically)
    torch.manual_seed(0)
    config = PDPConfig(method="movement", target_sparsity=0.5, pruning_start=0, pruning_end=4, harden_at=None,
                       fused_masks="off")
    model = apply_pruning(tiny_bert(), config).train()
    pruner = get_pruner(model)
    pruner.set_total_steps(10)
    pruner.step(2)  # a quarter pruned: the straight-through gradient reaches pruned units too
    masked = {}
    original = pruner.method.train_weight

    def keep_masked_weight(group, member, module):  # W' = W * M as the forward uses it, to read dL/dW'
        weight, bias = original(group, member, module)
        weight.retain_grad()
        masked[group.name] = weight
        return weight, bias

    pruner.method.train_weight = keep_masked_weight
    inputs = {"input_ids": torch.randint(1, 60, (4, 8)), "labels": torch.tensor([0, 1, 0, 1])}
    model(**inputs).loss.backward()
    for group in pruner.groups:
        module = group.members[0].module
        keep = group.state["keep"].float()
        grad_masked = masked[group.name].grad
        torch.testing.assert_close(group.score.grad, grad_masked * module.weight.detach(), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(module.weight.grad, grad_masked * keep, rtol=0, atol=0)  # dL/dW = dL/dW' * M
        assert float(group.score.grad[keep == 0].abs().sum()) > 0  # pruned weights' scores still learn
        assert int((keep == 0).sum()) == round(0.25 * keep.numel())


@pytest.mark.parametrize("score_init", ["zeros", "magnitude"])
@pytest.mark.parametrize("granularity,kw", [("unstructured", dict(target_sparsity=0.75)), ("neuron", dict(target_sparsity=0.5)),
                                            ("n:m", {})])
def test_untrained_movement_prunes_what_magnitude_prunes(granularity, kw, score_init):
    """Finalized before any training, movement must prune what magnitude prunes: with zero scores because ties rank
    by magnitude (not position), with magnitude-started scores because they are the magnitude order."""
    config = PDPConfig(method="movement", granularity=granularity, movement_score_init=score_init, **kw)
    moved = finalize_pruning(apply_pruning(tiny_bert(), config))
    plain = finalize_pruning(apply_pruning(tiny_bert(), PDPConfig(method="magnitude", granularity=granularity, **kw)))
    for (name, a), (_, b) in zip(moved.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a == 0, b == 0), name


def test_movement_magnitude_init_is_each_weight_over_the_mean_weight():
    model = apply_pruning(tiny_bert(), PDPConfig(method="movement", target_sparsity=0.5, movement_score_init="magnitude"))
    pruner = get_pruner(model)
    for group in pruner.groups[:3]:
        weight = group.members[0].module.weight.detach().abs()
        torch.testing.assert_close(group.score.detach(), weight / weight.mean())
    zeros = apply_pruning(tiny_bert(), PDPConfig(method="movement", target_sparsity=0.5))
    assert all(float(s.detach().abs().sum()) == 0 for s in get_pruner(zeros).score_parameters())


def test_movement_scores_learn_before_pruning_starts(make_args):
    model = tiny_bert()
    config = PDPConfig(method="movement", target_sparsity=0.5, pruning_start=0.5, pruning_end=0.75, harden_at=None)
    trainer = PrunerTrainer(model=model, args=make_args(max_steps=8), train_dataset=text_dataset(), pdp_config=config)
    scores = trainer.pruner.score_parameters()
    seen = {}

    class Spy:
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 3:
                seen["moved"] = all(float(s.detach().abs().sum()) > 0 for s in scores)

    from transformers import TrainerCallback

    trainer.add_callback(type("SpyCallback", (TrainerCallback,), {"on_step_begin": Spy.on_step_begin}))
    trainer.train()
    assert seen["moved"]  # at step 3 nothing is pruned yet, but every score has moved from 0


# -- resume, DDP-free determinism, config ------------------------------------------------------------------------
@pytest.mark.parametrize("method,name", [("smart", "unstructured"), ("smart", "2:4"), ("smart", "mixed"), ("smart", "learned"),
                                         ("movement", "unstructured"), ("movement", "neuron"), ("movement", "learned")])
def test_resume_mid_ramp_is_bit_identical(tmp_path, method, name):
    def run(output_dir, resume=None):
        model = tiny_bert(seed=1)
        config = PDPConfig(method=method, pruning_start=0.1, pruning_end=0.6, harden_at=0.8, threshold_refresh_steps=4,
                           **RESUMED[name])
        args = training_args(output_dir, save_strategy="steps", save_steps=save)
        PrunerTrainer(model=model, args=args, train_dataset=text_dataset(), pdp_config=config).train(resume_from_checkpoint=resume)
        return model

    # The learned distribution re-ranks at exact refreshes (steps 2, 6, 10 here): resume between them, from the
    # checkpoint's budgets.
    save = 7 if name == "learned" else 6
    full = run(tmp_path / "full")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "full" / f"checkpoint-{save}" / "model.safetensors"), framework="pt") as f:
        assert any(k.startswith("pdp_scores.") for k in f.keys())  # the scores travel with the weights
    if method == "smart":
        with safe_open(str(tmp_path / "full" / f"checkpoint-{save}" / "pruning_state.safetensors"), framework="pt") as f:
            assert any(k.startswith("method.") and k.endswith(".lambda") for k in f.keys())
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "full" / f"checkpoint-{save}"))
    for (key, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


def test_cli_export_of_a_mid_ramp_checkpoint_uses_its_learned_scores(tmp_path, capsys):
    from safetensors.torch import load_file

    from pdp_hf.cli import main
    from pdp_hf.injection import PruningScores

    out = tmp_path / "ramp"
    config = PDPConfig(method="smart", target_sparsity=0.8, pruning_start=2, pruning_end=12, harden_at=16)
    PrunerTrainer(model=tiny_bert(), args=training_args(out, save_strategy="steps", save_steps=6),
                  train_dataset=text_dataset(), pdp_config=config).train()
    assert main(["export", str(out / "checkpoint-6"), str(tmp_path / "exp")]) == 0
    saved = load_file(str(out / "checkpoint-6" / "model.safetensors"))
    exported = load_file(str(tmp_path / "exp" / "model.safetensors"))
    assert not [k for k in exported if "pdp_scores" in k]
    for name in ("bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.output.dense"):
        score = saved[f"pdp_scores.scores.{PruningScores.key(name)}"].view(-1)
        zeros = round(0.8 * score.numel())  # export finalizes: the whole budget, pruned by the scores learned so far
        expected = torch.ones_like(score, dtype=torch.bool)
        expected[torch.topk(score, zeros, largest=False).indices] = False  # the lowest learned scores
        assert torch.equal(exported[f"{name}.weight"].view(-1) != 0, expected), name


def test_method_settings_are_validated_by_their_method_only(caplog):
    with pytest.raises(ValueError, match="smart_temperature_end"):
        PDPConfig(method="smart", smart_temperature_end=2.0)
    with pytest.raises(ValueError, match="score_learning_rate"):
        PDPConfig(method="movement", score_learning_rate=0)
    with pytest.raises(ValueError, match="movement_score_init"):
        PDPConfig(method="movement", movement_score_init="uniform")
    with pytest.raises(ValueError, match="sparsity_distribution='learned' is invalid: method 'magnitude' has no learned"):
        PDPConfig(method="magnitude", sparsity_distribution="learned")
    with pytest.raises(ValueError, match="nothing to distribute"):
        PDPConfig(method="smart", granularity="n:m", sparsity_distribution="learned")
    with pytest.raises(ValueError, match="temperature"):
        PDPConfig(method="pdp", temperature=-1)
    with caplog.at_level(logging.WARNING, logger="pdp_hf.config"):
        PDPConfig(method="magnitude", smart_temperature_end=2.0)  # not SMART: not validated, said to be unused
    assert "is a setting of method 'smart'; method='magnitude' does not use it" in caplog.text
    assert PDPConfig(method="smart").method_settings() == {
        "score_learning_rate": 0.01, "smart_temperature_start": 1.0, "smart_temperature_end": 0.01}
    assert PDPConfig(method="magnitude").method_settings() == {}


def test_method_settings_round_trip_through_json_and_the_argument_parser(tmp_path):
    config = PDPConfig(method="smart", smart_temperature_start=0.5, score_learning_rate=0.02)
    config.save_pretrained(tmp_path)
    assert PDPConfig.from_pretrained(tmp_path) == config
    assert json.loads((tmp_path / "pruning_config.json").read_text())["smart_temperature_start"] == 0.5
    (parsed,) = HfArgumentParser(PDPConfig).parse_args_into_dataclasses(
        ["--method", "smart", "--smart_temperature_start", "0.5", "--score_learning_rate", "0.02"])
    assert parsed == config
    movement = PDPConfig(method="movement", movement_score_init="zeros")
    movement.save_pretrained(tmp_path / "movement")
    assert PDPConfig.from_pretrained(tmp_path / "movement") == movement
    (parsed,) = HfArgumentParser(PDPConfig).parse_args_into_dataclasses(["--method", "movement", "--movement_score_init", "zeros"])
    assert parsed == movement


@pytest.mark.parametrize("fused", ["off", "on"])
@pytest.mark.parametrize("granularity, distribution", [("attention=head,ffn=neuron", "uniform"),
                                                       ("unstructured", "uniform"), ("neuron", "learned")])
def test_smart_cold_masks_hold_no_subnormal_values(granularity, distribution, fused):
    """Scores spread as training spreads them, the temperature at its end: sigmoid(s / tau + lambda) goes far below
    1e-38 for the units under the cut. Those masks are exact zeros, so no masked weight is a float32 subnormal (a CPU
    computes with subnormals several times slower), while the scores' gradients stay the soft top-k's."""
    torch.manual_seed(0)
    model = apply_pruning(tiny_bert(layers=3), PDPConfig(
        method="smart", granularity=granularity, sparsity_distribution=distribution, target_sparsity=0.5,
        pruning_start=0, pruning_end=4, harden_at=None, smart_temperature_end=0.002, fused_masks=fused))
    pruner = get_pruner(model)
    pruner.set_total_steps(8)
    for step in range(4):
        pruner.step(step)
    with torch.no_grad():
        for group in pruner.groups:
            group.score.uniform_(0, 2)
    pruner.step(5)
    with torch.no_grad():  # units where sigmoid(s / tau + lambda) is subnormal itself (x = -88: 6e-39), or where
        for group in pruner.groups:  # it is normal but makes the weight subnormal (x = -84: 3e-37 times 0.02)
            lam = float(group.state["lambda"].reshape(-1)[0])
            group.score.view(-1)[0] = (-88.0 - lam) * group.state["tau"]
            group.score.view(-1)[-1] = (-84.0 - lam) * group.state["tau"]
    tiny = torch.finfo(torch.float32).tiny
    raw = [torch.sigmoid(g.score.float() / g.state["tau"] + g.state["lambda"]) for g in pruner.groups]
    assert sum(int(((f > 0) & (f < tiny)).sum()) for f in raw) > 0  # the formula itself gives subnormals here
    model.train()
    for group in pruner.groups:
        for member in group.members:
            weight, _ = pruner.method.train_weight(group, member, member.module)
            assert int(((weight != 0) & (weight.abs() < tiny)).sum()) == 0, member.name
    ids = torch.randint(1, 60, (4, 8))
    model(input_ids=ids, labels=torch.randint(0, 2, (4,))).loss.backward()
    assert all(g.score.grad is not None and bool(torch.isfinite(g.score.grad).all()) for g in pruner.groups)
