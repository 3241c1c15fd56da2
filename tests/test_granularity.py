"""Structured granularities end to end: N:M, FFN neurons, attention heads, blocks and mixed maps.

Every structural property is checked on the finalized plain model's weights directly (not through pdp_hf's own
report), on tiny BERT, RoBERTa, DistilBERT and ViT, for PDP and magnitude.
"""

import pytest
import torch
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

from pdp_hf import PDPConfig, PrunerTrainer, apply_pruning, finalize_pruning, get_pruner, sparsity_report
from pdp_hf.layers import role_map
from tests.conftest import image_dataset, text_dataset, tiny_bert, tiny_distilbert, tiny_roberta, tiny_vit

MODELS = [(tiny_bert, text_dataset), (tiny_roberta, text_dataset), (tiny_distilbert, text_dataset), (tiny_vit, image_dataset)]
HEADS, HEAD_DIM, FFN = 2, 16, 64  # the tiny models: hidden 32 = 2 heads of 16, intermediate 64
ATTENTION = ("query", "key", "value", "attn_out")

GRANULARITIES = {
    "2:4": dict(granularity="n:m", n_m="2:4"),
    "1:4": dict(granularity="n:m", n_m="1:4"),
    "4:8": dict(granularity="n:m", n_m="4:8"),
    "neuron": dict(granularity="neuron", target_sparsity=0.5),
    "head": dict(granularity="head", target_sparsity=0.5),
    "block": dict(granularity="block", block_size=16, target_sparsity=0.5),
    "mixed": dict(granularity="attention=head,ffn=neuron", target_sparsity=0.5),
    "mixed_nm": dict(granularity="attention=unstructured,ffn=n:m", n_m="1:4", target_sparsity=0.7),
}


def layers_of(model):
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return {i: {r: model.get_submodule(n) for r, n in roles.items()} for i, roles in role_map(model, names).items()}


def pruned_heads(layer) -> list[bool]:
    """Per head: True when its Q/K/V rows, their bias entries and its output columns are all zero. Asserts heads
    are either whole zero or hold no zero row block at all (no partial head)."""
    result = []
    for h in range(HEADS):
        rows = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
        parts = [layer[r].weight[rows] for r in ("query", "key", "value")]
        parts.append(layer["attn_out"].weight[:, rows])
        zero = [bool((p == 0).all()) for p in parts]
        assert all(zero) or not any(zero), f"head {h} partly pruned: {zero}"
        if all(zero):  # a kept head's bias may be 0 (fresh init), a pruned head's must be
            assert all(bool((layer[r].bias[rows] == 0).all()) for r in ("query", "key", "value"))
        result.append(all(zero))
    return result


def pruned_neurons(layer) -> torch.Tensor:
    """Per neuron: True when FFN-in row, its bias entry and FFN-out column are zero; asserts no partial neuron."""
    rows = (layer["ffn_in"].weight == 0).all(1)
    bias = layer["ffn_in"].bias == 0
    cols = (layer["ffn_out"].weight == 0).all(0)
    assert bool(bias[rows].all()) and torch.equal(rows, cols)  # a kept neuron's bias may be 0 (fresh init)
    assert int((layer["ffn_in"].weight[~rows] == 0).sum()) == 0  # kept neurons are untouched
    return rows


def check_nm(weight, n, m):
    nonzeros = (weight != 0).view(weight.shape[0], -1, m).sum(-1)
    assert bool((nonzeros == n).all()), nonzeros.unique()


def check_blocks(weight, b, expected):
    tiles = (weight == 0).view(weight.shape[0] // b, b, weight.shape[1] // b, b)
    zero_tiles = tiles.all(dim=3).all(dim=1)
    any_zero = tiles.any(dim=3).any(dim=1)
    assert torch.equal(zero_tiles, any_zero)  # a tile is all zero or holds no zero
    assert int(zero_tiles.sum()) == expected


def check_structure(model, name):
    spec = GRANULARITIES[name]
    for layer in layers_of(model).values():
        if name in ("2:4", "1:4", "4:8"):
            n, m = (int(x) for x in spec["n_m"].split(":"))
            for module in layer.values():
                check_nm(module.weight, n, m)
        if name in ("neuron", "mixed"):
            assert int(pruned_neurons(layer).sum()) == FFN // 2
        if name in ("head", "mixed"):
            assert sum(pruned_heads(layer)) == HEADS // 2
        if name == "head":
            assert not any(int((layer[r].weight == 0).sum()) for r in ("ffn_in", "ffn_out"))
        if name == "neuron":
            assert not any(int((layer[r].weight == 0).sum()) for r in ATTENTION)
        if name == "block":
            for module in layer.values():
                rows, cols = module.weight.shape
                check_blocks(module.weight, 16, round(0.5 * (rows // 16) * (cols // 16)))
        if name == "mixed_nm":
            for r in ("ffn_in", "ffn_out"):
                check_nm(layer[r].weight, 1, 4)
            for r in ATTENTION:
                assert int((layer[r].weight == 0).sum()) == round(0.7 * layer[r].weight.numel())


@pytest.mark.parametrize("factory,dataset", MODELS, ids=lambda f: getattr(f, "__name__", ""))
@pytest.mark.parametrize("name", list(GRANULARITIES))
@pytest.mark.parametrize("method", ["pdp", "magnitude"])
def test_finalized_structure_is_exact(factory, dataset, name, method, make_args):
    model = factory()
    config = PDPConfig(method=method, pruning_start=0.1, pruning_end=0.5, harden_at=0.75, **GRANULARITIES[name])
    PrunerTrainer(model=model, args=make_args(max_steps=12), train_dataset=dataset(), pdp_config=config).train()
    assert get_pruner(model) is None
    check_structure(model, name)
    for group, row in sparsity_report(model, config=config)["units"].items():
        expected = row["units"] if row["granularity"].count(":") else round(config.target_sparsity * row["units"])
        assert row["pruned_units"] == expected, group  # N:M: every group of M holds N; else the uniform budget


@pytest.mark.parametrize("granularity,units", [("neuron", 2 * FFN), ("head", 2 * HEADS), ("block", None)])
def test_global_distribution_sums_to_budget(granularity, units, make_args):
    model = tiny_bert()
    config = PDPConfig(granularity=granularity, block_size=16, target_sparsity=0.5, sparsity_distribution="global", harden_at=None)
    PrunerTrainer(model=model, args=make_args(max_steps=12), train_dataset=text_dataset(), pdp_config=config).train()
    rows = sparsity_report(model, config=config)["units"]
    total = sum(r["units"] for r in rows.values())
    assert units is None or total == units
    assert sum(r["pruned_units"] for r in rows.values()) == round(0.5 * total)


def test_uniform_unit_counts_during_training():
    """Mid-ramp, the hard view holds exactly zeros_at(fraction, round(target * units)) units in every group."""
    model = apply_pruning(tiny_bert(layers=3), PDPConfig(granularity="neuron", target_sparsity=0.75, pruning_start=0, pruning_end=4))
    pruner = get_pruner(model)
    pruner.set_total_steps(8)
    pruner.step(2)  # half way: 24 of the final 48 neurons per layer
    rows = sparsity_report(model)["units"]
    assert [r["pruned_units"] for r in rows.values()] == [24, 24, 24]
    assert sparsity_report(model)["total"]["sparsity"] == pytest.approx(24 / 64)


def test_global_neurons_rank_across_layers():
    """A layer whose neurons are all smaller than the others' loses the most (per-layer budgets differ)."""
    model = tiny_bert(layers=2)
    model.bert.encoder.layer[1].intermediate.dense.weight.data *= 0.01
    model.bert.encoder.layer[1].output.dense.weight.data *= 0.01
    model = apply_pruning(model, PDPConfig(granularity="neuron", target_sparsity=0.5, sparsity_distribution="global"))
    budgets = get_pruner(model).compute_budgets()
    assert budgets == {"bert.encoder.layer.0:neurons": 0, "bert.encoder.layer.1:neurons": 64}


def test_head_and_neuron_scores_are_squared_norms_over_all_slices():
    model = apply_pruning(tiny_bert(), PDPConfig(granularity="attention=head,ffn=neuron"))
    heads, neurons = get_pruner(model).groups[:2]
    layer = model.bert.encoder.layer[0]
    q, k, v, o = (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value, layer.attention.output.dense)
    expected = [
        sum(float(w.detach()[h * 16:(h + 1) * 16].square().sum()) for w in (q.weight, k.weight, v.weight))
        + float(o.weight.detach()[:, h * 16:(h + 1) * 16].square().sum())
        for h in range(2)
    ]
    assert heads.squared_norms().tolist() == pytest.approx(expected, rel=1e-6)
    fin, fout = layer.intermediate.dense.weight.detach(), layer.output.dense.weight.detach()
    expected = [float(fin[i].square().sum() + fout[:, i].square().sum()) for i in range(64)]
    assert neurons.squared_norms().tolist() == pytest.approx(expected, rel=1e-6)


def test_structured_pdp_soft_mask_and_gradient_match_the_formula():
    """Neuron PDP: forward = W * sigmoid((||u||^2 - t^2)/tau) per neuron, gradient through the norm (autograd of a
    slow, written-out reference)."""
    model = apply_pruning(tiny_bert(), PDPConfig(granularity="neuron", target_sparsity=0.5, pruning_start=0, pruning_end=2))
    pruner = get_pruner(model)
    pruner.set_total_steps(4)
    pruner.step(2)
    group = pruner.groups[0]
    fin, fout = group.members[0].module, group.members[1].module
    t, tau = group.state["threshold"], group.state["tau"]
    norms = (fin.weight.detach().square().sum(1) + fout.weight.detach().square().sum(0)).sqrt()
    ordered = norms.sort().values
    assert float(t) == pytest.approx(float(0.5 * (ordered[31] + ordered[32])), rel=1e-6)
    assert float(tau) == pytest.approx(0.05 * float(t) ** 2, rel=1e-5)

    w_in = fin.weight.detach().clone().requires_grad_(True)
    w_out = fout.weight.detach().clone().requires_grad_(True)
    mask = torch.sigmoid((w_in.square().sum(1) + w_out.square().sum(0) - t**2) / tau)
    ref = (w_in * mask[:, None]).sum() * 0.3 + (w_out * mask[None, :]).square().sum()
    ref.backward()
    model.train()
    got_in, bias = fin.pruned_weight_and_bias()
    got_out, _ = fout.pruned_weight_and_bias()
    torch.testing.assert_close(bias, fin.bias * mask.detach())
    (got_in.sum() * 0.3 + got_out.square().sum()).backward()
    torch.testing.assert_close(fin.weight.grad, w_in.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fout.weight.grad, w_out.grad, rtol=1e-5, atol=1e-7)


def test_nm_threshold_is_midpoint_of_nth_and_next_largest():
    from pdp_hf.methods.pdp import nm_threshold

    scores = torch.rand(5, 6, 4)
    t = nm_threshold(scores, 2, 30)
    for r in range(5):
        for g in range(6):
            values = sorted(scores[r, g].tolist(), reverse=True)
            assert float(t[r, g, 0]) == pytest.approx(0.5 * (values[1] + values[2]))


def test_nm_ramp_prunes_cheapest_groups_first():
    from pdp_hf.methods.base import nm_hard_mask

    scores = torch.tensor([[[1.0, 1.0, 0.9, 0.9], [1.0, 1.0, 0.1, 0.1], [1.0, 1.0, 0.5, 0.5]]])
    keep = nm_hard_mask(scores, 2, 1)
    assert keep.sum(-1).view(-1).tolist() == [4, 2, 4]
    assert nm_hard_mask(scores, 2, 3).sum(-1).view(-1).tolist() == [2, 2, 2]


@pytest.mark.parametrize(
    "name,overrides",
    [("2:4", {}), ("neuron", {}), ("head", {}), ("block", {}), ("mixed", {}), ("mixed", {"sparsity_distribution": "global"})],
)
def test_resume_mid_ramp_is_bit_identical(tmp_path, name, overrides):
    from tests.conftest import training_args

    def run(output_dir, resume=None):
        model = tiny_bert(seed=1)
        config = PDPConfig(pruning_start=0.1, pruning_end=0.6, harden_at=0.8, threshold_refresh_steps=4, **GRANULARITIES[name], **overrides)
        args = training_args(output_dir, save_strategy="steps", save_steps=6)
        PrunerTrainer(model=model, args=args, train_dataset=text_dataset(), pdp_config=config).train(resume_from_checkpoint=resume)
        return model

    full = run(tmp_path / "full")
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-6"))
    for (key, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)
    if not overrides:  # global budgets differ by layer; the per-layer counts hold for uniform
        check_structure(resumed, name)


@pytest.mark.parametrize("factory,dataset", MODELS, ids=lambda f: getattr(f, "__name__", ""))
@pytest.mark.parametrize("name", ["2:4", "neuron", "head", "block", "mixed"])
def test_export_loads_in_plain_transformers_with_equal_logits(factory, dataset, name, make_args, tmp_path):
    model = factory()
    trainer = PrunerTrainer(model=model, args=make_args(max_steps=8), train_dataset=dataset(),
                            pdp_config=PDPConfig(**GRANULARITIES[name]))
    trainer.train()
    folder = trainer.export_pruned(str(tmp_path / "export"))
    auto = AutoModelForImageClassification if factory is tiny_vit else AutoModelForSequenceClassification
    loaded = auto.from_pretrained(folder).eval()
    inputs = {"pixel_values": torch.randn(3, 1, 8, 8)} if factory is tiny_vit else {"input_ids": torch.randint(1, 60, (3, 8))}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model.eval()(**inputs).logits, rtol=0, atol=1e-5)
    check_structure(loaded, name)
    card = open(f"{folder}/README.md", encoding="utf-8").read()
    if name == "2:4":
        assert "| granularity | n:m (`n_m`=2:4) |" in card
    if name == "mixed":
        assert "| granularity | attention=head,ffn=neuron |" in card and "| unit group | granularity | units | pruned units |" in card


def test_structured_granularity_needs_every_member(make_args):
    with pytest.raises(ValueError, match="layer 0 targets lack \\['key', 'value', 'attn_out'\\]"):
        apply_pruning(tiny_bert(), PDPConfig(granularity="head", target_modules=["layer.0.attention.self.query"]))
    with pytest.raises(ValueError, match="'neuron' covers roles \\['ffn_gate', 'ffn_in', 'ffn_out'\\]"):
        apply_pruning(tiny_bert(), PDPConfig(granularity="neuron", target_modules=["query", "intermediate.dense", "output.dense"]))


def test_shapes_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="32x32 weight, which 24x24 blocks do not tile"):
        apply_pruning(tiny_bert(), PDPConfig(granularity="block", block_size=24))
    with pytest.raises(ValueError, match="32 input features, not a multiple of M=5"):
        apply_pruning(tiny_bert(), PDPConfig(granularity="n:m", n_m="2:5"))


def test_uncovered_targets_stay_dense_or_are_refused_when_explicit():
    model = apply_pruning(tiny_bert(), PDPConfig(granularity="attention=head"))
    assert all(".attention." in name for name in get_pruner(model).modules) and len(get_pruner(model).modules) == 8
    model = apply_pruning(tiny_bert(), PDPConfig(granularity="neuron"))
    assert len(get_pruner(model).modules) == 4
    with pytest.raises(ValueError, match="covers no granularity for 'bert.encoder.layer.0.intermediate.dense'"):
        apply_pruning(tiny_bert(), PDPConfig(granularity="attention=head", target_modules=["query", "key", "value", "attention.output.dense", "intermediate.dense"]))
    from pdp_hf.units import build_unit_groups

    with pytest.raises(ValueError, match="covers none of the targets"):
        build_unit_groups(tiny_bert(), ["bert.encoder.layer.0.intermediate.dense"], PDPConfig(granularity="head"), explicit=False)


def test_nm_target_sparsity_is_implied():
    assert PDPConfig(granularity="n:m", n_m="1:4").target_sparsity == 0.75
    assert PDPConfig(granularity="n:m", n_m="2:4", target_sparsity=0.5).target_sparsity == 0.5
    assert PDPConfig().target_sparsity == 0.9
    config = PDPConfig(granularity="attention=head,ffn=neuron", target_sparsity=0.3)
    assert PDPConfig.from_dict(config.to_dict()) == config


def test_finalize_leaves_plain_model_for_structured():
    model = apply_pruning(tiny_vit(), PDPConfig(granularity="attention=head,ffn=neuron", target_sparsity=0.5))
    finalize_pruning(model)
    reference = tiny_vit()
    assert list(model.state_dict()) == list(reference.state_dict())
    assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert not any(k.startswith("pdp_") for m in model.modules() for k in vars(m))
    check_structure(model, "mixed")


def test_structured_export_loads_where_pdp_hf_cannot_be_imported(make_args, tmp_path):
    from tests.test_export import load_elsewhere

    model = tiny_bert()
    config = PDPConfig(**GRANULARITIES["mixed"])
    trainer = PrunerTrainer(model=model, args=make_args(max_steps=8), train_dataset=text_dataset(), pdp_config=config)
    trainer.train()
    folder = trainer.export_pruned(str(tmp_path / "export"))
    inputs = {"input_ids": torch.randint(1, 60, (3, 8))}
    out = load_elsewhere(folder, inputs, "AutoModelForSequenceClassification", tmp_path)
    assert not out["pdp_loaded"]
    with torch.no_grad():
        torch.testing.assert_close(out["logits"], model.eval()(**inputs).logits, rtol=0, atol=1e-5)
    ffn_in = "bert.encoder.layer.0.intermediate.dense"
    assert out["zeros"][ffn_in] == 32 * 32  # 32 of 64 neurons, rows of 32 weights


@pytest.mark.parametrize("method", ["pdp", "magnitude"])
def test_pruning_state_is_not_in_module_buffers(method):
    """DDP broadcasts module buffers from rank 0 at every forward; pruning state must not be among them (each
    rank computes it from its own identical weights), during the ramp and after hardening."""
    reference = [name for name, _ in tiny_bert().named_buffers()]
    model = apply_pruning(tiny_bert(), PDPConfig(method=method, granularity="attention=head,ffn=unstructured",
                                                 target_sparsity=0.5, pruning_start=0, pruning_end=2, harden_at=3))
    pruner = get_pruner(model)
    pruner.set_total_steps(4)
    for step in range(4):
        pruner.step(step)
        assert [name for name, _ in model.named_buffers()] == reference
    assert pruner.hardened


def test_data_parallel_replica_uses_its_own_weights():
    """nn.DataParallel runs replicas that share the original's attributes: the forward must read the replica's
    weights (here zeroed), not the original module's."""
    model = apply_pruning(tiny_bert(), PDPConfig(target_sparsity=0.5, pruning_start=0, pruning_end=2))
    pruner = get_pruner(model)
    pruner.set_total_steps(4)
    pruner.step(1)
    layer = model.bert.encoder.layer[0].intermediate.dense
    replica = layer._replicate_for_data_parallel()
    replica.weight = torch.nn.Parameter(torch.zeros_like(layer.weight))
    replica.bias = torch.nn.Parameter(torch.zeros_like(layer.bias))
    x = torch.randn(3, 32)
    for mode in (True, False):
        replica.train(mode)
        with torch.no_grad():
            assert float(replica(x).abs().sum()) == 0.0 and float(layer.train(mode)(x).abs().sum()) > 0
    pruner.harden()
    with torch.no_grad():
        assert float(replica(x).abs().sum()) == 0.0


def test_data_parallel_refused_for_multi_module_units(make_args):
    trainer = PrunerTrainer(model=tiny_bert(), args=make_args(), train_dataset=text_dataset(),
                            pdp_config=PDPConfig(granularity="neuron", target_sparsity=0.5))
    trainer.args._n_gpu = 2  # what Trainer records when one process sees two GPUs (nn.DataParallel)
    with pytest.raises(NotImplementedError, match="granularity 'neuron' does not support.*torchrun"):
        trainer._refuse_data_parallel_for_structured()
    unstructured = PrunerTrainer(model=tiny_bert(), args=make_args(), train_dataset=text_dataset(), pdp_config=PDPConfig())
    unstructured.args._n_gpu = 2
    unstructured._refuse_data_parallel_for_structured()  # per-matrix units are fine


@pytest.mark.parametrize("method", ["pdp", "magnitude"])
def test_mask_state_follows_the_model_to_another_device(method):
    """State is not in buffers, so `.to()` moves it explicitly (the meta device stands in for a GPU here)."""
    model = apply_pruning(tiny_bert(), PDPConfig(method=method, granularity="attention=head,ffn=n:m", target_sparsity=0.5,
                                                 pruning_start=0, pruning_end=4))
    pruner = get_pruner(model)
    pruner.set_total_steps(8)
    pruner.step(2)
    import copy

    moved = copy.deepcopy(model).to("meta")
    tensors = [v for g in get_pruner(moved).groups for v in g.state.values() if isinstance(v, torch.Tensor)]
    assert tensors and all(t.device.type == "meta" for t in tensors)
    pruner.harden()
    moved = copy.deepcopy(model).to("meta")
    assert all(g.hard_mask.device.type == "meta" for g in get_pruner(moved).groups)
    model.to(torch.float64)  # a dtype cast leaves the masks boolean
    assert all(g.hard_mask.dtype == torch.bool for g in pruner.groups)


def test_nm_groups_not_yet_pruned_are_untouched_in_training():
    """Mid-ramp, N:M groups that are not selected yet keep mask 1 exactly (absolute tau included)."""
    model = apply_pruning(tiny_bert(), PDPConfig(granularity="n:m", temperature=0.05, temperature_mode="absolute",
                                                 pruning_start=0, pruning_end=4))
    pruner = get_pruner(model)
    pruner.set_total_steps(8)
    pruner.step(1)  # a quarter of the groups
    layer = model.bert.encoder.layer[0].intermediate.dense
    group = layer.pdp_group
    selected = group.state["selected"]
    assert 0 < int(selected.sum()) < selected.numel()
    weight, _ = layer.train().pruned_weight_and_bias()
    untouched = (~selected).expand(group.unit_shape).reshape(layer.weight.shape)
    assert torch.equal(weight[untouched], layer.weight[untouched])


def test_role_map_with_impossible_kinds_refused():
    with pytest.raises(ValueError, match="'neuron' units do not exist in the attention layers"):
        PDPConfig(granularity="attention=neuron,ffn=neuron")
    with pytest.raises(ValueError, match="'head' units do not exist in the ffn layers"):
        PDPConfig(granularity="attention=head,ffn=head")


def test_structured_mask_is_computed_once_per_forward_and_survives_accumulation(monkeypatch):
    """Heads: one soft-mask computation per layer per forward (not one per Q/K/V/out); two micro-batches without an
    optimizer step in between give twice the gradient of one; a deepcopy between forward and backward works."""
    import copy

    from pdp_hf.methods.pdp import PDPMethod

    model = apply_pruning(tiny_bert(), PDPConfig(granularity="attention=head,ffn=neuron", target_sparsity=0.5,
                                                 pruning_start=0, pruning_end=2))
    pruner = get_pruner(model)
    pruner.set_total_steps(4)
    pruner.step(2)  # full budgets in force (one head of two per layer), soft masks
    calls = []
    original = PDPMethod.soft_mask
    monkeypatch.setattr(PDPMethod, "soft_mask", lambda self, group: calls.append(group.name) or original(self, group))
    model.train()
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(1, 60, (4, 8)), "labels": torch.tensor([0, 1, 0, 1])}
    model.eval()  # no dropout for the comparison; the targeted layers go back to training mode (soft masks)
    for module in pruner.modules.values():
        module.train()
    loss = model(**batch).loss
    assert sorted(calls) == sorted(g.name for g in pruner.groups)  # once per group
    copy.deepcopy(model)  # nothing with an autograd graph is left in the groups
    loss.backward()
    once = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model(**batch).loss.backward()
    model(**batch).loss.backward()
    for name, grad in once.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, 2 * grad, rtol=1e-5, atol=1e-6)
