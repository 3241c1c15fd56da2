"""Movement pruning (Sanh, Wolf, Rush 2020, arXiv 2005.07683), hard variant: keep the units whose weights move away
from zero during fine-tuning.

Every unit has a learnable score S_u, starting at 0 (their `mask_init="constant"`, `mask_scale=0`;
`movement_score_init="magnitude"` starts from the units' relative norms instead, see `init_scores`). The forward
uses W * M with M the hard top-k of the scores (the units pruned in force have the lowest scores); the backward is
straight-through (their `TopKBinarizer`): dL/dS = dL/dM = sum over the unit of dL/dW' * W, so with plain gradient
descent S accumulates -W * dL/dW. The scores are trained by the Trainer's optimizer in their own parameter group
(`score_learning_rate`, no weight decay; their recipe uses 1e-2 with Adam), from the first step on: the mask is
applied (all ones) before pruning starts, so the scores know which weights move by the time they are used.
Their schedule is cubic: `sparsity_schedule="cubic"`. At hardening the mask becomes the exact top-k of the scores.

Between exact refreshes (`threshold_refresh_steps`) the cut is estimated from a fixed sample of the scores, as for
magnitude. Soft movement (scores thresholded under an L1 penalty, sparsity not set in advance) does not fit
pdp_hf's exact budgets and is not provided.
"""

from __future__ import annotations

import torch
from torch import nn

from ..fused import FUSED_KINDS, fusable_classes, restack, select_pairs
from ..selection import sampled_kth_pair
from ..units import Member, UnitGroup, multiplier
from .base import MaskMethod, check_positive, learned_hard_mask, relative_norms

SCORE_INITS = ("zeros", "magnitude")
_TIE_SLACK = 0.01  # a sampled cut whose kept count misses the budget by more than 1% of the units is not used


class MovementMethod(MaskMethod):
    name = "movement"
    config_fields = ("score_learning_rate", "movement_score_init")
    learnable_scores = True
    masks_before_pruning = True
    description = "movement pruning, hard top-k of learned movement scores (Sanh, Wolf & Rush 2020, arXiv:2005.07683)"

    def __init__(self, score_init: str = "zeros"):
        self.score_init = score_init

    @classmethod
    def from_config(cls, config) -> MovementMethod:
        return cls(config.movement_score_init)

    @classmethod
    def check_config(cls, config) -> None:
        check_positive(config, "score_learning_rate")
        if config.movement_score_init not in SCORE_INITS:
            raise ValueError(
                f"PDPConfig.movement_score_init={config.movement_score_init!r} is invalid: choose one of {list(SCORE_INITS)}."
            )

    @torch.no_grad()
    def init_scores(self, group: UnitGroup) -> torch.Tensor:
        """Zeros (the paper), or with `score_init="magnitude"` each unit's norm over the mean norm of its matrix
        (N:M: ranked within each group of M), so the first mask is magnitude's and the learned movement re-ranks it.
        In a short fine-tune the weights barely move and Adam's normalized steps make zero-started scores rank by the
        sign consistency of -W * dL/dW, whatever |W|: then the kept set is close to random in magnitude."""
        if self.score_init == "zeros":
            return torch.zeros(group.unit_shape, device=group.weight.device)
        return relative_norms(group)

    @torch.no_grad()
    def update(self, group: UnitGroup, zeros: int, exact: bool = True) -> None:
        group.state.pop("eval_keep", None)
        if zeros == 0:  # before pruning starts, or a learned budget re-ranked to 0: every unit kept
            group.state.pop("keep", None)
            return
        keep = None
        if not (exact or group.kind == "n:m" or zeros >= group.num_units):
            # between refreshes, a cut estimated from the fixed sample (count off by about 0.1% of the units) ...
            score = group.score.detach().float().reshape(-1)
            cut, _ = sampled_kth_pair(score, zeros)
            keep = (score > cut).view(group.unit_shape)
            if abs(group.num_units - zeros - int(keep.sum())) > _TIE_SLACK * group.num_units:
                keep = None  # ... unless scores tie at the cut (all start at 0; Adam moves many by equal steps)
        if keep is None:
            keep = learned_hard_mask(group, zeros)  # the exact top-k
        group.state["keep"] = multiplier(keep, group.weight.dtype)

    @torch.no_grad()
    def update_many(self, items: list[tuple[UnitGroup, int]], exact: bool = True) -> None:
        # Between exact refreshes, groups of one signature: every sampled cut from one selection
        # (pdp_hf.fused); a matrix whose cut misses its budget (ties) takes the exact top-k on its own, as in update.
        classes, single = fusable_classes(
            items, lambda g, z: not exact and g.kind in FUSED_KINDS and 0 < z < g.num_units)
        for groups, zeros in classes:
            scores = torch.stack([g.score.detach() for g in groups])
            pairs = select_pairs(scores.float(), zeros, False, False)
            if pairs is None:
                single.extend(zip(groups, zeros))
                continue
            keep = scores.float() > pairs[0].view(-1, *[1] * (scores.dim() - 1))
            kept = keep.view(len(groups), -1).sum(1).tolist()
            factors = multiplier(keep, groups[0].weight.dtype).unbind(0)
            for group, group_zeros, group_kept, factor in zip(groups, zeros, kept, factors):
                if abs(group.num_units - group_zeros - group_kept) > _TIE_SLACK * group.num_units:
                    single.append((group, group_zeros))
                    continue
                group.state.pop("eval_keep", None)
                group.state["keep"] = factor
        for group, zeros in single:
            self.update(group, zeros, exact)

    def fuses(self, group: UnitGroup) -> bool:
        return group.kind in FUSED_KINDS

    def train_unit_masks(self, groups: list[UnitGroup], squared_norms) -> torch.Tensor:
        scores = torch.stack([g.score for g in groups])
        delta = scores - scores.detach()  # the hard mask's value, the identity's gradient (see train_weight)
        keeps = [g.state.get("keep") for g in groups]
        if all(keep is None for keep in keeps):
            return delta + 1.0
        return delta + restack([torch.ones_like(delta[0]) if k is None else k.to(delta.device) for k in keeps])

    def train_weight(self, group: UnitGroup, member: Member, module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        def straight_through():
            score = group.score
            keep = group.state.get("keep")
            # value: the hard mask exactly (s - s.detach() is +0.0); gradient: identity to the scores
            delta = score - score.detach()
            return delta + 1.0 if keep is None else delta + keep.to(score.device)

        mask = group.once_per_forward(straight_through)
        weight, bias = group.masked(mask, member, module)
        dtype = module.weight.dtype
        return weight.to(dtype), bias if bias is None else bias.to(dtype)

    def eval_mask(self, group: UnitGroup, module: nn.Linear | None = None) -> torch.Tensor:
        # the exact top-k of the current scores (what finalize would bake in now), once per optimizer step
        if "eval_keep" not in group.state:
            group.state["eval_keep"] = self.hard_mask(group, group.zeros)
        return group.state["eval_keep"]

    def hard_mask(self, group: UnitGroup, zeros: int) -> torch.Tensor:
        return learned_hard_mask(group, zeros)
