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
    """Zero all but `keep_of(group)` units of every group of `kinds` in `model` (a copy) and slice them out; returns
    the units cut. Which units stay does not change the speed: the first ones."""
    cut = 0
    for group in groups:
        if group.kind not in kinds:
            continue
        kept = keep_of(group)
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


def _fastest_times(variants: dict[str, nn.Module], inputs: dict, rounds: int) -> dict[str, float]:
    """The fastest forward of each variant, timed in turns: blocks of `rounds` timings until the last two blocks
    agree (at most MAX_BLOCKS, then a warning). The first calls allocate and initialize kernels: not timed."""
    for variant in variants.values():
        _median_forward_seconds(variant, inputs, 2)
    blocks: list[dict[str, list[float]]] = []
    while len(blocks) < 2 or (len(blocks) < MAX_BLOCKS and _disagreement(blocks[-2], blocks[-1])):
        block = {key: [] for key in variants}
        for _ in range(rounds):
            for key, variant in variants.items():
                block[key].append(_median_forward_seconds(variant, inputs, 1))
        blocks.append(block)
    _warn_if_noisy(blocks)
    return {key: min(min(block[key]) for block in blocks) for key in variants}


def _timing_inputs(model: nn.Module, batch: int, seq: int) -> dict:
    seq = min(seq, getattr(model.config, "max_position_embeddings", None) or seq)
    return dummy_inputs(model.config, batch, seq, next(model.parameters()).device, seed=0)


def measure_unit_costs(model: nn.Module, groups, batch: int, seq: int, rounds: int = 5) -> dict[str, float]:
    """Seconds per forward of the dense model ("dense"), seconds saved per head and per neuron removed ("head",
    "neuron"), and the time with one head and one neuron left per layer ("floor"), measured on the model's device
    at `batch` x `seq`, all variants timed in turns. The half-cut copies (half of every layer's heads, or neurons,
    sliced out) give each kind's price; the floor copy calibrates them, so that pricing every removable unit
    predicts the floor that was measured. Each time is the fastest of at least two blocks of `rounds` forwards
    (more, up to MAX_BLOCKS, until two blocks agree). Under torch.distributed, rank 0's values are broadcast."""
    kinds = _kinds(groups)
    was_training = model.training
    model.eval()
    try:
        inputs = _timing_inputs(model, batch, seq)
        variants = {"dense": (model, 0)}
        for kind in kinds:
            copied = copy.deepcopy(model)
            variants[kind] = (copied, _cut(copied, groups, (kind,), lambda g: g.num_units - g.num_units // 2))
        floor = copy.deepcopy(model)
        variants["floor"] = (floor, _cut(floor, groups, kinds, lambda g: 1))
        times = _fastest_times({key: variant for key, (variant, _) in variants.items()}, inputs, rounds)
    finally:
        model.train(was_training)
    dense = times["dense"]
    totals = {kind: sum(g.num_units - 1 for g in groups if g.kind == kind) for kind in kinds}
    # a timing too noisy to see a cut still prices the unit above zero
    prices = {kind: max(dense - times[kind], 0.01 * dense) / variants[kind][1] for kind in kinds}
    removable = max(dense - times["floor"], 0.01 * dense)
    scale = removable / sum(prices[k] * totals[k] for k in kinds)
    return _broadcast({"dense": dense, **{k: prices[k] * scale for k in kinds}})


def _kinds(groups) -> tuple[str, ...]:
    return tuple(k for k in KINDS if any(g.kind == k for g in groups))


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


def _broadcast_values(values: list[float]) -> list[float]:
    """Rank 0's `values` on every rank under torch.distributed (one broadcast), else `values`."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        tensor = tensor.cuda()
    torch.distributed.broadcast(tensor, src=0)
    return tensor.cpu().tolist()


def _broadcast(costs: dict[str, float]) -> dict[str, float]:
    keys = ["dense", *KINDS, "calibration"]  # -1 marks a value the model does not have
    values = _broadcast_values([costs.get(k, -1.0) for k in keys])
    return {k: float(v) for k, v in zip(keys, values) if v >= 0}


def predicted_speedup(costs: dict[str, float], pruned: dict[str, int]) -> float:
    """T_dense / (T_dense - saved) for `pruned` units per kind: the prices alone (`calibrated_speedup` corrects it)."""
    saved = sum(costs[kind] * count for kind, count in pruned.items() if kind in KINDS)
    return costs["dense"] / max(costs["dense"] - saved, 1e-12)


def pruned_by_kind(groups, budgets: dict[str, int]) -> dict[str, int]:
    pruned: dict[str, int] = {}
    for group in groups:
        pruned[group.kind] = pruned.get(group.kind, 0) + budgets[group.name]
    return pruned


def calibrated_speedup(costs: dict[str, float], pruned: dict[str, int]) -> float:
    """The prices' prediction times the calibration (1 when the shrunk shapes were not timed)."""
    return predicted_speedup(costs, pruned) * costs.get("calibration", 1.0)


def speed_aim(costs: dict[str, float], groups, target: float) -> float:
    """The speedup the prices must predict for the shrunk model to measure `target`: target / calibration, at most
    the best the prices reach (one unit per group)."""
    return min(target / costs.get("calibration", 1.0), best_reachable(costs, groups))


def best_reachable(costs: dict[str, float], groups) -> float:
    """The speedup the prices predict with every group down to one unit."""
    return predicted_speedup(costs, pruned_by_kind(groups, {g.name: g.num_units - 1 for g in groups}))


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
        if predicted_speedup(costs, pruned_by_kind(groups, budgets)) >= target:
            return budgets
    return budgets  # unreachable: check_reachable raised, and s = 1 prunes all but one unit everywhere


def norm_scores(groups) -> dict[str, torch.Tensor]:
    """Squared unit norms: the scores `speed_budgets` ranks (one ranking per second saved)."""
    return {g.name: g.scores().float().square() for g in groups}


def solve_speed_budgets(groups, costs: dict[str, float], aim: float, distribution: str) -> dict[str, int]:
    """Pruned units per group whose prices predict `aim` (`speed_aim`), in one fraction per layer ("uniform") or
    ranked by squared norm per unit of cost over all layers ("global")."""
    if distribution == "uniform":
        return uniform_speed_budgets(groups, costs, aim)
    return speed_budgets(groups, costs, aim, norm_scores(groups))


def calibrate_unit_costs(model: nn.Module, groups, costs: dict[str, float], target: float, distribution: str,
                         batch: int, seq: int, timings: int = 3, rounds: int = 5) -> dict[str, float]:
    """`costs` with a "calibration": the factor by which the shrunk model's measured speedup differs from what the
    prices predict, so that the budgets they fix measure `target` on this device, not only predict it. A cost per
    unit is linear in the units kept, and a forward is not: at batch 1 narrow matrices run less efficiently (MiniLM
    priced at batch 1 for 2x kept 30 of 72 heads and measured 1.74x). Each of up to `timings` rounds fixes the
    budgets for the current aim, cuts a copy of `model` to them and times it against the dense model in turns (the
    fastest of agreeing blocks, as the prices); while they measure less than `target`, the next aim corrects by
    measured / predicted. The first budgets that measure `target` are kept (the prices' own budgets when they do:
    calibration 1, never fewer units pruned than the prices ask for); if none do, the last correction, with a
    warning. The global distribution is timed with the budgets the current weights' norms give; its budgets at
    pruning start rank the weights of then. Under torch.distributed, rank 0's calibration is broadcast. Raises
    ValueError, naming the measured speedup, when one unit per group does not reach `target`."""
    calibration, floor = _timed_calibration(model, groups, costs, target, distribution, batch, seq, timings, rounds)
    # every rank takes rank 0's outcome, a refusal too (a rank that raised alone would leave the others waiting)
    calibration, floor = _broadcast_values([calibration, floor])
    if floor:
        raise ValueError(
            f"PDPConfig.target_speedup={target} cannot be reached on this device: with one head and one neuron left in "
            f"every layer the shrunk model measures {floor:.2f}x (batch {batch} x {seq}). Set target_speedup to at "
            f"most {floor:.2f}, or prune more kinds of units.")
    return {**costs, "calibration": calibration}


def _timed_calibration(model: nn.Module, groups, costs: dict[str, float], target: float, distribution: str, batch: int,
                       seq: int, timings: int, rounds: int) -> tuple[float, float]:
    """(calibration, 0.0), or (1.0, the speedup one unit per group measured) when even that misses `target`."""
    kinds = _kinds(groups)
    tried: list[float] = []  # measured speedups
    calibration = 1.0
    was_training = model.training
    model.eval()
    try:
        inputs = _timing_inputs(model, batch, seq)
        for _ in range(timings):
            aim = speed_aim({**costs, "calibration": calibration}, groups, target)
            budgets = solve_speed_budgets(groups, costs, aim, distribution)
            shrunk = copy.deepcopy(model)
            _cut(shrunk, groups, kinds, lambda g, budgets=budgets: g.num_units - budgets[g.name])
            times = _fastest_times({"dense": model, "shrunk": shrunk}, inputs, rounds)
            measured = times["dense"] / times["shrunk"]
            tried.append(measured)
            logger.info("pdp_hf: target_speedup %g: budgets priced at %.3fx measure %.3fx at batch %d x %d.", target,
                        aim, measured, batch, seq)
            if measured >= target:
                return target / aim, 0.0
            if aim >= best_reachable(costs, groups):
                return 1.0, measured
            calibration = measured / predicted_speedup(costs, pruned_by_kind(groups, budgets))
    finally:
        model.train(was_training)
    logger.warning(
        "pdp_hf: target_speedup %g: %d timings of the shrunk shapes measured %s; the budgets take the last "
        "correction untimed. Check the export with `pdp-hf speed`, or raise speed_calibration_timings.", target,
        len(tried), ", ".join(f"{m:.2f}x" for m in tried))
    return calibration, 0.0

