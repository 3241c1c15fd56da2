"""Bracketed selection equals a full sort, on ordinary, tied and adversarial inputs."""

import pytest
import torch

from pdp_hf.selection import SAMPLE_SIZE, kth_smallest_pair


def reference(flat, k):
    s = torch.sort(flat).values
    return float(s[k - 1]), (float(s[k]) if k < flat.numel() else None)


CASES = [
    ("normal", lambda g, n: torch.randn(n, generator=g).abs()),
    ("ties", lambda g, n: torch.randint(0, 50, (n,), generator=g).float()),  # heavy ties everywhere
    ("two-level", lambda g, n: (torch.rand(n, generator=g) > 0.5).float()),  # bracket collapses onto a tie
    ("skewed", lambda g, n: torch.rand(n, generator=g) ** 8),
]


@pytest.mark.parametrize("name,make", CASES)
@pytest.mark.parametrize("frac", [1e-6, 0.1, 0.5, 0.9, 0.97, 0.999999])
def test_matches_sort(name, make, frac):
    g = torch.Generator().manual_seed(hash((name, frac)) % 2**31)
    n = 4 * SAMPLE_SIZE + 12345  # above the size where bracketing starts
    flat = make(g, n)
    k = max(1, min(n, round(frac * n)))
    got = kth_smallest_pair(flat, k)
    assert (float(got[0]), None if got[1] is None else float(got[1])) == reference(flat, k)


@pytest.mark.parametrize("n,k", [(1, 1), (5, 5), (100, 1), (1000, 999)])
def test_small_and_edge(n, k):
    flat = torch.randn(n, generator=torch.Generator().manual_seed(n)).abs()
    got = kth_smallest_pair(flat, k)
    assert (float(got[0]), None if got[1] is None else float(got[1])) == reference(flat, k)


def test_out_of_range():
    with pytest.raises(ValueError, match="k must be in"):
        kth_smallest_pair(torch.ones(3), 0)
