"""Where the targeted modules sit in the model: each one's layer index and role, and each attention's head count.

Structured units span several modules of one layer (a neuron: FFN-in row and FFN-out column; a head: Q/K/V rows
and output-projection columns); these helpers find them by the layer number in the module name and by the
architecture's role table (`pdp_hf.targets`).
"""

from __future__ import annotations

import re

from torch import nn

from .targets import head_roles, parts_of, role_of


def layer_match(name: str) -> re.Match:
    match = re.search(r"\.(\d+)\.", name)
    if match is None:
        raise ValueError(f"Cannot tell the layer index of {name!r}; structured granularities need numbered layers.")
    return match


def layer_index(name: str) -> int:
    return int(layer_match(name).group(1))


def role_map(model: nn.Module, names: list[str]) -> dict[int, dict[str, str]]:
    """Layer index -> {role: module name} for the targeted modules whose role the architecture table knows."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    layers: dict[int, dict[str, str]] = {}
    for name in names:
        role = role_of(model_type, name)
        if role != "other":
            layers.setdefault(layer_index(name), {})[role] = name
    return layers


HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads", "n_heads")


def head_count(model: nn.Module, query_name: str, parts: int = 1) -> int:
    """Heads of the attention that owns `query_name` (its Q, or fused QKV matrix of `parts` chunks): the attention
    module's own count (it differs from the config's once heads were sliced out), else its rows over its `head_dim`
    (ModernBERT keeps no count: its forward infers the heads from the shapes), else the config's."""
    attention = model.get_submodule(query_name.rpartition(".")[0])
    for attr in HEAD_COUNT_ATTRS:
        value = getattr(attention, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    head_dim = getattr(attention, "head_dim", None)
    if isinstance(head_dim, int) and head_dim > 0:
        return model.get_submodule(query_name).out_features // (parts * head_dim)
    for attr in HEAD_COUNT_ATTRS:
        value = getattr(getattr(model, "config", None), attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError("Head granularity needs the model's head count (config.num_attention_heads); none was found.")


def layer_heads(model: nn.Module, roles: dict[str, str]) -> int:
    """Heads of one layer from its role -> name map (separate Q/K/V or a fused QKV)."""
    first = roles[head_roles(roles)[0]]
    return head_count(model, first, parts_of(model, first))
