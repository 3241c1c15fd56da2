"""The whole model's masks at once (pdp_hf.fused): the same thresholds, masks and trained weights as matrix by matrix,
bit for bit in fp32 on the CPU, with a number of extra operators per training step that does not grow with depth."""

import copy

import pytest
import torch

from pdp_hf import PDPConfig, apply_pruning, finalize_pruning, get_pruner
from pdp_hf import fused as fused_module
from pdp_hf.fused import before_forward, kth_pairs, select_pairs
from pdp_hf.selection import SAMPLE_SIZE, kth_smallest_pair, sampled_kth_pair
from pdp_hf.topk import solve_lambda
from tests.conftest import text_dataset, tiny_bert
from tests.test_compare_methods import load_benchmark


def _matrices(count, rows, cols, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(count, rows, cols, generator=g)
    return w.round() if ties else w  # integer values: long runs of equal |w| at every cut


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("rows,cols", [(24, 40), (520, 520)])  # direct selection; sampled (over 4 x 65,536 entries)
@pytest.mark.parametrize("same_k", [True, False])
def test_selection_of_a_stack_equals_the_per_matrix_selection(rows, cols, ties, same_k):
    stacked = _matrices(4, rows, cols, ties=ties)
    n = rows * cols
    ks = [n // 2] * 4 if same_k else [1, n // 3, n // 2, n - 1]
    for exact in (False, True):
        pairs = select_pairs(stacked, ks, exact)
        if exact and n > 4 * SAMPLE_SIZE:
            assert pairs is None  # only the bracketed per-matrix selection is exact there
            continue
        for i, k in enumerate(ks):
            flat = stacked[i].reshape(-1)
            one = kth_smallest_pair(flat.abs(), k) if exact else sampled_kth_pair(flat, k, absolute=True)
            assert pairs[0][i].item() == one[0].item() and pairs[1][i].item() == one[1].item(), (i, k, exact)


@pytest.mark.parametrize("ties", [False, True])
def test_sampled_pairs_gathered_matrix_by_matrix_equal_the_per_matrix_selection(ties):
    """The CPU path (no stacked weights): each matrix's sample gathered on its own, one selection along the rows,
    the values `sampled_kth_pair` gives matrix by matrix and `select_pairs` gives from the stack."""
    from types import SimpleNamespace

    stacked = _matrices(3, 520, 520, ties=ties)
    groups = [SimpleNamespace(kind="unstructured", weight=w) for w in stacked]
    n = 520 * 520
    for ks in ([n // 2] * 3, [1, n // 3, n - 1]):
        pairs = fused_module.sampled_weight_pairs(groups, ks)
        stack = select_pairs(stacked, ks, exact=False)
        for i, k in enumerate(ks):
            one = sampled_kth_pair(stacked[i].reshape(-1), k, absolute=True)
            assert (pairs[0][i].item(), pairs[1][i].item()) == (one[0].item(), one[1].item()), (i, k)
            assert (stack[0][i].item(), stack[1][i].item()) == (one[0].item(), one[1].item()), (i, k)
    small = [SimpleNamespace(kind="unstructured", weight=torch.randn(24, 40)) for _ in range(2)]
    assert fused_module.sampled_weight_pairs(small, [10, 10]) is None  # direct selection there, per matrix
    assert fused_module.sampled_weight_pairs([SimpleNamespace(kind="neuron", weight=w) for w in stacked], [9, 9]) is None


def test_cpu_steps_select_sampled_thresholds_once_per_shape_class(monkeypatch):
    """Masks group by group (the CPU default): between exact refreshes PDP takes the thresholds of same-shape
    matrices from one selection (3 classes: Q/K/V/attention-out, FFN in, FFN out), not one per matrix (12), with
    the thresholds of the group-by-group selection."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)  # hidden 576: every matrix is sampled (over 4 x 65,536 entries)
    model = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=576, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=1152, num_labels=2))
    config = PDPConfig(target_sparsity=0.5, pruning_start=0, pruning_end=10, harden_at=None, fused_masks="off")
    pruner = get_pruner(apply_pruning(model, config))
    pruner.set_total_steps(12)
    pruner.step(0)
    selections = []
    kthvalue = torch.kthvalue
    monkeypatch.setattr(torch, "kthvalue", lambda *a, **k: selections.append(1) or kthvalue(*a, **k))
    pruner.step(5)  # between refreshes (every 10 steps)
    assert len(pruner.groups) == 12 and len(selections) == 3
    for group in pruner.groups:
        zeros = group.zeros
        one = sampled_kth_pair(group.weight.detach().reshape(-1), zeros, absolute=True)
        assert group.state["threshold"].item() == (0.5 * (one[0] + one[1])).item(), group.name


def test_kth_pairs_keep_the_nan_rule_of_the_direct_selection():
    rows = torch.tensor([[0.5, float("nan"), 0.25, 0.125], [0.5, 0.375, 0.25, 0.125]])
    kth, second = kth_pairs(rows, [2, 2])
    assert second[0].isnan() and kth[1].item() == 0.25 and second[1].item() == 0.375


def _train(method, granularity, distribution, fuse, kernel="eager", layers=4, steps=10, dtype=torch.float32):
    """Weights after `steps` AdamW steps through ramp (2..6), hardening (8) and fine-tuning, fused or not."""
    model = tiny_bert(seed=3, layers=layers).to(dtype)
    nm = granularity == "2:4"
    config = PDPConfig(method=method, granularity="n:m" if nm else granularity, n_m="2:4", block_size=8,
                       sparsity_distribution=distribution, target_sparsity=None if nm else 0.5, pruning_start=2,
                       pruning_end=6, harden_at=8, threshold_refresh_steps=3, mask_kernel=kernel,
                       fused_masks="on" if fuse else "off")
    pruner = get_pruner(apply_pruning(model, config))
    params = [p for n, p in model.named_parameters() if not n.startswith("pdp_scores.")]
    optimizer = torch.optim.AdamW([{"params": params}, *pruner.optimizer_param_groups()], lr=1e-2)
    pruner.set_total_steps(steps)
    pruner.set_optimizer(optimizer)
    data = text_dataset(16, seed=1)
    model.train()
    for step in range(steps):
        pruner.step(step)
        rows = slice(8 * (step % 2), 8 * (step % 2) + 8)
        model(input_ids=torch.tensor(data["input_ids"][rows]), labels=torch.tensor(data["labels"][rows])).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return {k: v.clone() for k, v in finalize_pruning(model).state_dict().items()}


@pytest.mark.parametrize("method,granularity,distribution", [
    ("pdp", "unstructured", "uniform"), ("pdp", "unstructured", "global"), ("magnitude", "unstructured", "uniform"),
    ("magnitude", "unstructured", "global"), ("smart", "unstructured", "uniform"), ("smart", "unstructured", "global"),
    ("movement", "unstructured", "uniform"), ("movement", "unstructured", "global"),
    *[(method, "attention=head,ffn=neuron", distribution) for method in ("pdp", "smart", "movement", "magnitude")
      for distribution in ("uniform", "global")],
    ("smart", "attention=head,ffn=neuron", "learned"), ("pdp", "block", "uniform"), ("smart", "block", "global"),  # per group
    ("movement", "neuron", "learned"), ("magnitude", "head", "global"), ("pdp", "2:4", "uniform"),
])
def test_fused_training_is_bit_identical_to_per_matrix(method, granularity, distribution):
    fused = _train(method, granularity, distribution, True)
    plain = _train(method, granularity, distribution, False)
    for key, value in plain.items():  # bytes, so that even the sign of a zero counts
        assert value.numpy().tobytes() == fused[key].numpy().tobytes(), key


@pytest.mark.parametrize("method,granularity", [("pdp", "unstructured"), ("smart", "attention=head,ffn=neuron"),
                                                ("movement", "attention=head,ffn=neuron")])
def test_fused_training_of_a_bfloat16_model_is_bit_identical(method, granularity):
    fused = _train(method, granularity, "uniform", True, dtype=torch.bfloat16)
    plain = _train(method, granularity, "uniform", False, dtype=torch.bfloat16)
    for key, value in plain.items():
        assert value.view(torch.int16).numpy().tobytes() == fused[key].view(torch.int16).numpy().tobytes(), key


def test_fused_compiled_kernels_equal_the_per_matrix_compiled_kernels():
    fused = _train("pdp", "unstructured", "uniform", True, kernel="compiled", steps=8)
    plain = _train("pdp", "unstructured", "uniform", False, kernel="compiled", steps=8)
    for key, value in plain.items():
        assert torch.equal(value, fused[key]), key


def _operators(method, layers, phase, granularity="unstructured"):
    return load_benchmark("benchmark_training").count_step_operators(method, layers, phase, granularity=granularity)


@pytest.mark.parametrize("granularity", ["unstructured", "attention=head,ffn=neuron"])
@pytest.mark.parametrize("phase", ["ramp", "hardened"])
@pytest.mark.parametrize("method", ["pdp", "smart", "movement", "magnitude"])
def test_extra_operators_per_step_do_not_grow_with_depth(method, phase, granularity):
    dense = {n: _operators(None, n, phase) for n in (2, 4)}
    extra = {n: _operators(method, n, phase, granularity) - dense[n] for n in (2, 4)}
    assert extra[2] == extra[4], extra
    assert dense[4] > dense[2] and extra[2] > 0  # the count sees depth, and the masks


def test_fused_path_is_taken_and_dropped_after_the_forward():
    model = apply_pruning(tiny_bert(layers=3), PDPConfig(target_sparsity=0.5, pruning_start=0, pruning_end=4,
                                                         mask_kernel="eager", fused_masks="on"))
    pruner = get_pruner(model)
    pruner.set_total_steps(8)
    pruner.step(2)
    model.train()
    before_forward(model, ())
    assert all(g._fused is not None for g in pruner.groups)
    model(input_ids=torch.tensor(text_dataset(4)["input_ids"]))
    assert all(g._fused is None for g in pruner.groups)  # only autograd holds the masked weights now


def test_stale_fused_weights_are_never_used_in_eval_or_after_a_weight_change():
    model = apply_pruning(tiny_bert(layers=2), PDPConfig(target_sparsity=0.5, pruning_start=0, pruning_end=4,
                                                         mask_kernel="eager", fused_masks="on"))
    pruner = get_pruner(model)
    pruner.set_total_steps(8)
    pruner.step(2)
    ids = torch.tensor(text_dataset(4)["input_ids"])
    model.eval()
    expected = model(input_ids=ids).logits
    model.train()
    before_forward(model, ())  # as if a training forward had stopped half-way
    model.eval()
    assert torch.equal(model(input_ids=ids).logits, expected)
    model.train()
    before_forward(model, ())
    with torch.no_grad():
        for module in pruner.modules.values():
            module.weight.mul_(0.5)  # a new version: the fused values are out of date
    module = next(iter(pruner.modules.values()))
    weight, _ = module.pruned_weight_and_bias()
    assert not torch.equal(weight, module.pdp_group._fused[module.pdp_member.name][0])


def test_gradient_checkpointing_and_copies_take_their_own_paths():
    config = PDPConfig(target_sparsity=0.5, pruning_start=0, pruning_end=4, mask_kernel="eager", fused_masks="on")
    data = text_dataset(8)
    batch = {"input_ids": torch.tensor(data["input_ids"]), "labels": torch.tensor(data["labels"])}
    grads = {}
    for checkpointing in (False, True):
        model = apply_pruning(tiny_bert(seed=2, layers=3), config)
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        pruner = get_pruner(model)
        pruner.set_total_steps(8)
        pruner.step(2)
        model.train()
        model(**batch).loss.backward()
        grads[checkpointing] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, grad in grads[False].items():
        assert torch.equal(grad, grads[True][name]), name
    copied = copy.deepcopy(model)
    copied.activation_checkpointing_disable()
    assert fused_module.fusing_allowed(copied, get_pruner(copied)) and not fused_module.fusing_allowed(model, get_pruner(model))
    assert not fused_module.owns(get_pruner(model), copied)  # an nn.DataParallel replica is not its pruner's model


def test_auto_fuses_off_the_cpu_only_and_off_never():
    model = apply_pruning(tiny_bert(layers=2), PDPConfig(target_sparsity=0.5))
    pruner = get_pruner(model)
    model.train()
    assert pruner.config.fused_masks == "auto" and not fused_module.fusing_allowed(model, pruner)  # the CPU
    pruner.config.fused_masks = "on"
    assert fused_module.fusing_allowed(model, pruner)
    model.eval()
    assert not fused_module.fusing_allowed(model, pruner)
    model.train()
    with torch.no_grad():
        assert not fused_module.fusing_allowed(model, pruner)
    pruner.config.fused_masks = "off"
    assert not fused_module.fusing_allowed(model, pruner)
    with pytest.raises(ValueError, match="fused_masks"):
        PDPConfig(fused_masks="yes")


def test_finalize_removes_the_hooks():
    model = apply_pruning(tiny_bert(), PDPConfig(target_sparsity=0.5))
    hooks = (fused_module.before_forward, fused_module.after_forward)
    assert sum(fn in hooks for fn in [*model._forward_pre_hooks.values(), *model._forward_hooks.values()]) == 2
    finalize_pruning(model)
    assert not any(fn in hooks for fn in [*model._forward_pre_hooks.values(), *model._forward_hooks.values()])


def test_independent_rows_get_the_lambda_each_row_gets_alone():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 300, generator=g) * torch.tensor([[0.1], [1.0], [3.0], [0.5]])
    kept = torch.tensor([30.0, 150.0, 200.0, 299.0])
    init = torch.tensor([[float("nan")], [0.3], [float("nan")], [-1.0]])  # NaN: no warm start for that row
    lam = solve_lambda(scores, kept, 0.05, init=init, dtype=torch.float32, independent_rows=True)
    for i in range(4):
        alone = solve_lambda(scores[i : i + 1], int(kept[i]), 0.05, init=None if init[i].isnan() else init[i : i + 1],
                             dtype=torch.float32)
        assert lam[i].item() == alone.item(), i
