"""`sparsity_report`: zeros per targeted Linear layer, during training (hard-mask view) and after finalize."""

from __future__ import annotations

import re

import torch
from torch import nn

from .config import PDPConfig
from .injection import _unwrap, get_pruner
from .targets import find_targets, role_of
from .units import UnitGroup, build_unit_groups

CONVENTION = (
    "sparsity = exactly-zero entries / entries of the targeted Linear weight matrices (encoder attention "
    "Q/K/V/output and FFN in/out by default); biases, embeddings, LayerNorms, pooler and task head are not counted"
)


@torch.no_grad()
def _effective_weights(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """Each module's weight as finalize would leave it now (the pruner's hard view), or as it is on a plain model."""
    pruner = get_pruner(model)
    if pruner is None:
        return {name: model.get_submodule(name).weight for name in names}
    weights = {}
    for group in pruner.groups:
        keep = pruner.hard_view(group)
        for member in group.members:
            weights[member.name] = group.masked(keep, member)[0]
    return weights


@torch.no_grad()
def units_report(groups: list[UnitGroup], weights: dict[str, torch.Tensor]) -> dict:
    """Per unit group: granularity, units, pruned units (all-zero units; N:M: groups with at most N nonzeros)."""
    rows = {}
    for group in groups:
        members = {m.name: weights[m.name] for m in group.members}
        if group.kind == "n:m":
            nonzeros = (members[group.members[0].name] != 0).view(group.unit_shape).sum(-1)
            pruned = int((nonzeros <= group.n).sum())
        else:
            pruned = int((group.squared_norms(members) == 0).sum())
        rows[group.name] = {
            "granularity": group.describe(),
            "modules": [m.name for m in group.members],
            "units": group.num_units,
            "pruned_units": pruned,
        }
    return rows


@torch.no_grad()
def sparsity_report(model: nn.Module, target_modules: list[str] | None = None, config=None) -> dict:
    """Per targeted module (full dotted name): shape, zeros, sparsity, role; per unit group: pruned units; totals.

    While pruning is applied, the targets and units are the pruner's and zeros are counted on the hard-mask view
    (what finalize would bake in now). On a plain model, targets come from `config.target_modules`,
    `target_modules` or the architecture defaults, and units from `config.granularity` (unstructured without one).

    Example:

    ```python
    >>> report = sparsity_report(model)  # doctest: +SKIP
    >>> report["total"]["sparsity"]  # doctest: +SKIP
    0.9

    ```
    """
    model = _unwrap(model)
    pruner = get_pruner(model)
    if pruner is not None:
        names, groups = list(pruner.modules), pruner.groups
    else:
        config = config or PDPConfig(target_modules=target_modules)
        names = find_targets(model, target_modules or config.target_modules)
        groups = build_unit_groups(model, names, config)
        covered = {member.name for group in groups for member in group.members}
        names = [name for name in names if name in covered]
    weights = _effective_weights(model, names)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    rows, total_numel, total_zeros = {}, 0, 0
    for name in names:
        weight = weights[name]
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
    # the model's own parameters: learned mask scores (pdp_scores, while masks are live) are not part of it
    all_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("pdp_scores."))
    return {
        "convention": CONVENTION,
        "modules": rows,
        "units": units_report(groups, weights),
        "total": {"numel": total_numel, "zeros": total_zeros, "sparsity": total_zeros / max(total_numel, 1)},
        "model": {"parameters": all_params, "zeros_in_targets_over_all_parameters": total_zeros / max(all_params, 1)},
    }


REPORT_NAME = "sparsity_report.json"


def export_report(directory: str) -> dict | None:
    """The `sparsity_report.json` an export holds (written before any shrinking, so it counts cut-out neurons as
    pruned weights of the original shapes), or None for a folder without one."""
    import json
    import os

    path = os.path.join(str(directory), REPORT_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def model_sparsity(model: nn.Module, directory: str | None = None, config=None) -> float:
    """Sparsity of the targeted weights of `model`, loaded from `directory`: measured on the model, unless some
    targeted matrix is smaller than the export's report says (a `shrink=True` export: the cut neurons hold no zeros
    any more), where the export's own report, counted on the original shapes, is the answer."""
    stored = export_report(directory) if directory else None
    if stored is not None:
        model = _unwrap(model)
        for name, row in stored["modules"].items():
            try:
                shape = list(model.get_submodule(name).weight.shape)
            except AttributeError:
                continue
            if shape != row["shape"]:
                return stored["total"]["sparsity"]
    return sparsity_report(model, config=config)["total"]["sparsity"]


def format_report(report: dict) -> str:
    """The report as a Markdown table (used by the model card and the CLI)."""
    lines = ["| module | role | shape | zeros | sparsity |", "|---|---|---|---:|---:|"]
    for name, row in report["modules"].items():
        shape = "x".join(map(str, row["shape"]))
        lines.append(f"| `{name}` | {row['role']} | {shape} | {row['zeros']:,} | {row['sparsity']:.4f} |")
    t = report["total"]
    lines.append(f"| **total** | | {t['numel']:,} | {t['zeros']:,} | {t['sparsity']:.4f} |")
    structured = {k: v for k, v in report.get("units", {}).items() if v["granularity"] != "unstructured"}
    if structured:
        lines += ["", "| unit group | granularity | units | pruned units |", "|---|---|---:|---:|"]
        for name, row in structured.items():
            lines.append(f"| `{name}` | {row['granularity']} | {row['units']:,} | {row['pruned_units']:,} |")
    return "\n".join(lines)


def plot_report(report: dict, path: str, title: str | None = None) -> str:
    """PNG of sparsity by layer (x) for each module role (one line per role). Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("Plotting needs matplotlib: pip install 'pdp-hf[plot]'.") from err
    series: dict[str, list[tuple[int, float]]] = {}
    for name, row in report["modules"].items():
        match = re.search(r"\.(\d+)\.", name)
        layer = int(match.group(1)) if match else 0
        series.setdefault(row["role"], []).append((layer, 100 * row["sparsity"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    for role, points in sorted(series.items()):
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=role)
    total = 100 * report["total"]["sparsity"]
    ax.axhline(total, color="gray", linestyle="--", linewidth=1, label=f"all targets: {total:.1f}%")
    ax.set_xlabel("layer")
    ax.set_ylabel("sparsity (% zeros)")
    ax.set_ylim(0, 100)
    ax.set_title(title or "Sparsity by layer and module role")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
