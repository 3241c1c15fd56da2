"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"), the baseline beside PDP.

The smallest-|w| weights are masked; the mask is recomputed from the current weights at every optimizer step
of the ramp (their Delta t = 1) and fixed at hardening. Masked weights get no gradient (d(m*w)/dw = m = 0) but keep
their value, so one can return if kept weights shrink below it. Their schedule is `sparsity_schedule="cubic"`:
s(t) = s_f (1 - (1 - (t - t0)/(n Delta t))^3).
"""

from __future__ import annotations

import torch
from torch import nn

from ..selection import kth_smallest_pair
from .base import MaskMethod, remove_buffer


class MagnitudeMethod(MaskMethod):
    name = "magnitude"

    def init_module(self, module: nn.Linear) -> None:
        module.register_buffer("pdp_keep", None, persistent=False)

    @torch.no_grad()
    def update(self, module: nn.Linear, zeros: int, exact: bool = True) -> None:
        # kthvalue + compare is an exact top-k unless magnitudes tie at the cut; hardening uses the exact mask.
        scores = self.scores(module.weight).float()
        cut, _ = kth_smallest_pair(scores.reshape(-1), zeros)
        module.pdp_keep = scores > cut

    def soft_weight(self, module: nn.Linear) -> torch.Tensor:
        return module.weight * module.pdp_keep

    eval_weight = soft_weight  # the mask is already hard

    def remove_module(self, module: nn.Linear) -> None:
        remove_buffer(module, "pdp_keep")
