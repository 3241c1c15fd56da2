"""The training loop's optimizer as the pruner sees it: through wrappers (accelerate, DeepSpeed), and its per-weight
state (zeroed for the pruned weights at hardening, unless it is quantized)."""

from __future__ import annotations

import torch


def _optimizer_chain(optimizer) -> list:
    """The optimizer and what it wraps, outermost first: accelerate's AcceleratedOptimizer (whose `step` runs the
    inner one's, after unscaling, and only on steps that really update), DeepSpeed's ZeRO optimizer, the torch one."""
    chain = [optimizer]
    while hasattr(chain[-1], "optimizer"):
        chain.append(chain[-1].optimizer)
    return chain


def _unwrap_optimizer(optimizer, attribute: str | None = None):
    """The outermost optimizer in the chain that has `attribute` (None: the innermost one)."""
    chain = _optimizer_chain(optimizer)
    return next((o for o in chain if attribute is not None and hasattr(o, attribute)), chain[-1])


def _from_deepspeed(obj) -> bool:
    return type(obj).__module__.startswith("deepspeed")


def _is_deepspeed(optimizer) -> bool:
    """Whether DeepSpeed's optimizer is the given one or anywhere inside it."""
    return any(_from_deepspeed(o) for o in _optimizer_chain(optimizer))


def _quantized_state(optimizer, state: dict, modules) -> str | None:
    """What makes `optimizer`'s per-weight state other than plain floats (a quantized optimizer: bitsandbytes,
    torchao's low-bit AdamW), or None."""
    for o in _optimizer_chain(optimizer):
        kind = type(o)
        if kind.__module__.split(".")[0] in ("bitsandbytes", "torchao") or any(b in kind.__name__ for b in ("8bit", "4bit")):
            return f"quantized state ({kind.__module__}.{kind.__name__})"
    for module in modules:
        for param in (module.weight, module.bias):
            for key, value in state.get(param, {}).items() if param is not None else ():
                if isinstance(value, torch.Tensor) and value.numel() == param.numel() and not value.is_floating_point():
                    return f"{value.dtype} state ({key!r})"
                if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > 1 and (
                        value.numel() != param.numel() or value.shape != param.shape):
                    return f"state of another shape ({key!r}: {tuple(value.shape)})"
    return None


def optimizer_state(optimizer) -> dict:
    """`optimizer.state` (param -> dict of tensors) through wrappers such as accelerate's AcceleratedOptimizer."""
    return getattr(_unwrap_optimizer(optimizer, "state"), "state", {})
