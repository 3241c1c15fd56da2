"""Cut pruned structure out of a finalized model: all-zero FFN neurons and attention heads, per layer.

The one implementation behind `optimize_for_inference(backend="slice")`, shrunk exports and the speed budgets'
timing. Layers may keep different numbers; a layer with every unit pruned keeps one all-zero unit.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .attached import get_pruner
from .layers import HEAD_COUNT_ATTRS, layer_heads, role_map
from .targets import find_targets, head_roles, heads_uncut, neuron_roles, parts_of

logger = logging.getLogger(__name__)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _sliced_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding the given rows (output features) and columns (input features) of `linear`."""
    weight = linear.weight.detach()
    bias = None if linear.bias is None else linear.bias.detach()
    if rows is not None:
        weight = weight.index_select(0, rows)
        bias = None if bias is None else bias.index_select(0, rows)
    if cols is not None:
        weight = weight.index_select(1, cols)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.train(linear.training)
    return new


def _keep_at_least_one(keep: torch.Tensor) -> torch.Tensor:
    # A layer with every unit pruned keeps one all-zero unit: its contribution is exactly 0 and shapes stay valid.
    if not bool(keep.any()):
        keep = keep.clone()
        keep[0] = True
    return keep


@torch.no_grad()
def removable_neurons(ffn_in: nn.Linear, ffn_out: nn.Linear) -> torch.Tensor:
    """Bool per FFN neuron: True when removing it changes nothing (its FFN-out column is all zero)."""
    return (ffn_out.weight == 0).all(dim=0)


@torch.no_grad()
def removable_heads(attn_out: nn.Linear, num_heads: int) -> torch.Tensor:
    """Bool per head: True when its columns of the attention output projection are all zero (its output is
    multiplied by zeros, whatever Q, K and V hold)."""
    width = attn_out.in_features // num_heads
    return (attn_out.weight == 0).view(attn_out.out_features, num_heads, width).all(dim=2).all(dim=0)


def _chunked(idx: torch.Tensor, parts: int, chunk: int) -> torch.Tensor:
    """Row indices `idx` of one chunk, repeated in each of `parts` chunks of `chunk` rows (fused Q|K|V, gated FFN-in)."""
    return torch.cat([idx + p * chunk for p in range(parts)]) if parts > 1 else idx


def _slice_neurons(model, index: int, roles: dict[str, str]) -> tuple[int, int] | None:
    ffn_in, ffn_out = model.get_submodule(roles["ffn_in"]), model.get_submodule(roles["ffn_out"])
    keep = _keep_at_least_one(~removable_neurons(ffn_in, ffn_out))
    total = int(keep.numel())
    if int(keep.sum()) == total:
        return None
    idx = keep.nonzero().view(-1)
    for role in neuron_roles(roles)[:-1]:  # FFN-in (and a SwiGLU gate): rows, in each part of a fused matrix
        rows = _chunked(idx, parts_of(model, roles[role]), total)
        _replace(model, roles[role], _sliced_linear(model.get_submodule(roles[role]), rows=rows))
    _replace(model, roles["ffn_out"], _sliced_linear(ffn_out, cols=idx))
    return int(keep.sum()), total


def _slice_heads(model, index: int, roles: dict[str, str]) -> tuple[int, int] | None:
    # The module that owns the head bookkeeping (BertSelfAttention, ViTAttention, DistilBERT's attention).
    layout = head_roles(roles)
    attention = model.get_submodule(roles[layout[0]].rpartition(".")[0])
    heads = layer_heads(model, roles)
    attn_out = model.get_submodule(roles["attn_out"])
    keep = _keep_at_least_one(~removable_heads(attn_out, heads))
    if int(keep.sum()) == heads:
        return None
    width = attn_out.in_features // heads
    idx = (keep.nonzero().view(-1, 1) * width + torch.arange(width, device=keep.device)).view(-1)
    idx = idx.to(attn_out.weight.device)
    for role in layout[:-1]:
        rows = _chunked(idx, parts_of(model, roles[role]), heads * width)
        _replace(model, roles[role], _sliced_linear(model.get_submodule(roles[role]), rows=rows))
    _replace(model, roles["attn_out"], _sliced_linear(attn_out, cols=idx))
    kept = int(keep.sum())
    for attr in HEAD_COUNT_ATTRS:  # the forward reshapes with view(..., -1, head_dim); keep the bookkeeping true
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, kept)
    if isinstance(getattr(attention, "all_head_size", None), int):
        attention.all_head_size = kept * width
    return kept, heads


@torch.no_grad()
def slice_structure(model: nn.Module, heads: bool = True, neurons: bool = True) -> dict:
    """Remove all-zero FFN neurons and attention heads in place; returns what was kept per layer.

    `{"neurons": {layer: [kept, total]}, "heads": {layer: [kept, total]}}` (only layers that changed). The model's
    config is left as it is: per-layer sizes may differ, which a Transformers config cannot express (see
    `export_pruned(..., shrink=True)` for the case it can).
    """
    if get_pruner(model) is not None:
        raise ValueError("This model still carries pruning masks; call finalize_pruning(model) (or export) first.")
    names = find_targets(model, None)
    result: dict[str, dict[int, list[int]]] = {"neurons": {}, "heads": {}}
    layers = sorted(role_map(model, names).items())
    uncut = heads_uncut(model) if heads else None
    if uncut and any(bool(removable_heads(model.get_submodule(r["attn_out"]), layer_heads(model, r)).any())
                     for _, r in layers if head_roles(r)):
        logger.warning("Pruned heads stay in this model as zeros (only FFN neurons are cut): %s.", uncut)
    for index, roles in layers:
        if neurons and {"ffn_in", "ffn_out"} <= roles.keys():
            sliced = _slice_neurons(model, index, roles)
            if sliced:
                result["neurons"][index] = list(sliced)
        if heads and not uncut and head_roles(roles):
            sliced = _slice_heads(model, index, roles)
            if sliced:
                result["heads"][index] = list(sliced)
    return result
