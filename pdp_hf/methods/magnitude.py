"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"), the baseline beside PDP.

The units with the smallest L2 norm (|w| for single weights) are masked; the mask is recomputed from the current
weights at every optimizer step of the ramp (their Delta t = 1) and fixed at hardening. Masked weights get no
gradient (d(m*w)/dw = m = 0) but keep their value, so one can return if kept units shrink below it. Their schedule
is `sparsity_schedule="cubic"`: s(t) = s_f (1 - (1 - (t - t0)/(n Delta t))^3). Works on every granularity: the
same units as PDP, a hard top-k instead of a soft mask.
"""

from __future__ import annotations

import torch
from torch import nn

from ..selection import kth_smallest_pair
from ..units import Member, UnitGroup
from .base import MaskMethod, nm_hard_mask


class MagnitudeMethod(MaskMethod):
    name = "magnitude"

    @torch.no_grad()
    def update(self, group: UnitGroup, zeros: int, exact: bool = True) -> None:
        scores = group.scores()
        if group.kind == "n:m":
            group.state["keep"] = nm_hard_mask(scores, group.n, zeros)
            return
        # kthvalue + compare is an exact top-k unless scores tie at the cut; hardening uses the exact mask.
        cut, _ = kth_smallest_pair(scores.reshape(-1), zeros)
        group.state["keep"] = scores > cut

    def train_weight(self, group: UnitGroup, member: Member, module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        return group.masked(group.state["keep"], member, module)

    def eval_mask(self, group: UnitGroup, module: nn.Linear | None = None) -> torch.Tensor:
        return group.state["keep"]  # the mask is already hard
