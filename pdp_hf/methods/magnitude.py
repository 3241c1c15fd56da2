"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"), the baseline beside PDP.

The units with the smallest L2 norm (|w| for single weights) are masked; the mask is recomputed from the current
weights at every optimizer step of the ramp (their Delta t = 1; the cut exact every `threshold_refresh_steps`,
estimated from a fixed sample between) and fixed at hardening. Masked weights get no
gradient (d(m*w)/dw = m = 0) but keep their value, so one can return if kept units shrink below it. Their schedule
is `sparsity_schedule="cubic"`: s(t) = s_f (1 - (1 - (t - t0)/(n Delta t))^3). Works on every granularity: the
same units as PDP, a hard top-k instead of a soft mask.
"""

from __future__ import annotations

import torch
from torch import nn

from ..fused import (
    FUSED_KINDS,
    broadcast_shape,
    fusable_classes,
    restack,
    select_pairs,
    unit_scores,
)
from ..kernels import KERNELS
from ..selection import kth_smallest_pair, sampled_kth_pair
from ..units import Member, UnitGroup, multiplier, multiplier_dtype
from .base import TIED_DTYPES, MaskMethod, keep_exactly, nm_hard_mask


class MagnitudeMethod(MaskMethod):
    name = "magnitude"
    description = "gradual magnitude pruning (Zhu & Gupta 2017, arXiv:1710.01878)"

    def __init__(self, mask_kernel: str = "auto"):
        self.mask_kernel = mask_kernel

    @classmethod
    def from_config(cls, config) -> MagnitudeMethod:
        return cls(config.mask_kernel)

    @torch.no_grad()
    def update(self, group: UnitGroup, zeros: int, exact: bool = True) -> None:
        # The mask is stored as 0/1 multipliers: the forward and backward of every micro-batch multiply by it.
        # kthvalue + compare is an exact top-k unless scores tie at the cut (16-bit weights: ties are broken in
        # memory order, `keep_exactly`); hardening uses the exact mask. Between
        # exact refreshes (PDPConfig.threshold_refresh_steps) the cut is estimated from a fixed sample, as for PDP:
        # the count is then off by about 0.1% of the units, never after hardening.
        dtype = multiplier_dtype(group.weight.dtype)
        if group.kind == "unstructured":  # straight from the weights: one fused pass, no score tensor
            flat = group.weight.detach().reshape(-1)
            if exact:
                cut, _ = kth_smallest_pair(flat.abs().float(), zeros)
            else:
                cut, _ = sampled_kth_pair(flat, zeros, absolute=True)
            if group.weight.dtype in TIED_DTYPES:
                scores = flat.abs().float().view(group.unit_shape)
                group.state["keep"] = multiplier(keep_exactly(scores > cut, scores, cut, zeros), group.weight.dtype)
            else:
                group.state["keep"] = KERNELS.keep_above(group.weight.detach(), cut, dtype, self.mask_kernel)
            return
        scores = group.scores()
        if group.kind == "n:m":
            keep = nm_hard_mask(scores, group.n, zeros)
        else:
            select = kth_smallest_pair if exact else sampled_kth_pair
            cut, _ = select(scores.reshape(-1), zeros)
            keep = scores > cut
            if group.weight.dtype in TIED_DTYPES:
                keep = keep_exactly(keep, scores, cut, zeros)
        group.state["keep"] = multiplier(keep, group.weight.dtype)

    @torch.no_grad()
    def update_many(self, items: list[tuple[UnitGroup, int]], exact: bool = True) -> None:
        # Groups of one signature (pdp_hf.fused): every cut from one selection, every mask from one pass.
        classes, single = fusable_classes(items, lambda g, z: g.kind in FUSED_KINDS and 0 < z < g.num_units)
        for same, zeros in classes:
            scores = unit_scores(same)
            unstructured = same[0].kind == "unstructured"
            pairs = select_pairs(scores, zeros, exact, absolute=unstructured)
            if pairs is None:
                single.extend(zip(same, zeros))
                continue
            cut = pairs[0].view(broadcast_shape(scores))
            if same[0].weight.dtype in TIED_DTYPES:  # as update: ties at the cut broken, exact counts
                ranked = scores.abs().float() if unstructured else scores  # unstructured: the weights themselves
                keep = multiplier(keep_exactly(ranked > cut, ranked, cut, zeros), same[0].weight.dtype)
            elif unstructured:  # straight from the weights, as update does
                keep = KERNELS.keep_above(scores, cut, multiplier_dtype(scores.dtype), self.mask_kernel)
            else:
                keep = multiplier(scores > cut, same[0].weight.dtype)
            for group, group_keep in zip(same, keep.unbind(0)):
                group.state["keep"] = group_keep
        for group, zeros in single:
            self.update(group, zeros, exact)

    def fuses(self, group: UnitGroup) -> bool:
        return group.kind in FUSED_KINDS

    def train_unit_masks(self, groups: list[UnitGroup], squared_norms) -> torch.Tensor:
        return restack([g.state["keep"] for g in groups])

    def train_weight(self, group: UnitGroup, member: Member, module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        return group.masked(group.state["keep"], member, module)

    def train_keeps(self, group: UnitGroup, member: Member, module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        return group.expand(group.state["keep"].to(module.weight.device), member)

    def eval_mask(self, group: UnitGroup, module: nn.Linear | None = None) -> torch.Tensor:
        return group.state["keep"]  # the mask is already hard (0/1 multipliers)
