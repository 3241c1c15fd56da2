"""Exact k-th smallest values without a full selection over every weight.

`torch.kthvalue` over a 768x3072 matrix costs about as much as a third of that layer's training matmuls on a CPU.
PDP needs the k-th and (k+1)-th smallest |w| of every targeted matrix at every optimizer step, so this is the
hot spot of its overhead. A fixed random sample of 65,536 entries brackets the k-th value (its rank q = k/n is
known to within a few standard errors sqrt(q(1-q)/S)); one pass counts the entries below the bracket and gathers
the few inside it (about 1% of n), and only those are sorted. The answer is exact; when the bracket misses
(adversarial ties), it falls back to `torch.kthvalue`.
"""

from __future__ import annotations

import math

import torch

SAMPLE_SIZE = 1 << 16
_BRACKET_SIGMAS = 6.0
_sample_index_cache: dict[tuple[int, str], torch.Tensor] = {}


def _sample_index(n: int, device: torch.device) -> torch.Tensor:
    key = (n, str(device))
    if key not in _sample_index_cache:
        g = torch.Generator().manual_seed(n)  # deterministic: every process picks the same sample
        # Sorted: the same sample, gathered in memory order (several times faster than random order on CPU).
        index = torch.randint(0, n, (SAMPLE_SIZE,), generator=g).sort().values
        _sample_index_cache[key] = index.to(device)
    return _sample_index_cache[key]


def _direct(flat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    kth = torch.kthvalue(flat, k).values
    if k == flat.numel():
        return kth, None
    # The (k+1)-th smallest: equal to the k-th when ties run past rank k, else the smallest value above it. A NaN
    # entry makes it NaN (min propagates NaN), so the mask and the loss turn NaN and training stops with the error
    # that names the module, instead of a threshold of inf hiding the NaN.
    above = torch.where((flat > kth) | flat.isnan(), flat, torch.full_like(flat, float("inf"))).min()
    return kth, torch.where((flat <= kth).sum() > k, kth, above)


def kth_smallest_pair(flat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The k-th and (k+1)-th smallest entries of a 1-D float tensor (1-based k; None for the second when k == n).

    >>> [round(float(v), 4) for v in kth_smallest_pair(torch.tensor([0.5, 0.1, 0.4, 0.2]), 2)]
    [0.2, 0.4]
    """
    n = flat.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}.")
    if n <= 4 * SAMPLE_SIZE or k == n:
        return _direct(flat, k)
    sample = flat[_sample_index(n, flat.device)]
    q = k / n
    spread = _BRACKET_SIGMAS * math.sqrt(q * (1 - q) / SAMPLE_SIZE) + 2.0 / SAMPLE_SIZE
    lo_rank = max(1, math.floor((q - spread) * SAMPLE_SIZE))
    hi_rank = min(SAMPLE_SIZE, math.ceil((q + spread) * SAMPLE_SIZE))
    lo, hi = _kth(sample, lo_rank), _kth(sample, hi_rank)  # two O(S) selections, cheaper than sorting the sample
    below = int((flat < lo).sum())
    inside = flat[(flat >= lo) & (flat <= hi)]
    rank = k - below  # rank of the answer among the bracketed entries
    if rank < 1 or rank + 1 > inside.numel():
        return _direct(flat, k)
    # Two linear-time selections on the bracket instead of sorting it: the same pair (`_direct` keeps the tie rule).
    return _direct(inside, rank)


def _kth(values: torch.Tensor, k: int) -> torch.Tensor:
    return torch.kthvalue(values, k).values


def sampled_kth_pair(flat: torch.Tensor, k: int, absolute: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimates of the k-th and (k+1)-th smallest entries from the fixed 65,536-entry sample (same quantile).

    The rank error is about sqrt(q(1-q)/65536) * n (0.12% of n at q = 0.9); used between exact refreshes.
    `absolute=True` ranks |flat| (and reads only the sampled entries of `flat`, not all of it).
    """
    n = flat.numel()
    if n <= 4 * SAMPLE_SIZE:
        pair = _direct(flat.abs().float() if absolute else flat, k)
        return pair[0], pair[1] if pair[1] is not None else pair[0]
    sample = flat[_sample_index(n, flat.device)]
    if absolute:
        sample = sample.abs().float()
    rank = min(SAMPLE_SIZE - 1, max(1, round(k / n * SAMPLE_SIZE)))
    kth = _kth(sample, rank)
    # The (rank + 1)-th without a second selection: kth itself when ties run past the rank, else the next value up.
    above = torch.where(sample > kth, sample, torch.full_like(sample, float("inf"))).min()
    return kth, torch.where((sample <= kth).sum() > rank, kth, above)


def global_budgets(scores: dict[str, torch.Tensor], target: float, tie_break=None) -> dict[str, int]:
    """Per-layer zero counts from one ranking over all layers: the round(target * N) smallest scores overall are
    pruned, and each layer's budget is how many of them it holds. Entries tied at the cut are ranked by
    `tie_break(name)` (a tensor shaped like that layer's scores, comparable across layers) when given, else taken in
    layer order."""
    flat = {n: s.detach().reshape(-1).float() for n, s in scores.items()}
    return _smallest_counts(flat, int(round(target * sum(s.numel() for s in flat.values()))), tie_break)


def _smallest_counts(flat: dict[str, torch.Tensor], k: int, tie_break=None) -> dict[str, int]:
    if k == 0:
        return {n: 0 for n in flat}
    cut = torch.kthvalue(torch.cat([s.cpu() for s in flat.values()]), k).values
    counts = {n: int((s < cut.to(s.device)).sum()) for n, s in flat.items()}
    left = k - sum(counts.values())
    tied = {n: s == cut.to(s.device) for n, s in flat.items()}
    if tie_break is not None and left < sum(int(t.sum()) for t in tied.values()):
        among = {n: tie_break(n).detach().reshape(-1).float()[t] for n, t in tied.items() if bool(t.any())}
        for n, c in _smallest_counts(among, left).items():
            counts[n] += c
        return counts
    for n, t in tied.items():
        take = min(left, int(t.sum()))
        counts[n] += take
        left -= take
    return counts
