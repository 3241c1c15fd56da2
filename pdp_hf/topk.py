"""Differentiable top-k (the SMART pruner's mask; Ding et al. 2024, arXiv 2403.19969).

For scores s_1..s_n, a temperature tau > 0 and a count k (0 < k < n):

    f_i = sigmoid(s_i / tau + lambda),   lambda such that sum_i f_i = k.

The sum is strictly increasing in lambda, so lambda is found by safeguarded Newton steps; it lies in
[logit(k/n) - max(s)/tau, logit(k/n) - min(s)/tau] (at the left end every f_i <= k/n, at the right every f_i >= k/n).
As tau -> 0, f tends to the hard top-k indicator (ties aside).

Backward treats lambda as the function of s that the constraint defines (implicit differentiation): with
d_i = f_i (1 - f_i),

    df_i/ds_j = (1/tau) (d_i delta_ij - d_i d_j / sum_l d_l),

so the vector-Jacobian product is grad_s = (d / tau) * (g - sum(d * g) / sum(d)). Rows are independent: the last
dimension is the one ranked, every leading index (a layer, or an N:M group) has its own lambda and k.
"""

from __future__ import annotations

import torch

_MAX_STEPS = 100
# Mask values below 2^-100 are written as exact zeros. At a small temperature sigmoid(s / tau + lambda) reaches
# 1e-38 and below for the units far under the cut: float32 subnormals, and so are the weights they multiply. A CPU
# computes with subnormal operands through microcode assists: measured here, 0.7% of a MiniLM's heads and neurons
# with subnormal masks made a training step 7x slower (66 s against 9.5 s). 2^-100 times any weight above 1e-8 is a
# normal float, and a unit masked by less than 2^-100 contributes nothing a float32 sum beside kept units can hold.
MASK_FLOOR = 2.0**-100
# |sum f - k| at convergence, relative to max(k, 1): float64 to its noise; float32 sums of millions of terms carry
# about 1e-6 relative rounding, so 1e-5 there.
_COUNT_TOL = {torch.float64: 1e-9, torch.float32: 1e-5}


@torch.no_grad()
def solve_lambda(
    scores: torch.Tensor | list[torch.Tensor], k: torch.Tensor | int, tau: float, init: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64, independent_rows: bool = False,
) -> torch.Tensor:
    """lambda (shaped scores.shape[:-1] + (1,), in `dtype`) with sum(sigmoid(scores / tau + lambda), -1) = k.

    `scores` may also be a list of tensors (a pool, e.g. every layer's scores): one lambda, shape (1,), for all
    their entries together, computed part by part without concatenating them (each iteration's temporaries are
    one part's size, which keeps them in cache: about 2x faster than one row on CPU). Parts may live on
    different devices; lambda lives on the first part's.

    Safeguarded Newton: a Newton step on the count (its derivative is sum f (1 - f)) when it stays inside the
    current bracket, else bisection; a few steps for smooth masks, bisection's guarantee for nearly hard ones.
    `init` (e.g. the previous optimizer step's lambda) starts the iteration there when it lies inside the bracket:
    one or two steps then suffice. `dtype` float32 halves the cost on large rows (count within 1e-5 relative).

    `independent_rows=True` solves the rows as separate problems: each row's lambda stops moving at the iteration
    where its own count converges, so every row gets exactly the lambda a call with that row alone gives (a NaN in
    `init` marks a row without a warm start). Without it, rows that converged early take the extra steps the others
    need (N:M groups, as before)."""
    if isinstance(scores, (list, tuple)):
        parts = [x.detach().to(dtype).reshape(-1) / tau for x in scores if x.numel()]
        if not parts:
            raise ValueError("solve_lambda got no scores.")
        n, device = sum(p.numel() for p in parts), parts[0].device
        top = torch.stack([p.max().to(device) for p in parts]).max().view(1)
        bottom = torch.stack([p.min().to(device) for p in parts]).min().view(1)

        def sums(lam):  # the count and its slope in one pass per part, while the part's f is in cache
            count = slope = torch.zeros(1, dtype=dtype, device=device)
            for p in parts:
                f = torch.sigmoid(p + lam.to(p.device))
                count = count + f.sum().to(device)
                slope = slope + (f * (1.0 - f)).sum().to(device)
            return count, lambda: slope
    else:
        s = scores.detach().to(dtype) / tau
        n, device = s.shape[-1], s.device
        top, bottom = s.amax(-1, keepdim=True), s.amin(-1, keepdim=True)

        def sums(lam):  # the slope only when the count has not converged
            f = torch.sigmoid(s + lam)
            return f.sum(-1, keepdim=True), lambda: (f * (1.0 - f)).sum(-1, keepdim=True)

    k = torch.as_tensor(k, dtype=dtype, device=device).expand(top.shape[:-1]).unsqueeze(-1)
    if bool(((k <= 0) | (k >= n)).any()):
        raise ValueError(f"soft top-k needs 0 < k < n (n = {n}); got k in [{float(k.min())}, {float(k.max())}].")
    base = torch.logit(k / n)
    lo, hi = base - top, base - bottom
    lam = 0.5 * (lo + hi)
    if init is not None:
        init = init.to(dtype=dtype, device=device).expand_as(lam)
        lam = torch.where((init > lo) & (init < hi), init, lam)
    tol = _COUNT_TOL[dtype] * k.clamp_min(1.0)
    tiny = torch.finfo(dtype).tiny
    done = None  # independent rows: the rows whose count has converged (their lambda is final)
    for _ in range(_MAX_STEPS):
        count, slope = sums(lam)
        excess = count - k
        converged = excess.abs() <= tol
        if independent_rows:
            done = converged if done is None else done | converged
            converged = done
        if bool(converged.all()):
            break
        hi = torch.where(excess > 0, lam, hi)
        lo = torch.where(excess > 0, lo, lam)
        newton = lam - excess / slope().clamp_min(tiny)
        inside = (newton > lo) & (newton < hi)
        moved = torch.where(inside, newton, 0.5 * (lo + hi))
        lam = moved if done is None else torch.where(done, lam, moved)
    return lam


class _SoftTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, lam, tau):
        dtype = lam.dtype
        f = torch.sigmoid(scores.to(dtype) / tau + lam)
        ctx.save_for_backward(f)
        ctx.tau = tau
        return flush_tiny(f.to(scores.dtype))  # the scores' gradient still comes from f itself

    @staticmethod
    def backward(ctx, grad):
        (f,) = ctx.saved_tensors
        d = f * (1.0 - f)
        g = grad.to(f.dtype)
        total = d.sum(-1, keepdim=True).clamp_min(torch.finfo(f.dtype).tiny)
        grad_s = d / ctx.tau * (g - (d * g).sum(-1, keepdim=True) / total)
        return grad_s.to(grad.dtype), None, None


def flush_tiny(mask: torch.Tensor) -> torch.Tensor:
    """`mask` with the values below MASK_FLOOR set to exact zeros (no subnormal weights on the CPU, see there)."""
    return mask.masked_fill(mask < MASK_FLOOR, 0.0)


def soft_topk(scores: torch.Tensor, k: torch.Tensor | int | None, tau: float, lam: torch.Tensor | None = None) -> torch.Tensor:
    """sigmoid(scores / tau + lambda) along the last dimension, lambda per row such that each row sums to k.

    Differentiable in `scores` (lambda implicitly a function of them). `k` is an int or a tensor of shape
    `scores.shape[:-1]` with 0 < k < n. A `lam` already solved for these scores (`solve_lambda`, e.g. once per
    optimizer step outside autograd) is used as it is, in its dtype, and `k` is then not needed.

    >>> f = soft_topk(torch.tensor([[3.0, 1.0, 2.0, 0.0]]), 2, tau=0.01)
    >>> [round(v, 3) for v in f[0].tolist()], round(float(f.sum()), 4)
    ([1.0, 0.0, 1.0, 0.0], 2.0)
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}.")
    if lam is None:
        lam = solve_lambda(scores, k, tau)
    return _SoftTopK.apply(scores, lam, float(tau))
