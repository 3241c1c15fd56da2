"""Budgets set by speed: `PDPConfig(target_speedup=2.0)` with heads and/or FFN neurons.

When pruning is applied, a short timing of the model's real shapes on its own device gives a cost per unit type:
the forward time saved per head and per FFN neuron removed, and the dense forward time (`measure_unit_costs`). At
pruning start the budgets are fixed so that the predicted time is dense / target:

- `sparsity_distribution="uniform"` (`uniform_speed_budgets`): every layer prunes the same fraction of its heads and
  of its neurons, the smallest fraction that reaches the target;
- `"global"` (`speed_budgets`): units are ranked over all layers and both kinds by squared norm (the sum of the
  squares of every weight a unit spans, so a head and a neuron are scored in the same units) per second of cost,
  and the lowest are pruned first: uneven layers, and heads go first wherever they save more time per unit of
  squared norm.


    predicted speedup = T_dense / (T_dense - sum over pruned units of their cost)

Every layer keeps at least one head and one neuron. The costs are measured once, broadcast from rank 0 under
torch.distributed (every rank then fixes the same budgets), and saved with the pruning state, so a resumed run
fixes the budgets the uninterrupted one would.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time

import torch
from torch import nn

from .dummy_inputs import dummy_inputs
from .slicing import slice_structure

logger = logging.getLogger(__name__)

KINDS = ("head", "neuron")


def _median_forward_seconds(model: nn.Module, inputs: dict, rounds: int) -> float:
    synchronize = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(rounds + 1):  # the first call warms up
            synchronize()
            start = time.perf_counter()
            model(**inputs)
            synchronize()
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def _cut(model: nn.Module, groups, kinds: tuple[str, ...], keep_of) -> int:
    """Zero all but `keep_of(num_units)` units of every group of `kinds` in `model` (a copy) and slice them out;
    returns the units cut."""
    cut = 0
    for group in groups:
        if group.kind not in kinds:
            continue
        kept = keep_of(group.num_units)
        keep = torch.zeros(group.num_units, dtype=torch.bool)
        keep[:kept] = True
        for member in group.members:
            module = model.get_submodule(member.name)
            weight_mask, bias_mask = group.expand(keep.to(module.weight.device), member)
            module.weight.mul_(weight_mask)
            if bias_mask is not None and module.bias is not None:
                module.bias.mul_(bias_mask)
        cut += group.num_units - kept
    slice_structure(model, heads="head" in kinds, neurons="neuron" in kinds)
    return cut


def measure_unit_costs(model: nn.Module, groups, batch: int, seq: int, rounds: int = 5) -> dict[str, float]:
    """Seconds per forward of the dense model ("dense"), seconds saved per head and per neuron removed ("head",
    "neuron"), and the time with one head and one neuron left per layer ("floor"), measured on the model's device
    at `batch` x `seq`, all variants timed in turns. The half-cut copies (half of every layer's heads, or neurons,
    sliced out) give each kind's price; the floor copy calibrates them, so that pricing every removable unit
    predicts the floor that was measured. Each time is the fastest of at least two blocks of `rounds` forwards
    (more, up to MAX_BLOCKS, until two blocks agree). Under torch.distributed, rank 0's values are broadcast."""
    kinds = tuple(k for k in KINDS if any(g.kind == k for g in groups))
    was_training = model.training
    model.eval()
    try:
        seq = min(seq, getattr(model.config, "max_position_embeddings", None) or seq)
        inputs = dummy_inputs(model.config, batch, seq, next(model.parameters()).device, seed=0)
        variants = {"dense": (model, 0)}
        for kind in kinds:
            copied = copy.deepcopy(model)
            variants[kind] = (copied, _cut(copied, groups, (kind,), lambda n: n - n // 2))
        floor = copy.deepcopy(model)
        variants["floor"] = (floor, _cut(floor, groups, kinds, lambda n: 1))
        for variant, _ in variants.values():  # first calls allocate and initialize kernels: not part of the price
            _median_forward_seconds(variant, inputs, 2)
        blocks: list[dict[str, list[float]]] = []
        while len(blocks) < 2 or (len(blocks) < MAX_BLOCKS and _disagreement(blocks[-2], blocks[-1])):
            block = {key: [] for key in variants}
            for _ in range(rounds):
                for key, (variant, _) in variants.items():
                    block[key].append(_median_forward_seconds(variant, inputs, 1))
            blocks.append(block)
    finally:
        model.train(was_training)
    times = {key: min(min(block[key]) for block in blocks) for key in variants}
    _warn_if_noisy(blocks)
    dense = times["dense"]
    totals = {kind: sum(g.num_units - 1 for g in groups if g.kind == kind) for kind in kinds}
    # a timing too noisy to see a cut still prices the unit above zero
    prices = {kind: max(dense - times[kind], 0.01 * dense) / variants[kind][1] for kind in kinds}
    removable = max(dense - times["floor"], 0.01 * dense)
    scale = removable / sum(prices[k] * totals[k] for k in kinds)
    return _broadcast({"dense": dense, **{k: prices[k] * scale for k in kinds}})


# Blocks of `rounds` timings per variant are taken until the fastest time of every variant agrees within AGREE between
# the last two blocks, at most MAX_BLOCKS blocks. Another job on the device only ever slows a forward down, so the
# fastest of many timings is the device's own time (a median moves with the load), and two blocks that agree show
# that it was seen.
AGREE = 0.05
MAX_BLOCKS = 4


def _disagreement(first: dict[str, list[float]], second: dict[str, list[float]]) -> tuple[str, float, float] | None:
    """(variant, fastest in `first`, fastest in `second`) of the worst disagreement above AGREE, or None."""
    worst = None
    for key in first:
        a, b = min(first[key]), min(second[key])
        gap = abs(a - b) / max(min(a, b), 1e-12)
        if gap > AGREE and (worst is None or gap > worst[0]):
            worst = (gap, key, a, b)
    return None if worst is None else worst[1:]


def _warn_if_noisy(blocks: list[dict[str, list[float]]]) -> None:
    """Say so when the device stayed busy while pricing: the prices of heads and neurons are differences of forward
    times, and another job on the device can change them enough to give other budgets (a run asked for 3x on this
    project's 2-core CPU under load kept 1 head per layer and measured 10x)."""
    worst = _disagreement(blocks[-2], blocks[-1])
    if worst is not None:
        key, a, b = worst
        logger.warning(
            "pdp_hf: the timings that price target_speedup were noisy: the fastest %s forward took %.1f ms in one "
            "block of %d rounds and %.1f ms in the next, after %d blocks. Budgets priced on a busy device can miss "
            "the target by far. Price on an idle device (or pass the prices of an idle run as "
            "PDPConfig.speed_unit_costs), and check the export with `pdp-hf speed` against the predicted speedup in "
            "its card.", key, 1000 * a, len(blocks[-1][key]), 1000 * b, len(blocks))


def _broadcast(costs: dict[str, float]) -> dict[str, float]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return costs
    keys = ["dense", *KINDS]  # one broadcast; -1 marks a kind the model does not price
    values = torch.tensor([costs.get(k, -1.0) for k in keys], dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        values = values.cuda()
    torch.distributed.broadcast(values, src=0)
    return {k: float(v) for k, v in zip(keys, values.cpu().tolist()) if v >= 0}


def predicted_speedup(costs: dict[str, float], pruned: dict[str, int]) -> float:
    """T_dense / (T_dense - saved) for `pruned` units per kind."""
    saved = sum(costs[kind] * count for kind, count in pruned.items())
    return costs["dense"] / max(costs["dense"] - saved, 1e-12)


def best_reachable(costs: dict[str, float], groups) -> float:
    """The speedup with every group down to one unit."""
    pruned = {}
    for group in groups:
        pruned[group.kind] = pruned.get(group.kind, 0) + group.num_units - 1
    return predicted_speedup(costs, pruned)


def check_reachable(costs: dict[str, float], groups, target: float) -> None:
    best = best_reachable(costs, groups)
    if best < target:
        raise ValueError(
            f"PDPConfig.target_speedup={target} cannot be reached on this device: with one head and one neuron left "
            f"in every layer the predicted speedup is {best:.2f}x (dense forward {1000 * costs['dense']:.1f} ms; the "
            f"rest is embeddings, normalization and the head). Set target_speedup to at most {best:.2f}, or prune "
            "more kinds of units (granularity='attention=head,ffn=neuron')."
        )


def speed_budgets(groups, costs: dict[str, float], target: float, scores: dict[str, torch.Tensor]) -> dict[str, int]:
    """Pruned units per group: units ranked over all groups by `scores` (comparable across groups and kinds: squared
    unit norms) per unit of cost, the lowest pruned first until the predicted speedup reaches `target`; each group keeps
    at least one unit. Ties go to the earlier group and unit."""
    check_reachable(costs, groups, target)
    need = costs["dense"] * (1 - 1 / target)
    rows = []
    for index, group in enumerate(groups):
        values = scores[group.name].detach().float().reshape(-1).cpu()
        order = torch.argsort(values, stable=True)[: group.num_units - 1]  # the strongest unit always stays
        cost = costs[group.kind]
        rows += [(float(values[u]) / cost, index, rank, cost) for rank, u in enumerate(order.tolist())]
    rows.sort()
    budgets = {g.name: 0 for g in groups}
    saved = 0.0
    for _, index, rank, cost in rows:
        if saved >= need:
            break
        name = groups[index].name
        if budgets[name] == rank:  # a group's units go in its own score order
            budgets[name] += 1
            saved += cost
    return budgets


def uniform_speed_budgets(groups, costs: dict[str, float], target: float) -> dict[str, int]:
    """Pruned units per group: the same fraction s of every group's units, round(s * units) capped at all but one, for
    the smallest s on a 1/1000 grid whose predicted speedup reaches `target`."""
    check_reachable(costs, groups, target)
    for step in range(1001):
        budgets = {g.name: min(int(round(step / 1000 * g.num_units)), g.num_units - 1) for g in groups}
        pruned: dict[str, int] = {}
        for g in groups:
            pruned[g.kind] = pruned.get(g.kind, 0) + budgets[g.name]
        if predicted_speedup(costs, pruned) >= target:
            return budgets
    return budgets  # unreachable: check_reachable raised, and s = 1 prunes all but one unit everywhere
