"""Differentiable top-k (SMART's mask): the constraint, the hard limit, and the implicit gradient against finite
differences of the whole function (lambda re-solved at every perturbed point)."""

import pytest
import torch

from pdp_hf.topk import soft_topk, solve_lambda


def test_rows_sum_to_k_and_order_is_kept():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 40, generator=g)
    k = torch.tensor([1, 5, 20, 35, 39])
    f = soft_topk(scores, k, tau=0.3)
    torch.testing.assert_close(f.sum(-1), k.float(), rtol=0, atol=1e-4)
    assert bool(((f > 0) & (f < 1)).all())
    order = scores.argsort(-1)
    assert bool((f.gather(-1, order).diff(dim=-1) >= 0).all())  # a larger score never gets a smaller mask


@pytest.mark.parametrize("tau", [1e-4, 1e-2, 1.0, 100.0])
def test_lambda_solves_the_constraint_at_any_temperature(tau):
    scores = torch.randn(3, 1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lam = solve_lambda(scores, 300, tau)
    counts = torch.sigmoid(scores / tau + lam).sum(-1)
    torch.testing.assert_close(counts, torch.full((3,), 300.0, dtype=torch.float64), rtol=0, atol=1e-3)


@pytest.mark.parametrize("tau", [1e-3, 1.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_lambda_for_a_list_of_parts_is_the_lambda_of_their_concatenation(tau, dtype):
    g = torch.Generator().manual_seed(3)
    parts = [torch.randn(30, 20, generator=g) + 1.0, torch.randn(700, generator=g), 0.5 * torch.randn(5, 9, generator=g)]
    flat = torch.cat([p.reshape(-1) for p in parts]).double()
    lam = solve_lambda(parts, 400, tau, dtype=dtype)
    assert lam.shape == (1,) and lam.dtype == dtype
    assert abs(float(torch.sigmoid(flat / tau + lam.double()).sum()) - 400) <= (1e-3 if dtype == torch.float64 else 4e-3)
    torch.testing.assert_close(lam.double(), solve_lambda(flat.view(1, -1), 400, tau).view(1), rtol=1e-4, atol=1e-6)
    again = solve_lambda(parts, 400, tau, init=lam, dtype=dtype)  # warm-started at the solution: unchanged
    torch.testing.assert_close(again, lam, rtol=0, atol=0)


def test_small_temperature_gives_the_hard_top_k():
    scores = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    f = soft_topk(scores, 16, tau=1e-6)
    hard = torch.zeros_like(scores).scatter_(-1, scores.topk(16, dim=-1).indices, 1.0)
    torch.testing.assert_close(f, hard, rtol=0, atol=1e-4)


@pytest.mark.parametrize("tau", [0.05, 0.5, 2.0])
def test_gradient_matches_finite_differences(tau):
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 12, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 12, generator=g, dtype=torch.float64)
    k = torch.tensor([3.0, 7.0], dtype=torch.float64)

    def loss(s):
        return (soft_topk(s, k, tau) * weights).sum()

    loss(scores).backward()
    eps = 1e-6
    numeric = torch.zeros_like(scores)
    with torch.no_grad():
        for idx in range(scores.numel()):
            step = torch.zeros(scores.numel(), dtype=torch.float64)
            step[idx] = eps
            step = step.view_as(scores)
            numeric.view(-1)[idx] = (loss(scores + step) - loss(scores - step)) / (2 * eps)
    torch.testing.assert_close(scores.grad, numeric, rtol=1e-5, atol=1e-7)
    # The constraint holds to first order: moving scores cannot change the total mask.
    torch.testing.assert_close(torch.autograd.functional.jacobian(lambda s: soft_topk(s, k, tau).sum(-1), scores.detach()),
                               torch.zeros(2, 2, 12, dtype=torch.float64), rtol=0, atol=1e-9)


def test_invalid_k_and_tau_are_refused():
    with pytest.raises(ValueError, match="0 < k < n"):
        soft_topk(torch.randn(1, 4), 4, 0.1)
    with pytest.raises(ValueError, match="0 < k < n"):
        soft_topk(torch.randn(1, 4), 0, 0.1)
    with pytest.raises(ValueError, match="tau must be > 0"):
        soft_topk(torch.randn(1, 4), 2, 0.0)
