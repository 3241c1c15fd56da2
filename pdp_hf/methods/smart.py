"""SMART pruner (Ding et al. 2024, arXiv 2403.19969): learnable unit scores through a differentiable top-k.

Every unit (weight, N:M group member, neuron, head, tile) has a learnable score s_u, trained by the Trainer's
optimizer in its own parameter group (`score_learning_rate`, no weight decay). With z units pruned in force and
k = units - z, the forward uses W * f(s), broadcast over each unit:

    f(s)_u = sigmoid(s_u / tau + lambda),   lambda such that sum_u f(s)_u = k

(per group of a uniform budget; for N:M per group of M weights with k = N), and the weights and scores both learn
through it (`pdp_hf.topk`: lambda by safeguarded Newton, implicit-gradient backward). As tau -> 0, f is the hard
top-k of the scores; at hardening the mask becomes exactly that top-k, and training continues with it fixed.

Choices where the paper is not recoverable (documented in docs/methods.md, measured in benchmarks/compare_minilm_sst2.md):
- three stages on pdp_hf's shared schedule: dense until `pruning_start`; from there k ramps down to the budget
  (the same ramp as every method, so one jump never removes 90% of the mass) while tau decays geometrically from
  `smart_temperature_start` to `smart_temperature_end` at `pruning_end`, then stays; hard masks from `harden_at`;
- scores start as each unit's L2 norm divided by the mean norm of its group (|w| / mean |w| for single weights):
  the first soft mask ranks like magnitude, and tau is in units of that mean whatever the layer's weight scale;
- lambda is solved once per optimizer step outside autograd (scores only change at optimizer steps), warm-started
  from the previous step's lambda, which checkpoints keep, so a resumed run computes the same bits.
- `sparsity_distribution="global"` fixes per-group budgets by one magnitude ranking at pruning start, as for every
  method (like-for-like comparisons); lambda stays per group.
- `sparsity_distribution="learned"` is the paper's global option: one lambda per pool of comparable units (every
  unstructured matrix together; all neurons; all heads; all tiles), so the soft masks of all layers together sum to
  the kept count and the scores move mass between layers. The per-layer counts that eval, hardening and finalize
  use come from one ranking of the scores across layers, re-ranked at every exact refresh (`Pruner.step`).
  The forward treats the shared lambda as a constant and `adjust_score_gradients` adds its implicit-gradient term
  before each optimizer step (a rank-one correction per pool), so no layer's backward waits for the others.
"""

from __future__ import annotations

import torch
from torch import nn

from ..fused import FUSED_KINDS, fusable_classes
from ..topk import _SoftTopK, flush_tiny, soft_topk, solve_lambda
from ..units import Member, UnitGroup
from .base import MaskMethod, check_positive, learned_hard_mask, nm_selected_groups, relative_norms


class SmartMethod(MaskMethod):
    name = "smart"
    config_fields = ("score_learning_rate", "smart_temperature_start", "smart_temperature_end")
    learnable_scores = True
    restarts_scores = True
    description = "SMART pruner, learnable scores through a differentiable top-k (Ding et al. 2024, arXiv:2403.19969)"

    def __init__(self, temperature_start: float = 1.0, temperature_end: float = 0.01, shared_lambda: bool = False):
        self.temperature_start = float(temperature_start)
        self.temperature_end = float(temperature_end)
        self.temperature = self.temperature_start
        self.shared_lambda = bool(shared_lambda)  # one lambda per pool of comparable units (all layers) instead of per group

    @classmethod
    def from_config(cls, config) -> SmartMethod:
        return cls(config.smart_temperature_start, config.smart_temperature_end, cls.adjusts_score_gradients(config))

    @classmethod
    def adjusts_score_gradients(cls, config) -> bool:
        return config.sparsity_distribution == "learned"

    def _shares(self, group: UnitGroup) -> bool:
        return self.shared_lambda and group.kind != "n:m"

    @classmethod
    def check_config(cls, config) -> None:
        for name in cls.config_fields:
            check_positive(config, name)
        if config.smart_temperature_end > config.smart_temperature_start:
            raise ValueError(
                f"PDPConfig.smart_temperature_end={config.smart_temperature_end!r} is invalid: the temperature decays, "
                f"so it must not exceed smart_temperature_start={config.smart_temperature_start!r}."
            )

    def temperature_at(self, step: int, schedule) -> float:
        """tau_start * (tau_end / tau_start) ** p, p the linear progress through the ramp (0 before, 1 after)."""
        if step < schedule.start:
            progress = 0.0
        elif step >= schedule.end:
            progress = 1.0
        else:
            progress = (step - schedule.start) / (schedule.end - schedule.start)
        return self.temperature_start * (self.temperature_end / self.temperature_start) ** progress

    def begin_step(self, step: int, schedule) -> None:
        self.temperature = self.temperature_at(step, schedule)

    @torch.no_grad()
    def init_scores(self, group: UnitGroup) -> torch.Tensor:
        return relative_norms(group)

    @torch.no_grad()
    def update(self, group: UnitGroup, zeros: int, exact: bool = True) -> None:
        state, tau = group.state, self.temperature
        state["tau"] = tau
        state.pop("eval_keep", None)
        score = group.score.detach().float()
        if group.kind == "n:m":
            selected = nm_selected_groups(group.scores(), group.n, zeros)
            state["selected"] = None if bool(selected.all()) else selected
            state["lambda"] = solve_lambda(score, group.n, tau, init=state.get("lambda"), dtype=torch.float32)
            return
        if self._shares(group):
            return  # end_update solves one lambda for the whole pool
        if zeros >= group.num_units:  # nothing kept: the mask is exactly zero
            state.pop("lambda", None)
            state["all_pruned"] = True
            return
        state.pop("all_pruned", None)
        k = group.num_units - zeros
        state["lambda"] = solve_lambda(score.reshape(1, -1), k, tau, init=state.get("lambda"), dtype=torch.float32)

    def _fusable(self, group: UnitGroup) -> bool:
        return group.kind in FUSED_KINDS and not self._shares(group)

    @torch.no_grad()
    def update_many(self, items: list[tuple[UnitGroup, int]], exact: bool = True) -> None:
        # Groups of one signature (pdp_hf.fused): every lambda from one Newton iteration over the rows.
        classes, single = fusable_classes(items, lambda g, z: self._fusable(g) and 0 < z < g.num_units)
        for groups, zeros in classes:
            scores = torch.stack([g.score.detach() for g in groups]).view(len(groups), -1)
            kept = torch.tensor([g.num_units - z for g, z in zip(groups, zeros)], dtype=torch.float32,
                                device=scores.device)
            previous = [g.state.get("lambda") for g in groups]
            init = None
            if any(lam is not None for lam in previous):  # a row without a warm start starts at its midpoint
                init = torch.cat([torch.full((1, 1), float("nan"), device=scores.device) if lam is None else lam
                                  for lam in previous])
            lam = solve_lambda(scores.float(), kept, self.temperature, init=init, dtype=torch.float32,
                               independent_rows=True)
            for i, group in enumerate(groups):
                state = group.state
                state["tau"] = self.temperature
                state.pop("eval_keep", None)
                state.pop("all_pruned", None)
                state["lambda"] = lam[i : i + 1]
        for group, zeros in single:
            self.update(group, zeros, exact)

    def fuses(self, group: UnitGroup) -> bool:
        return self._fusable(group) and "lambda" in group.state and not group.state.get("all_pruned")

    def train_unit_masks(self, groups: list[UnitGroup], squared_norms) -> torch.Tensor:
        with torch.autocast(device_type=groups[0].weight.device.type, enabled=False):
            scores = torch.stack([g.score for g in groups])
            lam = torch.cat([g.state["lambda"] for g in groups])
            mask = _SoftTopK.apply(scores.float().view(len(groups), -1), lam, float(groups[0].state["tau"]))
            return mask.view(scores.shape)

    @torch.no_grad()
    def end_update(self, groups: list[UnitGroup]) -> None:
        """With a shared lambda: one lambda per pool such that the soft masks of all its pruning groups together sum
        to their kept units (each group's count comes from the ranking of the learned scores, `Pruner.step`)."""
        if not self.shared_lambda:
            return
        for members in _pools(g for g in groups if self._shares(g)).values():
            kept = sum(g.num_units - g.zeros for g in members)
            if kept <= 0:
                for g in members:
                    g.state.pop("lambda", None)
                    g.state["all_pruned"] = True
                continue
            scores = [g.score.detach() for g in members]
            lam = solve_lambda(scores, kept, self.temperature, init=members[0].state.get("lambda"), dtype=torch.float32)
            for g in members:
                g.state.pop("all_pruned", None)
                g.state["lambda"] = lam

    @torch.no_grad()
    def adjust_score_gradients(self, groups: list[UnitGroup]) -> None:
        """The shared lambda's part of the gradient. The forward treats lambda as a constant, so autograd gives
        grad_i = (d_i / tau) g_i with d = f (1 - f) and g the gradient with respect to the mask; the implicit gradient
        through lambda(s) (the constraint sum f = k over the pool) is grad_i - d_i * sum(grad) / sum(d) over the pool
        (`pdp_hf.topk` for the formula). Linear in the gradients, so it commutes with accumulation, DDP averaging
        and unscaling; gradient clipping scales it too, but measured the norm before it. A group of the pool without
        a gradient (unused in the loss) counts as a zero gradient: it still shares lambda's constraint."""
        if not self.shared_lambda:
            return
        for g in groups:  # an emptied group's score is not in the loss: its zero DDP gradient must not move it
            if g.state.get("all_pruned"):
                g.score.grad = None
        for members in _pools(g for g in groups if self._shares(g) and "lambda" in g.state).values():
            slopes = [self._slope(g) for g in members]
            home = slopes[0].device  # a pool may span devices (device_map): its sums meet on one
            total_d = sum(d.sum(dtype=torch.float64).to(home) for d in slopes)
            if float(total_d) <= 0.0:
                continue  # every mask saturated: no gradient flows through lambda
            grads = [g.score.grad for g in members if g.score.grad is not None]
            if not grads:
                continue
            scale = (sum(grad.sum(dtype=torch.float64).to(home) for grad in grads) / total_d).float()
            for g, d in zip(members, slopes):
                if g.score.grad is None:
                    g.score.grad = torch.zeros_like(g.score)
                g.score.grad.sub_((d * scale.to(d.device)).to(g.score.grad.dtype))

    def _slope(self, group: UnitGroup) -> torch.Tensor:
        f = torch.sigmoid(group.score.detach().float() / group.state["tau"] + group.state["lambda"].to(group.score.device))
        return f * (1 - f)

    def soft_mask(self, group: UnitGroup) -> torch.Tensor:
        """Unit-level soft top-k mask f(s), float32, differentiable in the scores (shape `unit_shape`)."""
        state, score = group.state, group.score
        if state.get("all_pruned"):
            return torch.zeros(group.unit_shape, device=score.device)
        with torch.autocast(device_type=score.device.type, enabled=False):
            lam = state["lambda"].to(score.device)
            if self._shares(group):  # lambda constant here; adjust_score_gradients adds its gradient
                return flush_tiny(torch.sigmoid(score.float() / state["tau"] + lam))
            if group.kind == "n:m":
                mask = soft_topk(score.float(), None, state["tau"], lam=lam)
                if state.get("selected") is not None:
                    mask = torch.where(state["selected"].to(score.device), mask, torch.ones_like(mask))
                return mask
            return soft_topk(score.float().reshape(1, -1), None, state["tau"], lam=lam).view(group.unit_shape)

    def score_unused(self, group: UnitGroup) -> bool:
        return bool(group.state.get("all_pruned"))

    def train_weight(self, group: UnitGroup, member: Member, module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = group.once_per_forward(lambda: self.soft_mask(group))  # one top-k per group, shared by its members
        weight, bias = group.masked(mask, member, module)
        dtype = module.weight.dtype
        return weight.to(dtype), bias if bias is None else bias.to(dtype)

    def hard_mask(self, group: UnitGroup, zeros: int) -> torch.Tensor:
        return learned_hard_mask(group, zeros)

    def eval_mask(self, group: UnitGroup, module: nn.Linear | None = None) -> torch.Tensor:
        # one exact top-k per optimizer step (the scores only change there), not one per eval forward and member
        if "eval_keep" not in group.state:
            group.state["eval_keep"] = self.hard_mask(group, group.zeros)
        return group.state["eval_keep"]

    @torch.no_grad()
    def mask_gap(self, group: UnitGroup) -> torch.Tensor:
        soft = self.soft_mask(group)
        gap = (soft - self.eval_mask(group).float()).abs().sum()
        return gap * (group.numel // soft.numel())

    def stats(self) -> dict[str, float]:
        return {"temperature": self.temperature}

    def state_tensors(self, group: UnitGroup) -> dict[str, torch.Tensor]:
        lam = group.state.get("lambda")
        return {} if lam is None else {"lambda": lam.clone()}  # a shared lambda is one tensor in many groups

    def load_state_tensors(self, group: UnitGroup, tensors: dict[str, torch.Tensor]) -> None:
        if "lambda" in tensors:
            group.state["lambda"] = tensors["lambda"].to(group.weight.device)


def _pools(groups) -> dict[str, list[UnitGroup]]:
    pools: dict[str, list[UnitGroup]] = {}
    for g in groups:
        pools.setdefault(g.pool, []).append(g)
    return pools
