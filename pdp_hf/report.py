"""`sparsity_report`: zeros per targeted Linear layer, during training (hard-mask view) and after finalize."""

from __future__ import annotations

import torch
from torch import nn

from .injection import _unwrap, get_pruner
from .targets import find_targets, role_of

CONVENTION = (
    "sparsity = exactly-zero entries / entries of the targeted Linear weight matrices (encoder attention "
    "Q/K/V/output and FFN in/out by default); biases, embeddings, LayerNorms, pooler and task head are not counted"
)


@torch.no_grad()
def _effective_weight(module: nn.Module) -> torch.Tensor:
    pruner_method = getattr(module, "pdp_method", None)
    if pruner_method is None:
        return module.weight
    if module.pdp_hard_mask is not None:
        return module.weight * module.pdp_hard_mask
    return module.weight * pruner_method.hard_mask(module, module.pdp_zeros)


@torch.no_grad()
def sparsity_report(model: nn.Module, target_modules: list[str] | None = None) -> dict:
    """Per targeted module (full dotted name): shape, zeros, sparsity, role; and totals.

    While pruning is applied, the targets are the pruner's and zeros are counted on the hard-mask view (what
    finalize would bake in now). On a plain model, targets come from `target_modules` or the architecture defaults.

    Example:

    ```python
    >>> report = sparsity_report(model)
    >>> report["total"]["sparsity"]
    0.9
    ```
    """
    model = _unwrap(model)
    pruner = get_pruner(model)
    names = list(pruner.modules) if pruner is not None else find_targets(model, target_modules)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    rows, total_numel, total_zeros = {}, 0, 0
    for name in names:
        weight = _effective_weight(model.get_submodule(name))
        numel, zeros = weight.numel(), int((weight == 0).sum())
        rows[name] = {
            "role": role_of(model_type, name),
            "shape": list(weight.shape),
            "numel": numel,
            "zeros": zeros,
            "sparsity": zeros / numel,
        }
        total_numel += numel
        total_zeros += zeros
    all_params = sum(p.numel() for p in model.parameters())
    return {
        "convention": CONVENTION,
        "modules": rows,
        "total": {"numel": total_numel, "zeros": total_zeros, "sparsity": total_zeros / max(total_numel, 1)},
        "model": {"parameters": all_params, "zeros_in_targets_over_all_parameters": total_zeros / max(all_params, 1)},
    }


def format_report(report: dict) -> str:
    """The report as a Markdown table (used by the model card and the CLI)."""
    lines = ["| module | role | shape | zeros | sparsity |", "|---|---|---|---:|---:|"]
    for name, row in report["modules"].items():
        shape = "x".join(map(str, row["shape"]))
        lines.append(f"| `{name}` | {row['role']} | {shape} | {row['zeros']:,} | {row['sparsity']:.4f} |")
    t = report["total"]
    lines.append(f"| **total** | | {t['numel']:,} | {t['zeros']:,} | {t['sparsity']:.4f} |")
    return "\n".join(lines)
