"""Pruning state in Trainer checkpoints: `pruning_state.safetensors` (budgets, hardened masks) and the config.

Checkpoints keep the dense weights under their usual state_dict keys (and learnable scores, for the methods that
have them, under `pdp_scores.scores.*`); this file holds what else a resumed run needs to continue exactly: the per-group
budgets fixed at pruning start, the method's own tensors (`method.<group>.<name>`, e.g. SMART's lambda) and, once
hardened, each group's unit-level keep-mask (for `unstructured` a weight-shaped mask named after its module, as in
pdp_hf 0.1).
"""

from __future__ import annotations

import json
import os

import torch

from .atomic import atomic_write
from .config import RUNTIME_FIELDS, PDPConfig
from .scores import SCORES_ATTR, PruningScores

STATE_NAME = "pruning_state.safetensors"


def save_state(pruner, directory: str) -> None:
    """Write `pruning_state.safetensors` and `pruning_config.json` of `pruner` into `directory`."""
    from safetensors.torch import save_file

    from .version import __version__

    tensors = {}
    if pruner.hardened:
        tensors = {f"mask.{g.name}": g.hard_mask.contiguous().cpu() for g in pruner.groups}
    else:  # what the method needs for an exact resume (SMART: each group's lambda, its warm start)
        for g in pruner.groups:
            for key, value in pruner.method.state_tensors(g).items():
                tensors[f"method.{g.name}.{key}"] = value.detach().contiguous().cpu()
    metadata = {
        "pdp_hf_version": __version__,
        "budgets": json.dumps(pruner.budgets),
        "hardened": json.dumps(pruner.hardened),
        "modules": json.dumps(list(pruner.modules)),
        "groups": json.dumps({g.name: g.describe() for g in pruner.groups}),
        "unit_costs": json.dumps(pruner.unit_costs),
    }
    os.makedirs(directory, exist_ok=True)
    # never rewritten in place: a save that dies midway leaves the previous state readable
    atomic_write(os.path.join(directory, STATE_NAME), lambda tmp: save_file(tensors, tmp, metadata=metadata))
    pruner.config.save_pretrained(directory)


def load_state(pruner, directory: str) -> None:
    """Restore budgets and hardened masks from a checkpoint written by `save_state` with the same config."""
    from safetensors import safe_open

    path = os.path.join(directory, STATE_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{directory} has no {STATE_NAME}: it was not written by PrunerTrainer, so its pruning state is unknown."
        )
    saved = PDPConfig.from_pretrained(directory)
    diff = {
        k: (v, getattr(pruner.config, k))
        for k, v in saved.to_dict().items()
        if getattr(pruner.config, k) != v and k not in RUNTIME_FIELDS
    }
    if diff:
        raise ValueError(
            f"Checkpoint {directory} was made with another PDPConfig; differing fields (checkpoint, now): {diff}. "
            "Resume with the checkpoint's config (PDPConfig.from_pretrained(checkpoint_dir))."
        )
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        if json.loads(meta.get("modules", "[]")) != list(pruner.modules):
            raise ValueError(f"Checkpoint {directory} prunes other modules than this model's targets.")
        groups = json.loads(meta["groups"]) if "groups" in meta else None
        if groups is not None and list(groups) != [g.name for g in pruner.groups]:
            raise ValueError(f"Checkpoint {directory} has other pruning units than this model: {list(groups)}.")
        if pruner.config.target_speedup is not None:  # the saved prices, so budgets fixed later are the same
            costs = json.loads(meta.get("unit_costs", "null"))
            if costs is None:
                raise ValueError(f"Checkpoint {directory} has no unit costs, but its config sets target_speedup.")
            pruner.unit_costs = {k: float(v) for k, v in costs.items()}
        budgets = json.loads(meta.get("budgets", "null"))
        pruner.budgets = None if budgets is None else {k: int(v) for k, v in budgets.items()}
        pruner.hardened = json.loads(meta.get("hardened", "false"))
        for group in pruner.groups:
            group.state.clear()  # nothing from an earlier run in this process may survive
            group._forward_cache = None
            if pruner.hardened:
                mask = f.get_tensor(f"mask.{group.name}")
                if tuple(mask.shape) != tuple(group.unit_shape):
                    raise ValueError(
                        f"Checkpoint {directory}: the mask of {group.name} has shape {tuple(mask.shape)}, but this "
                        f"model's {group.describe()} units have shape {tuple(group.unit_shape)}."
                    )
                group.hard_mask = mask.to(group.weight.device)
                group.zeros = pruner.budgets[group.name]
            else:
                group.hard_mask, group.zeros = None, 0
                prefix = f"method.{group.name}."
                saved = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
                pruner.method.load_state_tensors(group, saved)
            group.keeps_zeros, group._keep_factors = False, None  # Pruner.set_optimizer (train begin) sets it again
    if pruner.score_parameters():
        _load_scores(pruner, directory)


def _load_scores(pruner, directory: str) -> None:
    """Copy the learned scores (`pdp_scores.*`, saved with the checkpoint's weights) into the pruner's groups, so a
    checkpoint loaded outside Trainer (`pdp-hf export CHECKPOINT`) keeps its learned masks. (Trainer's resume loads
    the same values with the weights.)"""
    from safetensors import safe_open

    keys = {f"{SCORES_ATTR}.scores.{PruningScores.key(g.name)}": g for g in pruner.groups if g.score is not None}
    files = [os.path.join(directory, f) for f in sorted(os.listdir(directory)) if f.endswith(".safetensors") and f != STATE_NAME]
    found = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            for key in set(f.keys()) & set(keys):
                found[key] = f.get_tensor(key)
    missing = sorted(set(keys) - set(found))
    if missing:
        raise ValueError(
            f"Checkpoint {directory} has no learned scores for {len(missing)} unit groups (e.g. {missing[0]}); method "
            f"{pruner.config.method!r} needs them. Was it written by PrunerTrainer with this method?"
        )
    with torch.no_grad():
        for key, group in keys.items():
            group.score.copy_(found[key].to(group.score.device, group.score.dtype))
