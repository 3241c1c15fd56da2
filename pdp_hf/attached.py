"""Where `apply_pruning` keeps the `Pruner` on a model, and how to find it through wrappers."""

from __future__ import annotations

from torch import nn

PRUNER_ATTR = "_pdp_pruner"


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def get_pruner(model: nn.Module):
    """The `Pruner` attached by `apply_pruning`, or None (also through DDP-style `.module` wrappers)."""
    return getattr(_unwrap(model), PRUNER_ATTR, None)
