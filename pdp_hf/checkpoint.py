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
from .config_io import read_unit_costs
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
        # the config this state belongs to: a state file copied next to another run's config is refused on load
        "config": json.dumps(_fingerprinted(pruner.config), sort_keys=True),
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
    _check_same_config(_fingerprinted(PDPConfig.from_pretrained(directory)), pruner.config,
                       f"Checkpoint {directory} was made with another PDPConfig",
                       "Resume with the checkpoint's config (PDPConfig.from_pretrained(checkpoint_dir)).")
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        if "config" in meta:  # written since 0.4: the state names its own config
            _check_same_config(json.loads(meta["config"]), pruner.config,
                               f"{path} belongs to another run than {directory}/pruning_config.json and this run",
                               "Use the pruning_state.safetensors written with this checkpoint.")
        if json.loads(meta.get("modules", "[]")) != list(pruner.modules):
            raise ValueError(f"Checkpoint {directory} prunes other modules than this model's targets.")
        groups = json.loads(meta["groups"]) if "groups" in meta else None
        if groups is not None and list(groups) != [g.name for g in pruner.groups]:
            raise ValueError(f"Checkpoint {directory} has other pruning units than this model: {list(groups)}.")
        if pruner.config.target_speedup is not None:  # the saved prices, so budgets fixed later are the same
            costs = json.loads(meta.get("unit_costs", "null"))
            if costs is None:
                raise ValueError(f"Checkpoint {directory} has no unit costs, but its config sets target_speedup.")
            try:  # a tampered price or calibration would fix other budgets than the run that saved them
                pruner.unit_costs = read_unit_costs(costs, {g.kind for g in pruner.groups})
            except ValueError as err:
                raise ValueError(f"Checkpoint {directory} holds unusable unit costs: {err}.") from None
        budgets = json.loads(meta.get("budgets", "null"))
        pruner.budgets = None if budgets is None else _checked_budgets(pruner, budgets, path)
        pruner.hardened = json.loads(meta.get("hardened", "false"))
        if pruner.hardened and pruner.budgets is None:
            raise ValueError(f"{path} says its masks are hardened but holds no budgets: it is damaged.")
        for group in pruner.groups:
            group.state.clear()  # nothing from an earlier run in this process may survive
            group._forward_cache = None
            if pruner.hardened:
                if f"mask.{group.name}" not in f.keys():
                    raise ValueError(f"{path} says its masks are hardened but has no mask for {group.name}.")
                mask = f.get_tensor(f"mask.{group.name}")
                if tuple(mask.shape) != tuple(group.unit_shape):
                    raise ValueError(
                        f"Checkpoint {directory}: the mask of {group.name} has shape {tuple(mask.shape)}, but this "
                        f"model's {group.describe()} units have shape {tuple(group.unit_shape)}."
                    )
                _check_mask_counts(group, mask, pruner.budgets[group.name], path)
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


def _fingerprinted(config: PDPConfig) -> dict:
    """The fields that decide what is pruned (not how fast it runs): what a state and its run must agree on."""
    return json.loads(json.dumps({k: v for k, v in config.to_dict().items() if k not in RUNTIME_FIELDS}))


def _check_same_config(saved: dict, config: PDPConfig, what: str, fix: str) -> None:
    now = _fingerprinted(config)
    diff = {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k) and k != "pdp_hf_version"}
    if diff:
        raise ValueError(f"{what}; differing fields (checkpoint, now): {diff}. {fix}")


def _checked_budgets(pruner, budgets: dict, path: str) -> dict[str, int]:
    """The saved per-group budgets, refused unless they are what this config gives: the same groups, each within its
    units, the uniform counts (or the speed target's, from the saved prices) exactly, the global totals per pool."""
    names = [g.name for g in pruner.groups]
    if not isinstance(budgets, dict) or sorted(budgets) != sorted(names):
        raise ValueError(f"{path}: its budgets are for other unit groups than this model's.")
    for group in pruner.groups:
        value = budgets[group.name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= group.num_units:
            raise ValueError(f"{path}: the budget of {group.name} is {value!r}, not a count of its {group.num_units} units.")
    config = pruner.config
    if config.sparsity_distribution == "uniform" or any(g.kind == "n:m" for g in pruner.groups):
        expected = pruner.compute_budgets() if config.sparsity_distribution == "uniform" else {
            g.name: g.num_units for g in pruner.groups if g.kind == "n:m"}
        wrong = {n: (budgets[n], e) for n, e in expected.items() if budgets[n] != e}
        if wrong:
            name, (saved, want) = next(iter(wrong.items()))
            raise ValueError(
                f"{path}: its budgets are not this config's ({len(wrong)} groups differ; {name} prunes {saved} units, "
                f"this config {want}). The state belongs to another run, or it was changed."
            )
    if config.sparsity_distribution != "uniform" and config.target_speedup is not None:
        from .speed_budget import predicted_speedup, pruned_by_kind, speed_aim

        full = [g.name for g in pruner.groups if budgets[g.name] >= g.num_units]
        aim = speed_aim(pruner.unit_costs, pruner.groups, config.target_speedup)
        if full or predicted_speedup(pruner.unit_costs, pruned_by_kind(pruner.groups, budgets)) < aim:
            raise ValueError(f"{path}: its budgets do not give target_speedup {config.target_speedup} with the saved "
                             f"prices{' (' + full[0] + ' keeps no unit)' if full else ''}. The state belongs to another "
                             "run, or it was changed.")
    elif config.sparsity_distribution != "uniform":
        for pool in dict.fromkeys(g.pool for g in pruner.groups if g.kind != "n:m"):
            pooled = [g for g in pruner.groups if g.pool == pool]
            want = int(round(config.target_sparsity * sum(g.num_units for g in pooled)))
            have = sum(budgets[g.name] for g in pooled)
            if have != want:
                raise ValueError(f"{path}: its {pool} budgets prune {have} units in all; target_sparsity "
                                 f"{config.target_sparsity} prunes {want}. The state belongs to another run, or it was changed.")
    return dict(budgets)


def _check_mask_counts(group, mask: torch.Tensor, budget: int, path: str) -> None:
    """A hardened mask must be boolean and prune exactly its budget (N:M: N kept in every group of M): a mask changed
    by hand would otherwise be trusted by finalize while the stats report the budget."""
    if mask.dtype != torch.bool:
        raise ValueError(f"{path}: the mask of {group.name} is {mask.dtype}, not bool: it was not written by pdp_hf.")
    if group.kind == "n:m":
        if not bool((mask.sum(-1) == group.n).all()):
            raise ValueError(f"{path}: the mask of {group.name} does not keep {group.n} of every {group.m} weights.")
        return
    pruned = int((~mask).sum())
    if pruned != budget:
        raise ValueError(f"{path}: the mask of {group.name} prunes {pruned} units, its budget says {budget}. "
                         "The state was changed or is damaged.")


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
