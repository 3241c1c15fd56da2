"""The interface every mask method implements, and the exact hard masks they all share.

Methods work on `UnitGroup`s (`pdp_hf.units`): a group's units are ranked by their L2 norm, a method turns the
number of pruned units in force into a unit-level mask, and the group broadcasts that mask onto each member
weight (and bias). For `unstructured` a unit is one weight, so the mask has the weight's shape.
"""

from __future__ import annotations

import torch
from torch import nn

from ..units import Member, UnitGroup


def hard_mask_from_scores(scores: torch.Tensor, zeros: int) -> torch.Tensor:
    """Boolean keep-mask with exactly `zeros` False entries: the `zeros` smallest scores are pruned.

    Ties are broken by `torch.topk`, so the count is exact whatever the values.

    >>> hard_mask_from_scores(torch.tensor([0.3, 0.1, 0.2, 0.4]), 2).tolist()
    [True, False, False, True]
    """
    flat = scores.reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if zeros > 0:
        idx = torch.topk(flat.float(), zeros, largest=False, sorted=False).indices
        keep[idx] = False
    return keep.view(scores.shape)


def nm_selected_groups(scores: torch.Tensor, n: int, groups: int, ordered: torch.Tensor | None = None) -> torch.Tensor:
    """Which N:M groups are pruned while `groups` of them are in force (the ramp of granularity 'n:m').

    `scores` is |w| shaped (rows, G, M); `ordered` the same sorted along the group (ascending), if the caller has it.
    The groups pruned first are those whose M - N smallest |w| carry the least squared magnitude, i.e. the cheapest
    to prune. Returns a bool tensor (rows, G, 1), True = N:M pruned.

    >>> nm_selected_groups(torch.tensor([[[0.1, 0.9, 0.8, 0.2], [0.5, 0.6, 0.7, 0.8]]]), 2, 1).view(-1).tolist()
    [True, False]
    """
    m = scores.shape[-1]
    total = scores.shape[0] * scores.shape[1]
    if groups >= total:
        return torch.ones(scores.shape[:2] + (1,), dtype=torch.bool, device=scores.device)
    ordered = torch.sort(scores.float(), dim=-1).values if ordered is None else ordered
    cost = ordered[..., : m - n].square().sum(-1)
    return ~hard_mask_from_scores(cost, groups).unsqueeze(-1)


def nm_hard_mask(scores: torch.Tensor, n: int, groups: int) -> torch.Tensor:
    """Keep-mask (rows, G, M): in each of the `groups` selected groups exactly the N largest |w| stay; the others
    stay whole. Exact counts whatever the ties (`torch.topk` along the group).

    >>> nm_hard_mask(torch.tensor([[[0.1, 0.9, 0.8, 0.2]]]), 2, 1).view(-1).tolist()
    [False, True, True, False]
    """
    # One sort along the (short) groups serves both the kept positions and the ramp's group costs; it is several
    # times faster than topk(n, dim=-1) on CPU. An unstable sort still keeps exactly N per group under ties.
    m = scores.shape[-1]
    ordered = torch.sort(scores.float(), dim=-1)
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, ordered.indices[..., m - n :], True)
    return keep | ~nm_selected_groups(scores, n, groups, ordered.values)


class MaskMethod:
    """How the weights of a unit group are masked during training.

    Lifecycle per group: `init_group` once, `update` once per optimizer step with the number of units pruned in
    force (outside autograd), `train_weight` in every training forward (differentiable), `eval_weight` in eval mode
    before hardening, `hard_mask` for hardening, reports and finalize (exact count).
    """

    name: str = ""

    @classmethod
    def from_config(cls, config) -> MaskMethod:
        """Build the method from a `PDPConfig` (methods read only the fields they need)."""
        return cls()

    def init_group(self, group: UnitGroup) -> None:
        """Set up the method's per-group state in `group.state`."""

    def update(self, group: UnitGroup, zeros: int, exact: bool = True) -> None:
        """Recompute the group's mask state for `zeros` pruned units; `exact=False` allows a cheaper estimate."""
        raise NotImplementedError

    def train_weight(self, group: UnitGroup, member: Member, module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of `member` for a training forward; `module` is the module that runs (`member.module`,
        or a DataParallel replica of it, whose weights live on another device)."""
        raise NotImplementedError

    def eval_mask(self, group: UnitGroup, module: nn.Linear | None = None) -> torch.Tensor:
        """Unit-level keep-mask used in eval mode before hardening: the hard mask at the current sparsity."""
        return self.hard_mask(group, group.zeros)

    def eval_weight(self, group: UnitGroup, member: Member, module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        return group.masked(self.eval_mask(group, module), member, module)

    def hard_mask(self, group: UnitGroup, zeros: int) -> torch.Tensor:
        """Exact unit-level keep-mask with `zeros` pruned units (N:M: `zeros` groups N:M-pruned)."""
        if group.kind == "n:m":
            return nm_hard_mask(group.scores(), group.n, zeros)
        return hard_mask_from_scores(group.scores(), zeros)

    def mask_gap(self, group: UnitGroup) -> torch.Tensor:
        """Sum over weights of |soft mask - hard mask| (for logging); 0 when the method has no soft mask."""
        return torch.zeros((), device=group.weight.device)

    def remove_group(self, group: UnitGroup) -> None:
        """Drop what `init_group` and `update` attached."""
        group.state.clear()
