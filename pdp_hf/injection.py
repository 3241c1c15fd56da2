"""Put masks on Linear weights (`apply_pruning`) and take them off with the zeros baked in (`finalize_pruning`).

Why a class swap and not `torch.nn.utils.parametrize`: a parametrization renames `weight` to
`parametrizations.weight.original` in the state_dict. Swapping the module's class to `PrunedLinear` (a subclass
of `nn.Linear` that only changes `forward`) keeps every state_dict key as in plain Transformers, so Trainer
checkpoints hold the dense weights under their usual names, resume loads them strictly, DDP sees the same
parameters, and `finalize_pruning` only has to set the class back.

Where this sits in the data path (targets, units, methods, schedule, pruner, export): docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F
from torch import nn

from .attached import PRUNER_ATTR, _unwrap, get_pruner
from .checkpoint import STATE_NAME
from .config import PDPConfig
from .config_io import UNIT_COSTS_KEY
from .fused import after_forward, before_forward
from .kernels import masked_linear
from .methods import MaskMethod, get_method
from .pruner import Pruner, global_budgets
from .scores import SCORES_ATTR, PruningScores
from .speed_budget import calibrate_unit_costs, check_reachable, measure_unit_costs
from .targets import find_targets, heads_uncut, tied_targets
from .units import Member, UnitGroup, build_unit_groups

logger = logging.getLogger(__name__)

__all__ = ["PrunedLinear", "Pruner", "PruningScores", "apply_pruning", "finalize_pruning", "get_pruner", "global_budgets",
           "SCORES_ATTR", "STATE_NAME"]
_MODULE_ATTRS = ("pdp_method", "pdp_group", "pdp_member")


class PrunedLinear(nn.Linear):
    """An `nn.Linear` whose forward uses the masked weight (and bias). Never constructed: `apply_pruning` swaps
    the class. The module's unit group (`pdp_group`) holds the mask state it shares with the group's other members."""

    pdp_method: MaskMethod
    pdp_group: UnitGroup
    pdp_member: Member

    def pruned_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        # `self`, not `member.module`: under nn.DataParallel a replica runs with its own copies of the weights.
        group, member = self.pdp_group, self.pdp_member
        fused = group._fused  # this forward's masked weights of the whole model at once (pdp_hf.fused)
        if fused is not None and self.training and self is member.module and member.name in fused:
            weight, bias, version = fused[member.name]
            if version == self.weight._version:
                return self._tie_score(weight, bias)
        if group.hard_mask is not None:
            if group.keeps_zeros:  # zeros in place, gradients masked: no pass over the weight in forward
                return self._tie_score(*group.zeros_kept(member, self))
            return self._tie_score(*group.hard_masked(member, self))
        if group.zeros == 0 and not (self.training and self.pdp_method.masks_before_pruning):
            return self._tie_score(self.weight, self.bias)
        if self.training:
            weight, bias = self.pdp_method.train_weight(group, member, self)
            return self._tie_score(weight, bias) if self.pdp_method.score_unused(group) else (weight, bias)
        return self.pdp_method.eval_weight(group, member, self)

    def _tie_score(self, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Under DDP, learned scores the forward does not use (dense stage, after hardening, a group with every unit
        pruned) still get a (zero) gradient: DDP without find_unused_parameters (Trainer's choice with gradient
        checkpointing) expects one for every parameter at every step. One group member carries the score into the
        graph."""
        score = self.pdp_group.score
        if (score is None or not self.training or not torch.is_grad_enabled() or self.pdp_member is not self.pdp_group.members[0]
                or not (torch.distributed.is_available() and torch.distributed.is_initialized())):
            return weight, bias
        return _ZeroGradTie.apply(weight, score), bias

    def _apply(self, fn, recurse=True):
        # The mask state is not made of buffers (DDP would broadcast those every step); it follows .to()/.cuda()
        # here instead, keeping its own dtypes.
        super()._apply(fn, recurse)
        self.pdp_group.to_device(self.weight.device)
        return self

    def fixed_keeps(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(weight, bias or None) 0/1 multipliers when this training forward masks the weight by a mask fixed for the
        step, matrix by matrix (magnitude's ramp, a hardened mask without kept zeros); None otherwise. The forward
        then keeps no masked weight for backward (`kernels.masked_linear`)."""
        group, member = self.pdp_group, self.pdp_member
        if not self.training or group.score is not None or (group._fused is not None and member.name in group._fused):
            return None  # a learned score joins the graph under DDP (`_tie_score`); a fused weight is already made
        if group.hard_mask is not None:
            return None if group.keeps_zeros else group.keep_factors(member, self.weight.device)
        if group.zeros == 0 and not self.pdp_method.masks_before_pruning:
            return None
        return self.pdp_method.train_keeps(group, member, self)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        keeps = self.fixed_keeps()
        if keeps is not None:
            return masked_linear(input, self.weight, self.bias, *keeps)
        weight, bias = self.pruned_weight_and_bias()
        return F.linear(input, weight, bias)


class _ZeroGradTie(torch.autograd.Function):
    """Identity on `weight`; gives `score` a zero gradient (so DDP sees it used) without reading it."""

    @staticmethod
    def forward(ctx, weight, score):
        ctx.score_meta = (score.shape, score.dtype, score.device)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        shape, dtype, device = ctx.score_meta
        return grad, torch.zeros(shape, dtype=dtype, device=device)


def apply_pruning(model: nn.Module, config: PDPConfig) -> nn.Module:
    """Put masks on the matched Linear weights of `model` in place and return it.

    Example:

    ```python
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from pdp_hf import PDPConfig, apply_pruning, finalize_pruning, get_pruner
    >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    >>> model = apply_pruning(model, PDPConfig(target_sparsity=0.5))
    >>> len(get_pruner(model).modules)
    12

    ```
    """
    if not isinstance(config, PDPConfig):
        raise TypeError(f"apply_pruning needs a PDPConfig, got {type(config).__name__}.")
    dataclasses.replace(config)  # validated again: a dataclass can be changed after construction (c.target_sparsity = 1)
    if get_pruner(model) is not None:
        raise ValueError("Pruning is already applied to this model; call finalize_pruning(model) first.")
    names = find_targets(model, config.target_modules)
    tied = {} if config.prune_tied_weights else tied_targets(model, names)
    if tied:
        name, others = next(iter(tied.items()))
        raise ValueError(
            f"{name}.weight is tied to {', '.join(others)}: pruning it would prune {'them' if len(others) > 1 else 'it'} "
            f"too ({len(tied)} tied targets in all). Narrow target_modules, untie the weights "
            "(config.tie_word_embeddings=False), or pass PDPConfig(prune_tied_weights=True) to prune both."
        )
    groups = build_unit_groups(model, names, config)
    method = get_method(config.method).from_config(config)
    masked = [g for g in groups if _will_prune(g, config)]  # the others stay plain Linear
    costs = None
    if config.target_speedup is not None:  # priced on the plain model, before any class swap
        uncut = heads_uncut(model)
        if uncut and any(g.kind == "head" for g in groups):
            raise ValueError(f"target_speedup cannot use heads on {type(model).__name__}: {uncut}, so pruned heads buy "
                             "no speed. Prune FFN neurons for speed (granularity='neuron' or 'attention=...,ffn=neuron').")
        if config.speed_unit_costs is not None:  # priced before, elsewhere: no timing at all
            costs = dict(config.speed_unit_costs)
            check_reachable(costs, groups, config.target_speedup)
        else:
            costs = measure_unit_costs(model, groups, config.speed_batch_size, config.speed_seq_length)
            check_reachable(costs, groups, config.target_speedup)
            if config.speed_calibration_timings:
                costs = calibrate_unit_costs(model, groups, costs, config.target_speedup, config.sparsity_distribution,
                                             config.speed_batch_size, config.speed_seq_length,
                                             config.speed_calibration_timings)
    if method.learnable_scores and masked:
        scores = PruningScores({g.name: method.init_scores(g) for g in masked})
        model.add_module(SCORES_ATTR, scores)
        for group in masked:
            group.score = scores[group.name]
    for group in groups:
        method.init_group(group)
        if not _will_prune(group, config):
            continue  # nothing will be pruned: a dense baseline keeps plain Linear layers and pays no mask cost
        for member in group.members:
            module = member.module
            module.__class__ = PrunedLinear
            module.pdp_method, module.pdp_group, module.pdp_member = method, group, member
    covered = {member.name for group in groups for member in group.members}
    modules = {name: model.get_submodule(name) for name in names if name in covered}
    if len(modules) < len(names):
        logger.info("pdp_hf: granularity %r leaves %d default targets dense.", config.granularity, len(names) - len(modules))
    setattr(model, PRUNER_ATTR, Pruner(config, modules, groups, method, unit_costs=costs))
    model.register_forward_pre_hook(before_forward)  # the whole model's masks in a few operators (pdp_hf.fused)
    model.register_forward_hook(after_forward)
    target = f"target speedup {config.target_speedup}" if costs else f"target sparsity {config.target_sparsity}"
    logger.info("pdp_hf: %s masks (%s) on %d Linear layers in %d unit groups (%s).", config.method, config.granularity,
                len(modules), len(groups), target)
    return model


def _will_prune(group: UnitGroup, config: PDPConfig) -> bool:
    return group.kind == "n:m" or config.target_speedup is not None or config.target_sparsity > 0


@torch.no_grad()
def finalize_pruning(model: nn.Module) -> nn.Module:
    """Harden the masks, bake the zeros into the weights and remove every trace of `apply_pruning`.

    Afterwards each unit group holds exactly its budget of pruned units (round(target * units) per group with the
    uniform distribution): whole zero weights, tiles, N:M patterns, neurons (FFN-in row and bias entry, FFN-out
    column) or heads (Q/K/V rows and bias entries, output-projection columns). The model and its state_dict are
    plain Transformers again.
    """
    model = _unwrap(model)
    pruner = get_pruner(model)
    if pruner is None:
        raise ValueError("This model has no pruning applied (or it was already finalized); nothing to finalize.")
    if not pruner.hardened:
        pruner.harden()
    if pruner.unit_costs and hasattr(model, "config"):  # the export's config and card say what the budgets predict
        model.config.pdp_predicted_speedup = round(pruner.predicted_speedup(), 3)
        setattr(model.config, UNIT_COSTS_KEY, dict(pruner.unit_costs))  # reusable: PDPConfig(speed_unit_costs=...)
    for group in pruner.groups:
        group.zero_pruned_()  # +0.0, not the -0.0 a multiply gives
        for member in group.members:
            module = member.module
            for attr in _MODULE_ATTRS:
                module.__dict__.pop(attr, None)
            module.__class__ = nn.Linear
        group.hard_mask, group.keeps_zeros, group._keep_factors, group.score = None, False, None, None
    if pruner._score_grad_hook is not None:
        pruner._score_grad_hook.remove()
        pruner._score_grad_hook = None
    if isinstance(getattr(model, SCORES_ATTR, None), PruningScores):
        delattr(model, SCORES_ATTR)  # the learned scores leave no trace in the model or its exports
    for hooks, hook in ((model._forward_pre_hooks, before_forward), (model._forward_hooks, after_forward)):
        for key in [k for k, fn in hooks.items() if fn is hook]:
            del hooks[key]
    delattr(model, PRUNER_ATTR)
    return model
