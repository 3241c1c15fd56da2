"""Mask math against slow direct references (threshold, soft mask, gradient, hard mask, budgets, schedules)."""

import math

import pytest
import torch

from pdp_hf import PDPConfig
from pdp_hf.injection import global_budgets
from pdp_hf.methods.base import hard_mask_from_scores
from pdp_hf.methods.pdp import pdp_soft_mask, pdp_threshold, relative_tau
from pdp_hf.schedules import ramp_fraction, resolve_step, zeros_at


def reference_threshold(w: torch.Tensor, zeros: int) -> float:
    """Sort all magnitudes; midpoint of the largest pruned and the smallest kept."""
    mags = sorted(abs(float(x)) for x in w.flatten())
    return 0.5 * (mags[zeros - 1] + mags[zeros]) if zeros < len(mags) else mags[-1]


def reference_soft_mask(w: torch.Tensor, t: float, tau: float) -> torch.Tensor:
    """softmax((t^2, w^2) / tau)[1] in float64, shifted for stability: the paper's definition."""
    w2 = w.double().square()
    logits = torch.stack([torch.full_like(w2, t * t), w2], dim=-1) / tau
    return torch.softmax(logits, dim=-1)[..., 1]


@pytest.mark.parametrize("shape,zeros", [((17, 13), 1), ((17, 13), 100), ((17, 13), 220), ((64, 48), 2765), ((5,), 5)])
def test_threshold_matches_sorted_reference(shape, zeros):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(zeros))
    assert float(pdp_threshold(w, zeros)) == pytest.approx(reference_threshold(w, zeros), rel=1e-6)


def test_threshold_with_ties_at_the_cut():
    w = torch.tensor([0.1, 0.2, 0.2, 0.2, 0.5])
    assert float(pdp_threshold(w, 2)) == pytest.approx(0.2)  # largest pruned = smallest kept = 0.2
    assert float(pdp_threshold(w, 4)) == pytest.approx(0.35)


def test_threshold_rejects_out_of_range():
    with pytest.raises(ValueError, match="zeros must be in"):
        pdp_threshold(torch.ones(4), 0)


@pytest.mark.parametrize("tau", [1e-1, 1e-3, 1e-6])
def test_soft_mask_matches_softmax_definition(tau):
    w = torch.randn(40, 30, generator=torch.Generator().manual_seed(1)) * 0.05
    t = pdp_threshold(w, 600)
    got = pdp_soft_mask(w, t, tau)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference_soft_mask(w, float(t), tau), atol=1e-6, rtol=1e-5)


def test_soft_mask_bf16_input_computed_in_float32():
    w = (torch.randn(32, 32, generator=torch.Generator().manual_seed(2)) * 0.05).to(torch.bfloat16)
    t = pdp_threshold(w, 512)
    got = pdp_soft_mask(w, t, 1e-4)
    assert got.dtype == torch.float32
    # Reference from the same bf16 values, computed in float64.
    torch.testing.assert_close(got.double(), reference_soft_mask(w.double(), float(t), 1e-4), atol=1e-6, rtol=1e-5)
    assert torch.isfinite(got).all()


def test_tiny_tau_gives_no_nan():
    w = torch.randn(16, 16, generator=torch.Generator().manual_seed(3))
    t = pdp_threshold(w, 128)
    m = pdp_soft_mask(w, t, 1e-30)
    assert torch.isfinite(m).all() and set(m.unique().tolist()) <= {0.0, 0.5, 1.0}
    assert float(relative_tau(torch.tensor(0.0), 0.05)) > 0  # relative tau never reaches 0


def test_gradient_matches_closed_form():
    """With t held fixed: d(m w)/dw = m + (2 w^2 / tau) m (1 - m)."""
    w = (torch.randn(20, 10, generator=torch.Generator().manual_seed(4)) * 0.1).requires_grad_()
    t, tau = pdp_threshold(w, 120), 1e-3
    (pdp_soft_mask(w, t, tau) * w).sum().backward()
    m = reference_soft_mask(w.detach(), float(t), tau)
    expected = m + (2 * w.detach().double().square() / tau) * m * (1 - m)
    torch.testing.assert_close(w.grad.double(), expected, atol=1e-5, rtol=1e-4)


def test_gradient_matches_finite_differences():
    w = (torch.randn(6, 5, generator=torch.Generator().manual_seed(5)) * 0.1).double()
    t = pdp_threshold(w, 15).double()

    def f(x):
        return (torch.sigmoid((x.square() - t.square()) / 1e-2) * x).sum()

    assert torch.autograd.gradcheck(f, (w.clone().requires_grad_(),))


@pytest.mark.parametrize("zeros", [0, 1, 7, 16])
def test_hard_mask_exact_count_even_with_ties(zeros):
    scores = torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.5, 3.0, 3.0, 3.0, 3.0])
    keep = hard_mask_from_scores(scores, zeros)
    assert int((~keep).sum()) == zeros
    if 0 < zeros < 16:  # every pruned score <= every kept score
        assert scores[~keep].max() <= scores[keep].min()


def test_hard_mask_agrees_with_threshold_when_no_ties():
    w = torch.randn(30, 20, generator=torch.Generator().manual_seed(6))
    t = pdp_threshold(w, 450)
    torch.testing.assert_close(hard_mask_from_scores(w.abs(), 450), w.abs() >= t)


def test_global_budgets_match_one_ranking():
    g = torch.Generator().manual_seed(7)
    layers = {"a": torch.randn(10, 10, generator=g) * 0.1, "b": torch.randn(20, 5, generator=g), "c": torch.randn(7, 3, generator=g)}
    budgets = global_budgets({k: v.abs() for k, v in layers.items()}, 0.6)
    total = sum(v.numel() for v in layers.values())
    assert sum(budgets.values()) == round(0.6 * total)
    # Reference: sort all (magnitude, layer) pairs, count the layer of each of the smallest k.
    ranked = sorted((abs(float(x)), name) for name, v in layers.items() for x in v.flatten())
    counts = {k: 0 for k in layers}
    for _, name in ranked[: round(0.6 * total)]:
        counts[name] += 1
    assert budgets == counts
    assert budgets["a"] > budgets["b"]  # the small-scale layer is pruned harder


def test_schedule_functions():
    assert resolve_step(0.25, 1000) == 250 and resolve_step(300, 1000) == 300 and resolve_step(0.0, 10) == 0
    assert [ramp_fraction(s, 2, 6) for s in range(8)] == [0, 0, 0, 0.25, 0.5, 0.75, 1, 1]
    for s in range(2, 7):  # cubic: Zhu & Gupta with s_i = 0
        p = (s - 2) / 4
        assert ramp_fraction(s, 2, 6, "cubic") == pytest.approx(1 - (1 - p) ** 3)
    assert ramp_fraction(5, 5, 5) == 1.0 and ramp_fraction(4, 5, 5) == 0.0
    assert zeros_at(0.5, 9) == 4 and zeros_at(1.0, 9) == 9 and zeros_at(0.0, 9) == 0
    with pytest.raises(ValueError, match="Unknown sparsity schedule"):
        ramp_fraction(3, 0, 10, "exp")
    assert math.isclose(ramp_fraction(1, 0, 3), 1 / 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_masked_weight_matches_autograd_reference(dtype):
    from pdp_hf.methods.pdp import pdp_masked_weight

    w = (torch.randn(24, 16, generator=torch.Generator().manual_seed(8)) * 0.1).to(dtype).requires_grad_()
    t = pdp_threshold(w, 250)
    tau = torch.tensor(2e-3)
    g = torch.randn(24, 16, generator=torch.Generator().manual_seed(9)).to(dtype)
    (pdp_masked_weight(w, t, tau) * g).sum().backward()
    fused_grad = w.grad.clone()
    w.grad = None
    ref = (pdp_soft_mask(w, t, tau) * w.float()).to(dtype)  # plain autograd through the same formula
    (ref * g).sum().backward()
    torch.testing.assert_close(pdp_masked_weight(w, t, tau), ref)
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    torch.testing.assert_close(fused_grad.float(), w.grad.float(), **tol)
    assert fused_grad.dtype == dtype


def test_sampled_threshold_is_close_and_refresh_is_exact():
    from pdp_hf.selection import SAMPLE_SIZE, sampled_kth_pair

    w = torch.randn(5 * SAMPLE_SIZE, generator=torch.Generator().manual_seed(11)).abs()
    k = int(0.9 * w.numel())
    lo, hi = sampled_kth_pair(w, k)
    rank = int((w <= lo).sum())
    assert abs(rank - k) < 6 * (0.09 / SAMPLE_SIZE) ** 0.5 * w.numel()  # within a few standard errors
    assert lo <= hi

    # In a run with threshold_refresh_steps=3, steps 0, 3, 6 of the ramp select exactly (the reference midpoint
    # from a full sort), the steps between use the sampled estimate (a different value on this matrix).
    from torch import nn

    from pdp_hf import apply_pruning, get_pruner

    model = nn.Sequential(nn.Linear(640, 640, bias=False))
    model = apply_pruning(model, PDPConfig(target_modules=["0"], target_sparsity=0.9, pruning_start=0, pruning_end=2,
                                           harden_at=None, threshold_refresh_steps=3))
    pruner = get_pruner(model)
    pruner.set_total_steps(10)
    ordered = model[0].weight.detach().abs().reshape(-1).sort().values
    for step in range(2, 7):
        pruner.step(step)
        group = pruner.groups[0]
        exact = 0.5 * (ordered[group.zeros - 1] + ordered[group.zeros])
        t = group.state["threshold"]
        if step % 3 == 0:
            assert float(t) == float(exact), step
        else:
            assert float(t) != float(exact) and abs(float(t) - float(exact)) < 0.01 * float(exact), step
