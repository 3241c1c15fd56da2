"""Budgets set by speed (`PDPConfig(target_speedup=...)`): the ranking against a slow direct reference, every method
and structured granularity on a tiny BERT with fixed prices, a clear error for a target out of reach, the same
budgets after resume and on every rank. Prices come from timings, so tests fix them (timings are never asserted)."""

import json
import logging
import os
import random
import re

import pytest
import torch

from pdp_hf import PDPConfig, apply_pruning, finalize_pruning, get_pruner
from pdp_hf import speed_budget as sb
from pdp_hf.shrink import kept_sizes
from tests.conftest import tiny_bert

PRICES = {"dense": 1.0, "head": 0.06, "neuron": 0.003}  # 2 layers x (2 heads, 64 neurons): floor at 0.496


def reference_budgets(groups, costs, target, scores):
    """Slow and direct: list every unit but each group's strongest, sort by score / cost (ties: group, then unit
    order within the group's score order), prune from the front until dense / (dense - saved) >= target."""
    units = []
    for index, group in enumerate(groups):
        values = [float(v) for v in scores[group.name].reshape(-1)]
        ordered = sorted(range(len(values)), key=lambda u: (values[u], u))
        for rank, unit in enumerate(ordered[:-1]):
            units.append((values[unit] / costs[group.kind], index, rank))
    units.sort()
    budgets = {g.name: 0 for g in groups}
    saved = 0.0
    for _, index, _ in units:
        if costs["dense"] / (costs["dense"] - saved) >= target:
            break
        budgets[groups[index].name] += 1
        saved += costs[groups[index].kind]
    return budgets


class Group:
    def __init__(self, name, kind, num_units):
        self.name, self.kind, self.num_units = name, kind, num_units


@pytest.mark.parametrize("seed", range(20))
def test_speed_budgets_match_the_direct_reference(seed):
    rng = random.Random(seed)
    groups = [Group(f"layer{i}:{kind}s", kind, rng.choice([2, 4, 12] if kind == "head" else [8, 64]))
              for i in range(rng.randint(1, 4)) for kind in ("head", "neuron")]
    costs = {"dense": 1.0, "head": rng.uniform(0.005, 0.03), "neuron": rng.uniform(0.0002, 0.002)}
    scores = {g.name: torch.tensor([rng.choice([0.5, 1.0, rng.random()]) for _ in range(g.num_units)]) for g in groups}
    best = sb.best_reachable(costs, groups)
    target = 1 + (best - 1) * rng.uniform(0.1, 0.99)
    budgets = sb.speed_budgets(groups, costs, target, scores)
    assert budgets == reference_budgets(groups, costs, target, scores)
    pruned = {}
    for g in groups:
        assert 0 <= budgets[g.name] <= g.num_units - 1
        pruned[g.kind] = pruned.get(g.kind, 0) + budgets[g.name]
    assert sb.predicted_speedup(costs, pruned) >= target


@pytest.mark.parametrize("seed", range(10))
def test_uniform_speed_budgets_take_the_smallest_fraction_that_reaches_the_target(seed):
    rng = random.Random(seed)
    groups = [Group(f"layer{i}:{kind}s", kind, 12 if kind == "head" else 1536) for i in range(6) for kind in ("head", "neuron")]
    costs = {"dense": 1.0, "head": rng.uniform(0.002, 0.006), "neuron": rng.uniform(2e-5, 6e-5)}
    target = 1 + (sb.best_reachable(costs, groups) - 1) * rng.uniform(0.1, 0.9)

    def predicted(fraction):
        pruned = {"head": 6 * min(round(fraction * 12), 11), "neuron": 6 * min(round(fraction * 1536), 1535)}
        return sb.predicted_speedup(costs, pruned)

    fraction = next(f / 1000 for f in range(1001) if predicted(f / 1000) >= target)  # the direct search
    budgets = sb.uniform_speed_budgets(groups, costs, target)
    assert budgets == {g.name: min(round(fraction * g.num_units), g.num_units - 1) for g in groups}
    assert predicted(fraction) >= target > predicted(fraction - 0.001)


def test_a_target_out_of_reach_names_the_best_reachable_speedup():
    groups = [Group("l0:heads", "head", 2), Group("l0:neurons", "neuron", 64)]
    best = sb.best_reachable(PRICES, groups)
    assert best == pytest.approx(1 / (1 - 0.06 - 63 * 0.003))
    with pytest.raises(ValueError, match=rf"target_speedup=3.0 cannot be reached .* {best:.2f}x .* at most {best:.2f}"):
        sb.speed_budgets(groups, PRICES, 3.0, {"l0:heads": torch.ones(2), "l0:neurons": torch.ones(64)})


@pytest.mark.parametrize("value, says", [
    (dict(target_speedup=2.0, target_sparsity=0.5), "exclude each other"),
    (dict(target_speedup=2.0), "prices whole heads and FFN neurons"),  # unstructured
    (dict(target_speedup=1.0, granularity="neuron"), "must be > 1"),
    (dict(target_speedup=2.0, granularity="head", sparsity_distribution="learned"), "use 'uniform'"),
    (dict(target_speedup=2.0, granularity="head", speed_batch_size=0), "speed_batch_size=0 is invalid"),
    (dict(target_speedup=2.0, granularity="head", speed_calibration_timings=-1),
     r"speed_calibration_timings=-1 is invalid: it must be a whole number >= 0"),
    (dict(target_speedup=2.0, granularity="head", speed_calibration_timings=True), "speed_calibration_timings=True"),
])
def test_config_refuses_what_a_speed_target_cannot_mean(value, says):
    with pytest.raises(ValueError, match=says):
        PDPConfig(**value)


@pytest.fixture
def fixed_prices(monkeypatch):
    """measure_unit_costs returns PRICES (and counts its calls)."""
    calls = []

    def fake(model, groups, batch, seq, rounds=5):
        calls.append((batch, seq))
        return {k: v for k, v in PRICES.items() if k == "dense" or any(g.kind == k for g in groups)}

    monkeypatch.setattr("pdp_hf.injection.measure_unit_costs", fake)
    monkeypatch.setattr("pdp_hf.injection.calibrate_unit_costs", lambda model, groups, costs, *args: costs)
    return calls


@pytest.mark.parametrize("distribution", ["uniform", "global"])
@pytest.mark.parametrize("method", ["pdp", "smart", "movement", "magnitude"])
@pytest.mark.parametrize("granularity", ["head", "neuron", "attention=head,ffn=neuron"])
def test_every_method_and_structured_granularity_reaches_the_target_with_exact_counts(method, granularity, distribution,
                                                                                       fixed_prices):
    target = 1.3 if granularity != "head" else 1.1
    model = tiny_bert()
    apply_pruning(model, PDPConfig(method=method, granularity=granularity, target_speedup=target,
                                   sparsity_distribution=distribution,
                                   pruning_start=2, pruning_end=6, harden_at=8, speed_batch_size=4, speed_seq_length=8))
    assert fixed_prices == [(4, 8)]
    pruner = get_pruner(model)
    params = [p for n, p in model.named_parameters() if not n.startswith("pdp_scores.")]
    optimizer = torch.optim.AdamW([{"params": params}, *pruner.optimizer_param_groups()], lr=1e-3)
    pruner.set_total_steps(10)
    pruner.set_optimizer(optimizer)
    for step in range(10):
        pruner.step(step)
        model(input_ids=torch.randint(1, 60, (4, 8)), labels=torch.randint(0, 2, (4,))).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    budgets = dict(pruner.budgets)
    if distribution == "uniform":  # one fraction: groups of one kind and size prune the same number of units
        for kind in ("head", "neuron"):
            assert len({budgets[g.name] for g in pruner.groups if g.kind == kind}) <= 1
    predicted = pruner.predicted_speedup()
    assert predicted >= target and pruner.stats()["predicted_speedup"] == predicted
    finalize_pruning(model)
    assert model.config.pdp_predicted_speedup == round(predicted, 3)
    sizes = kept_sizes(model)
    for group in pruner.groups:
        layer = int(group.name.split(".")[-1].split(":")[0])
        key = "heads" if group.kind == "head" else "neurons"
        assert sizes[layer][key] == [group.num_units - budgets[group.name], group.num_units]


def test_resume_keeps_the_prices_the_run_started_with(fixed_prices, tmp_path, monkeypatch):
    config = PDPConfig(granularity="attention=head,ffn=neuron", target_speedup=1.3, pruning_start=4, pruning_end=6,
                       harden_at=8)
    first = apply_pruning(tiny_bert(), config)
    get_pruner(first).set_total_steps(10)
    get_pruner(first).save_state(str(tmp_path))  # a checkpoint from the dense warm-up: no budgets yet
    monkeypatch.setattr("pdp_hf.injection.measure_unit_costs",
                        lambda model, groups, batch, seq, rounds=5: {"dense": 1.0, "head": 0.001, "neuron": 0.004})
    resumed = apply_pruning(tiny_bert(), config)
    assert get_pruner(resumed).unit_costs["head"] == 0.001  # this run's own timing...
    get_pruner(resumed).load_state(str(tmp_path))
    assert get_pruner(resumed).unit_costs == get_pruner(first).unit_costs  # ...gives way to the checkpoint's
    for model in (first, resumed):
        get_pruner(model).set_total_steps(10)
        get_pruner(model).step(4)
    assert get_pruner(resumed).budgets == get_pruner(first).budgets


def _broadcast_worker(rank, folder):
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    costs = sb._broadcast({"dense": 1.0 + rank, "head": 0.01 * (rank + 1), "neuron": 0.001})
    torch.save(sb._broadcast({**costs, "calibration": 0.9 - 0.1 * rank}), os.path.join(folder, f"calibrated{rank}.pt"))
    torch.save(costs, os.path.join(folder, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def _calibration_worker(rank, folder):
    """Rank 0's timing says one unit per layer misses the target, rank 1's that it is reached (first round); then the
    other way round."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    results = []
    for outcomes in ([(1.0, 2.4), (0.9, 0.0)], [(0.8, 0.0), (1.0, 2.0)]):
        sb._timed_calibration = lambda *args, outcome=outcomes[rank]: outcome
        try:
            results.append(sb.calibrate_unit_costs(None, None, {"dense": 1.0, "neuron": 0.01}, 3.0, "uniform", 1, 8))
        except ValueError as err:
            results.append(str(err))
    torch.save(results, os.path.join(folder, f"calibration{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_every_rank_takes_rank_0s_calibration_and_refusal(tmp_path):
    """A refusal raised on one rank alone would leave the others waiting in the next collective: every rank raises
    rank 0's, or takes rank 0's calibration."""
    torch.multiprocessing.spawn(_calibration_worker, args=(str(tmp_path),), nprocs=2)
    rank0, rank1 = (torch.load(tmp_path / f"calibration{r}.pt") for r in (0, 1))
    assert rank0 == rank1
    assert "cannot be reached on this device: with one head and one neuron left in every layer the shrunk model " \
           "measures 2.40x (batch 1 x 8)" in rank0[0]
    assert rank0[1] == {"dense": 1.0, "neuron": 0.01, "calibration": 0.8}


def test_every_rank_prices_with_rank_0s_timing(tmp_path):
    torch.multiprocessing.spawn(_broadcast_worker, args=(str(tmp_path),), nprocs=2)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0 == rank1 == {"dense": 1.0, "head": 0.01, "neuron": 0.001}
    rank0, rank1 = (torch.load(tmp_path / f"calibrated{r}.pt") for r in (0, 1))
    assert rank0 == rank1 == {"dense": 1.0, "head": 0.01, "neuron": 0.001, "calibration": 0.9}


def test_measured_prices_are_positive_and_calibrated_to_the_floor():
    from pdp_hf.targets import find_targets
    from pdp_hf.units import build_unit_groups

    model = tiny_bert()
    groups = build_unit_groups(model, find_targets(model, None),
                               PDPConfig(granularity="attention=head,ffn=neuron", target_sparsity=0.5))
    costs = sb.measure_unit_costs(model, groups, batch=2, seq=8, rounds=2)
    assert set(costs) == {"dense", "head", "neuron"} and all(v > 0 for v in costs.values())
    assert 1 < sb.best_reachable(costs, groups) < float("inf")


def _priced_under(load, monkeypatch):
    """measure_unit_costs of a tiny BERT whose forwards take fixed idle times (dense, half the heads cut, half the
    neurons cut, the floor; timed in turns) times `load(call index)`: (costs, forwards timed)."""
    from pdp_hf.targets import find_targets
    from pdp_hf.units import build_unit_groups

    model = tiny_bert()
    groups = build_unit_groups(model, find_targets(model, None),
                               PDPConfig(granularity="attention=head,ffn=neuron", target_sparsity=0.5))
    calls = iter(range(10_000))
    idle = {0: 1.0, 1: 0.8, 2: 0.9, 3: 0.5}
    timed = []

    def forward_seconds(variant, inputs, rounds):
        index = next(calls)
        timed.append(index)
        return idle[index % 4] * load(index)

    monkeypatch.setattr(sb, "_median_forward_seconds", forward_seconds)
    return sb.measure_unit_costs(model, groups, batch=2, seq=8, rounds=5), len(timed)


def test_pricing_takes_the_fastest_timings_so_that_a_passing_load_changes_nothing(monkeypatch, caplog):
    """Another job slows three forwards in seven, unevenly over the variants: the prices are the idle device's (the
    median of 5 rounds, used before, moved), after two blocks of rounds that agree, without a warning."""
    idle, calls = _priced_under(lambda index: 1.0, monkeypatch)
    assert calls == 4 + 2 * 5 * 4  # warm-up, then two blocks of 5 rounds of the 4 variants
    with caplog.at_level(logging.WARNING, logger="pdp_hf.speed_budget"):
        busy, _ = _priced_under(lambda index: 1.6 if index % 7 in (1, 2, 4) else 1.0, monkeypatch)
    assert busy == idle and "noisy" not in caplog.text


def test_pricing_on_a_device_that_stays_busy_says_so(monkeypatch, caplog):
    """A load that comes and goes block by block: blocks are added until four, then a warning names the variant."""
    with caplog.at_level(logging.WARNING, logger="pdp_hf.speed_budget"):
        _, calls = _priced_under(lambda index: 1.5 if (index - 4) // 20 % 2 else 1.0, monkeypatch)
    assert calls == 4 + sb.MAX_BLOCKS * 5 * 4
    assert re.search(r"were noisy: the fastest (dense|head|neuron|floor) forward took (\d+)\.0 ms in one block of 5 "
                     r"rounds and (\d+)\.0 ms in the next, after 4 blocks", caplog.text)


def test_the_export_card_states_the_target_and_the_predicted_speedup(fixed_prices, tmp_path):
    from huggingface_hub import ModelCard

    from pdp_hf import export_pruned

    config = PDPConfig(granularity="attention=head,ffn=neuron", target_speedup=1.3)
    model = apply_pruning(tiny_bert(), config)
    get_pruner(model).set_total_steps(10)
    get_pruner(model).step(1)
    folder = export_pruned(model, str(tmp_path / "export"), shrink=True)
    text = ModelCard.load(os.path.join(folder, "README.md")).text
    predicted = round(get_pruner(model).predicted_speedup(), 3)
    assert f"| target speedup | 1.3x, budgets predict {predicted}x" in text
    assert ("priced on the training device at batch 32 x 128: dense forward 1000.00 ms; saved per head 60.0000 ms, "
            "per neuron 3.00000 ms, in config.json as pdp_unit_costs" in text)
    assert "the same fraction of heads and neurons in every layer" in text  # uniform
    assert "calibrate" not in text


def test_the_export_records_and_states_its_calibration(fixed_prices, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    from pdp_hf import export_pruned

    monkeypatch.setattr("pdp_hf.injection.calibrate_unit_costs",
                        lambda model, groups, costs, *args: {**costs, "calibration": 0.875})
    model = apply_pruning(tiny_bert(), PDPConfig(granularity="neuron", target_speedup=1.3))
    get_pruner(model).set_total_steps(10)
    get_pruner(model).step(1)
    predicted = get_pruner(model).predicted_speedup()
    folder = export_pruned(model, str(tmp_path / "export"), shrink=True)
    text = ModelCard.load(os.path.join(folder, "README.md")).text
    assert "per neuron 3.00000 ms; timings of the shrunk shapes calibrate them by 0.875, in config.json" in text
    assert f"budgets predict {round(predicted, 3)}x" in text and 1.3 <= predicted < 1.3 / 0.875
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["pdp_unit_costs"] == {"dense": 1.0, "neuron": 0.003, "calibration": 0.875}


def test_prices_given_instead_of_timed_give_the_same_budgets_and_the_export_records_them(fixed_prices, tmp_path,
                                                                                           monkeypatch):
    """A run priced once (its export's config.json holds pdp_unit_costs) hands its prices to the next: no timing, the
    same budgets, from a dict, JSON text or the file."""
    from pdp_hf import export_pruned

    config = dict(granularity="attention=head,ffn=neuron", target_speedup=1.3, sparsity_distribution="global")
    first = apply_pruning(tiny_bert(), PDPConfig(**config))
    get_pruner(first).set_total_steps(10)
    get_pruner(first).step(1)
    budgets = dict(get_pruner(first).budgets)
    folder = export_pruned(first, str(tmp_path / "export"), shrink=True)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        recorded = json.load(f)["pdp_unit_costs"]
    assert recorded == {k: v for k, v in PRICES.items()}

    def no_timing(*args, **kwargs):
        raise AssertionError("priced again")

    monkeypatch.setattr("pdp_hf.injection.measure_unit_costs", no_timing)
    for given in (recorded, json.dumps(recorded), os.path.join(folder, "config.json")):
        again = get_pruner(apply_pruning(tiny_bert(), PDPConfig(speed_unit_costs=given, **config)))
        again.set_total_steps(10)
        again.step(1)
        assert again.unit_costs == PRICES and again.budgets == budgets


@pytest.mark.parametrize("given, says", [
    ({"dense": 1.0, "head": 0.06}, r"it must hold seconds for \['dense', 'head', 'neuron'\]"),
    ({**PRICES, "calibration": float("nan")}, r"calibration=nan is not a positive number\.$"),
    ({"dense": 1.0, "head": -0.06, "neuron": 0.003}, r"head=-0.06 is not a positive number of seconds"),
    ("{not json", "give a dict, JSON text or the path of a JSON file"),
])
def test_prices_given_wrongly_are_refused(given, says):
    with pytest.raises(ValueError, match=r"PDPConfig.speed_unit_costs=.* is invalid: " + says):
        PDPConfig(granularity="attention=head,ffn=neuron", target_speedup=1.3, speed_unit_costs=given)
    with pytest.raises(ValueError, match="it prices target_speedup, which is not set"):
        PDPConfig(target_sparsity=0.5, speed_unit_costs=PRICES)


# -- calibration: timings of the shrunk shapes -----------------------------------------------------------------------
def shape_seconds(model, power: float) -> float:
    """A forward time that depends on the shape alone: 1 s fixed plus per layer (neurons kept / 64) ** power s. Below
    power 1, narrow FFNs run less efficiently than a cost per neuron assumes (as at batch 1)."""
    return 1.0 + sum((layer.intermediate.dense.out_features / 64) ** power for layer in model.bert.encoder.layer)


def shaped_timing(monkeypatch, power: float) -> list:
    timed = []

    def forward_seconds(variant, inputs, rounds):
        timed.append(variant)
        return shape_seconds(variant, power)

    monkeypatch.setattr(sb, "_median_forward_seconds", forward_seconds)
    return timed


def neuron_budgets(monkeypatch, power: float, target: float, **config):
    """Budgets for `target` on a tiny BERT (2 layers of 64 neurons) timed by `shape_seconds`: (pruner, measured
    speedup of the budgets' shapes, forwards timed)."""
    timed = shaped_timing(monkeypatch, power)
    model = tiny_bert()
    pruner = get_pruner(apply_pruning(model, PDPConfig(granularity="neuron", target_speedup=target, speed_batch_size=2,
                                                       speed_seq_length=8, **config)))
    pruner.set_total_steps(10)
    pruner.step(pruner.schedule.start)
    kept = [g.num_units - pruner.budgets[g.name] for g in pruner.groups]
    return pruner, (1.0 + 2.0) / (1.0 + sum((k / 64) ** power for k in kept)), len(timed)


@pytest.mark.parametrize("distribution", ["uniform", "global"])
def test_calibrated_budgets_measure_the_target_where_the_prices_alone_miss_it(monkeypatch, distribution):
    """Forwards slower than linear in the neurons kept: the prices alone (timings 0) give budgets that measure 1.29x
    for 1.5x; the calibrated ones measure the target, and the pruner predicts what they measure (within 3%)."""
    alone, missed, _ = neuron_budgets(monkeypatch, 0.5, 1.5, speed_calibration_timings=0,
                                      sparsity_distribution=distribution)
    assert missed < 1.4 and "calibration" not in alone.unit_costs
    pruner, measured, _ = neuron_budgets(monkeypatch, 0.5, 1.5, sparsity_distribution=distribution)
    assert 1.5 <= measured <= 1.5 * 1.03
    assert pruner.predicted_speedup() == pytest.approx(measured, rel=0.03)
    assert pruner.unit_costs["calibration"] < 1


def test_calibration_of_linear_timings_changes_nothing_after_one_timing(monkeypatch):
    """Forwards exactly linear in the neurons kept: the prices' budgets measure the target at the first timing."""
    alone, _, priced = neuron_budgets(monkeypatch, 1.0, 1.5, speed_calibration_timings=0)
    pruner, measured, timed = neuron_budgets(monkeypatch, 1.0, 1.5)
    assert pruner.budgets == alone.budgets and pruner.unit_costs["calibration"] == 1.0 and measured >= 1.5
    assert timed - priced == 2 + 2 * 5 * 2  # warm-up, then two blocks of 5 rounds of dense and shrunk


def test_calibration_that_runs_out_of_timings_says_so_and_keeps_its_last_correction(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="pdp_hf.speed_budget"):
        pruner, measured, _ = neuron_budgets(monkeypatch, 0.5, 1.5, speed_calibration_timings=1)
    assert re.search(r"target_speedup 1.5: 1 timings of the shrunk shapes measured 1.2\dx; the budgets take the last "
                     r"correction untimed", caplog.text)
    alone, missed, _ = neuron_budgets(monkeypatch, 0.5, 1.5, speed_calibration_timings=0)
    assert measured > missed  # the correction, untimed, still prunes more than the prices alone


@pytest.mark.parametrize("measured, calibrated", [
    ([1.7], 1.0),  # the prices' budgets overshoot: kept, never fewer units pruned than the prices ask for
    ([1.3, 1.45, 1.6], "third"),  # two misses, then the first budgets that measure the target
])
def test_calibration_keeps_the_first_budgets_that_measure_the_target(monkeypatch, caplog, measured, calibrated):
    from pdp_hf.targets import find_targets
    from pdp_hf.units import build_unit_groups

    timings = iter(measured)
    aims = []
    solve = sb.solve_speed_budgets
    monkeypatch.setattr(sb, "solve_speed_budgets", lambda groups, costs, aim, distribution: (
        aims.append(aim), solve(groups, costs, aim, distribution))[1])
    monkeypatch.setattr(sb, "_fastest_times", lambda variants, inputs, rounds: {"dense": 1.0, "shrunk": 1 / next(timings)})
    model = tiny_bert()
    groups = build_unit_groups(model, find_targets(model, None), PDPConfig(granularity="neuron", target_sparsity=0.5))
    with caplog.at_level(logging.WARNING, logger="pdp_hf.speed_budget"):
        costs = sb.calibrate_unit_costs(model, groups, {"dense": 3.0, "neuron": 1.75 / 126}, 1.5, "uniform", 2, 8)
    assert len(aims) == len(measured) and aims[0] == 1.5 and aims == sorted(aims) and "untimed" not in caplog.text
    assert costs["calibration"] == (1.0 if calibrated == 1.0 else 1.5 / aims[2])
    assert sb.speed_aim(costs, groups, 1.5) == pytest.approx(aims[-1], rel=1e-12)


def test_a_target_the_shrunk_shapes_do_not_reach_names_the_measured_speedup(monkeypatch):
    """Prices that promise more than one unit per layer measures (a noisy floor timing): the timing of the floor
    itself refuses the target, naming what it measured."""
    from pdp_hf.targets import find_targets
    from pdp_hf.units import build_unit_groups

    shaped_timing(monkeypatch, 0.5)  # the floor (1 neuron per layer) measures 3 / 1.25 = 2.4x
    model = tiny_bert()
    groups = build_unit_groups(model, find_targets(model, None), PDPConfig(granularity="neuron", target_sparsity=0.5))
    costs = {"dense": 3.0, "neuron": 2.5 / 126}  # predicts 6x with one neuron per layer
    with pytest.raises(ValueError, match=r"target_speedup=3.0 cannot be reached on this device: with one head and one "
                                         r"neuron left in every layer the shrunk model measures 2.40x \(batch 2 x 8\)"):
        sb.calibrate_unit_costs(model, groups, costs, 3.0, "uniform", 2, 8)


def test_a_resumed_run_keeps_the_calibration_it_started_with(fixed_prices, tmp_path, monkeypatch):
    config = PDPConfig(granularity="neuron", target_speedup=1.3, pruning_start=4, pruning_end=6, harden_at=8)
    monkeypatch.setattr("pdp_hf.injection.calibrate_unit_costs",
                        lambda model, groups, costs, *args: {**costs, "calibration": 0.8})
    first = get_pruner(apply_pruning(tiny_bert(), config))
    first.set_total_steps(10)
    first.save_state(str(tmp_path))
    monkeypatch.setattr("pdp_hf.injection.calibrate_unit_costs",
                        lambda model, groups, costs, *args: {**costs, "calibration": 1.0})
    resumed = get_pruner(apply_pruning(tiny_bert(), config))
    resumed.load_state(str(tmp_path))
    assert resumed.unit_costs == first.unit_costs == {"dense": 1.0, "neuron": 0.003, "calibration": 0.8}
    for pruner in (first, resumed):
        pruner.set_total_steps(10)
        pruner.step(4)
    assert resumed.budgets == first.budgets
    uncalibrated = get_pruner(apply_pruning(tiny_bert(), config))
    uncalibrated.set_total_steps(10)
    uncalibrated.step(4)
    assert sum(first.budgets.values()) > sum(uncalibrated.budgets.values())
