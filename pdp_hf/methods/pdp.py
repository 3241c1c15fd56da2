"""PDP: Parameter-free Differentiable Pruning (Cho, Adya, Naik; NeurIPS 2023; arXiv 2305.11203).

For a weight tensor W with n entries and z = round(r * n) zeros in force:
- t = (max(W_low) + min(W_high)) / 2, the midpoint between the largest pruned and the smallest kept |w|;
- m(w) = softmax((t^2, w^2) / tau)[1] = sigmoid((w^2 - t^2) / tau), computed in float32 (values below 2^-100 as
  exact zeros, `pdp_hf.kernels.pdp_sigmoid`: never reached at the default relative temperature);
- forward uses m(W) * W. No mask parameters: only W is learned, and pruned weights keep receiving gradient.

Choices where the paper is silent (documented in docs/methods.md):
- t is recomputed once per optimizer step outside autograd (the gradient does not flow through t), so
  d(m*w)/dw = m + (2 w^2 / tau) m (1 - m).
- temperature_mode='relative' sets tau_l = temperature * t_l^2 per layer, which makes the mask shape independent
  of each layer's weight scale: m = sigmoid((w^2/t^2 - 1) / temperature). 'absolute' uses tau as given.
"""

from __future__ import annotations

import torch
from torch import nn

from ..fused import (
    FUSED_KINDS,
    FusedPDPMask,
    broadcast_shape,
    fusable_classes,
    restack,
    sampled_weight_pairs,
    select_pairs,
    unit_scores,
)
from ..kernels import KERNELS, pdp_sigmoid
from ..selection import kth_smallest_pair, sampled_kth_pair
from ..units import Member, UnitGroup
from .base import MaskMethod, check_positive, nm_selected_groups

_TINY = torch.finfo(torch.float32).tiny


def pdp_threshold(weight: torch.Tensor, zeros: int, exact: bool = True) -> torch.Tensor:
    """Midpoint between the largest pruned and the smallest kept |w| (float32 scalar).

    `zeros` in [1, n]. With zeros == n there is no kept weight and t is the largest |w|. `exact=False` estimates
    both values from a fixed sample of 65,536 entries (see `pdp_hf.selection.sampled_kth_pair`).

    >>> float(pdp_threshold(torch.tensor([0.1, -0.4, 0.2, 0.3]), 2))
    0.25
    """
    if not 1 <= zeros <= weight.numel():
        raise ValueError(f"zeros must be in [1, {weight.numel()}], got {zeros}.")
    if exact:
        largest_pruned, smallest_kept = kth_smallest_pair(weight.detach().reshape(-1).abs().float(), zeros)
    else:  # reads only the sampled entries
        largest_pruned, smallest_kept = sampled_kth_pair(weight.detach().reshape(-1), zeros, absolute=True)
    if smallest_kept is None:
        return largest_pruned
    return 0.5 * (largest_pruned + smallest_kept)


def pdp_soft_mask(weight: torch.Tensor, threshold: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """m(w) = sigmoid((w^2 - t^2) / tau) in float32, whatever the dtype of `weight` (no overflow for tiny tau)."""
    w2 = weight.float().square()
    return pdp_sigmoid((w2 - threshold.float().square()) / tau)


class _PDPMaskedWeight(torch.autograd.Function):
    """w * sigmoid((w^2 - t^2)/tau) with t and tau constants, in float32.

    Saves only w for backward and recomputes m there, so training holds no per-weight mask tensors (autograd's
    version would keep w^2, m and more for every targeted matrix). Backward: d(m w)/dw = m (1 + (2 w^2/tau)(1 - m)).
    Both directions run as one fused kernel where torch.compile works (`pdp_hf.kernels`, PDPConfig.mask_kernel).
    """

    @staticmethod
    def forward(ctx, weight, t2, tau, kernel):
        ctx.save_for_backward(weight, t2, tau)
        ctx.kernel = kernel
        return KERNELS.forward(weight, t2, tau, kernel)

    @staticmethod
    def backward(ctx, grad_out):
        weight, t2, tau = ctx.saved_tensors
        return KERNELS.backward(weight, grad_out, t2, tau, ctx.kernel), None, None, None


def pdp_masked_weight(weight: torch.Tensor, threshold: torch.Tensor, tau: torch.Tensor, kernel: str = "auto") -> torch.Tensor:
    """m(W) * W with the mask in float32 (autocast off) and the gradient of the paper's formula (t, tau fixed)."""
    with torch.autocast(device_type=weight.device.type, enabled=False):
        t2 = threshold.float().square()
        return _PDPMaskedWeight.apply(weight, t2, tau.float(), kernel)


def relative_tau(threshold: torch.Tensor, temperature: float) -> torch.Tensor:
    return (temperature * threshold.float().square()).clamp_min(_TINY)


class PDPMethod(MaskMethod):
    """PDP on any granularity: the threshold ranks unit norms (|w| for single weights), the soft mask is
    sigmoid((||u||^2 - t^2) / tau) broadcast over the unit. For `n:m` every group of M weights has its own
    threshold (midpoint of its N-th and (N+1)-th largest |w|) and relative tau."""

    name = "pdp"
    config_fields = ("temperature", "temperature_mode")
    description = "PDP, Parameter-free Differentiable Pruning (Cho et al., NeurIPS 2023, arXiv:2305.11203)"

    @classmethod
    def check_config(cls, config) -> None:
        from ..config import TEMPERATURE_MODES

        check_positive(config, "temperature")
        if config.temperature_mode not in TEMPERATURE_MODES:
            raise ValueError(
                f"PDPConfig.temperature_mode={config.temperature_mode!r} is invalid: choose one of {list(TEMPERATURE_MODES)}."
            )

    def stats(self) -> dict[str, float]:
        return {"temperature": self.temperature}

    def __init__(self, temperature: float, temperature_mode: str = "relative", mask_kernel: str = "auto"):
        self.temperature = float(temperature)
        self.temperature_mode = temperature_mode
        self.mask_kernel = mask_kernel

    @classmethod
    def from_config(cls, config) -> PDPMethod:
        return cls(config.temperature, config.temperature_mode, config.mask_kernel)

    @torch.no_grad()
    def update(self, group: UnitGroup, zeros: int, exact: bool = True) -> None:
        if group.kind == "n:m":
            scores = group.scores()
            ordered = torch.sort(scores, dim=-1).values
            selected = nm_selected_groups(scores, group.n, zeros, ordered)
            # Groups not yet N:M-pruned keep every weight at mask 1 exactly (with t = 0 an absolute tau would
            # still damp them); `selected` is None once every group is pruned.
            group.state["selected"] = None if bool(selected.all()) else selected
            t = nm_threshold(scores, group.n, zeros, selected, ordered)
        elif zeros >= group.num_units:
            # Everything pruned: mask 0 exactly (sigmoid(-inf)), not 0.5 for the largest unit at t = max |w|.
            group.state["threshold"] = torch.full((), float("inf"), device=group.weight.device)
            group.state["tau"] = torch.ones((), device=group.weight.device)
            return
        elif group.kind == "unstructured":
            t = pdp_threshold(group.weight, zeros, exact)
        else:
            t = pdp_threshold(group.scores(), zeros, exact)
        # Plain float32 tensors in the group's state (not module buffers): they stay float32 after model.half(),
        # and DDP does not broadcast them (every rank computes them from the same weights).
        group.state["threshold"] = t.float()
        if self.temperature_mode == "relative":
            group.state["tau"] = relative_tau(t, self.temperature)
        else:
            group.state["tau"] = torch.full((), self.temperature, device=t.device)

    def update_many(self, items: list[tuple[UnitGroup, int]], exact: bool = True) -> None:
        # Groups of one signature (pdp_hf.fused): every threshold from one selection along the rows, on |w| for
        # unstructured matrices, on the unit norms for neurons and heads.
        self._update_classes(items, exact, lambda same, zeros: select_pairs(unit_scores(same), zeros, exact))

    def update_each(self, items: list[tuple[UnitGroup, int]], exact: bool = True) -> None:
        # Group by group: only the sampled selections of unstructured matrices are shared, each matrix's sample
        # gathered on its own (no stacked weights).
        self._update_classes(items, exact, lambda same, zeros: None if exact else sampled_weight_pairs(same, zeros))

    @torch.no_grad()
    def _update_classes(self, items: list[tuple[UnitGroup, int]], exact: bool, select) -> None:
        """Thresholds of each signature class from `select(groups, zeros)` (the (k-th, (k+1)-th) pairs, or None for
        the per-group update), the other groups one by one."""
        classes, single = fusable_classes(items, lambda g, z: g.kind in FUSED_KINDS and 0 < z < g.num_units)
        for same, zeros in classes:
            pairs = select(same, zeros)
            if pairs is None:
                single.extend(zip(same, zeros))
                continue
            t = 0.5 * (pairs[0] + pairs[1])
            tau = relative_tau(t, self.temperature) if self.temperature_mode == "relative" else torch.full_like(
                t, self.temperature)
            for i, group in enumerate(same):
                group.state["threshold"], group.state["tau"] = t[i], tau[i]
        for group, zeros in single:
            self.update(group, zeros, exact)

    def fuses(self, group: UnitGroup) -> bool:
        return group.kind in FUSED_KINDS

    def train_weights(self, groups: list[UnitGroup]) -> list[torch.Tensor]:
        weights = [g.weight for g in groups]
        with torch.autocast(device_type=weights[0].device.type, enabled=False):
            t2 = restack([g.state["threshold"] for g in groups]).square()
            tau = restack([g.state["tau"] for g in groups])
            return list(FusedPDPMask.apply(t2, tau, self.mask_kernel, *weights))

    def train_unit_masks(self, groups: list[UnitGroup], squared_norms) -> torch.Tensor:
        with torch.autocast(device_type=groups[0].weight.device.type, enabled=False):
            norms = squared_norms()
            shape = broadcast_shape(norms)
            t2 = restack([g.state["threshold"] for g in groups]).square().view(shape)
            return pdp_sigmoid((norms - t2) / restack([g.state["tau"] for g in groups]).view(shape))

    def soft_mask(self, group: UnitGroup) -> torch.Tensor:
        """Unit-level soft mask in float32 (differentiable through the unit norms)."""
        with torch.autocast(device_type=group.weight.device.type, enabled=False):
            t2 = group.state["threshold"].square()
            return pdp_sigmoid((group.squared_norms() - t2) / group.state["tau"])

    def train_weight(self, group: UnitGroup, member: Member, module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = module.weight
        if group.kind in ("unstructured", "n:m"):
            # The fused Function: one weight per unit, so the mask needs no norm and no autograd graph of its own.
            state, device = group.state, weight.device
            w = weight.view(group.unit_shape)
            masked = pdp_masked_weight(w, state["threshold"].to(device), state["tau"].to(device), self.mask_kernel)
            if state.get("selected") is not None:
                masked = torch.where(state["selected"].to(device), masked, w)
            return masked.view(weight.shape), module.bias
        # Mask math in float32 even under fp16/bf16 autocast; the matmul that follows is autocast as usual.
        mask = group.once_per_forward(lambda: self.soft_mask(group))  # one norm pass per group, not per member
        masked_weight, bias = group.masked(mask, member, module)
        return masked_weight.to(weight.dtype), bias if bias is None else bias.to(weight.dtype)

    def eval_mask(self, group: UnitGroup, module: nn.Linear | None = None) -> torch.Tensor:
        # ||u|| >= t equals the exact top-k mask unless norms tie at the boundary; no selection needed.
        weights = None if module is None or len(group.members) > 1 else {group.members[0].name: module.weight}
        with torch.no_grad():
            norms = group.squared_norms(weights)
            return norms >= group.state["threshold"].to(norms.device).square()

    @torch.no_grad()
    def mask_gap(self, group: UnitGroup) -> torch.Tensor:
        soft = pdp_soft_mask_of(group)
        gap = (soft - self.eval_mask(group).float()).abs().sum()
        return gap * (group.numel // soft.numel())


def pdp_soft_mask_of(group: UnitGroup) -> torch.Tensor:
    t2 = group.state["threshold"].float().square()
    return pdp_sigmoid((group.squared_norms().detach() - t2) / group.state["tau"])


def nm_threshold(
    scores: torch.Tensor, n: int, groups: int, selected: torch.Tensor | None = None, ordered: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-group PDP threshold for N:M, shaped (rows, G, 1): the midpoint of the N-th and (N+1)-th largest |w| of
    each of the `groups` selected groups (see `nm_selected_groups`); 0 (nothing pruned) in the others.

    >>> nm_threshold(torch.tensor([[[0.1, 0.9, 0.8, 0.2]]]), 2, 1).view(-1).tolist()
    [0.5]
    """
    m = scores.shape[-1]
    ordered = torch.sort(scores.float(), dim=-1).values if ordered is None else ordered
    t = 0.5 * (ordered[..., m - n - 1 : m - n] + ordered[..., m - n : m - n + 1])
    selected = nm_selected_groups(scores, n, groups, ordered) if selected is None else selected
    return torch.where(selected, t, torch.zeros_like(t))
