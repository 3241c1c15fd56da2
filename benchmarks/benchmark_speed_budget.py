#!/usr/bin/env python
"""Predicted against measured speedup of `target_speedup` budgets, at BERT-base width, on this machine.

    python benchmarks/benchmark_speed_budget.py                 # 4 layers, targets 1.5 2 3, uniform and global
    python benchmarks/benchmark_speed_budget.py --layers 12 --targets 2
    python benchmarks/benchmark_speed_budget.py --shape minilm --targets 2 --price_batch_size 1 --distributions uniform
    python benchmarks/benchmark_speed_budget.py --shape minilm --targets 2 3 --price_batch_size 1 --calibration_timings 0 3

A BERT-base-width model (hidden 768, 12 heads, FFN 3072, random weights: speed does not depend on the values) is
priced once (`measure_unit_costs` at batch 32 x 128, as `apply_pruning` does), then for every target, distribution
and number of calibration timings (`speed_calibration_timings`: 0 trusts the prices alone) the budgets are fixed, the model finalized and shrunk as `export_pruned(shrink=True)` would, and the
shrunk model is timed against the dense one, interleaved, at batch 32 and 1 (seq 128). The prediction is for the
priced shape (batch 32, or `--price_batch_size`). `--shape minilm` uses all-MiniLM-L6-v2's shape (6 layers, hidden
384, 12 heads, FFN 1536), the frontier's model.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time

import torch
from transformers import BertConfig, BertForSequenceClassification

from pdp_hf import PDPConfig, apply_pruning, finalize_pruning, get_pruner, injection
from pdp_hf.shrink import shrink_for_export
from pdp_hf.speed_budget import measure_unit_costs
from pdp_hf.targets import find_targets
from pdp_hf.units import build_unit_groups

# BERT-base width at --layers layers, or all-MiniLM-L6-v2's shape (its own depth)
SHAPES = {"bert-base": {}, "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                          intermediate_size=1536)}


def timed(model, inputs) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        model(**inputs)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shape", choices=list(SHAPES), default="bert-base")
    parser.add_argument("--price_batch_size", type=int, default=32, help="Batch of the pricing (speed_batch_size).")
    parser.add_argument("--distributions", nargs="+", choices=["uniform", "global"], default=["uniform", "global"])
    parser.add_argument("--calibration_timings", type=int, nargs="+", default=[3],
                        help="speed_calibration_timings of each row (0: the prices alone).")
    args = parser.parse_args()
    torch.manual_seed(0)
    shape = dict(SHAPES[args.shape])
    layers = shape.pop("num_hidden_layers", args.layers)
    base = BertForSequenceClassification(BertConfig(num_hidden_layers=layers, num_labels=2, **shape)).eval()
    heads_per_layer, ffn = base.config.num_attention_heads, base.config.intermediate_size
    structure = PDPConfig(granularity="attention=head,ffn=neuron", target_sparsity=0.5)
    costs = measure_unit_costs(base, build_unit_groups(base, find_targets(base, None), structure),
                               args.price_batch_size, 128)
    print(f"{args.shape} shape, {layers} layers, fp32, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"prices at batch {args.price_batch_size} x 128: dense {1000 * costs['dense']:.1f} ms, head {1000 * costs['head']:.3f} ms, "
          f"neuron {1000 * costs['neuron']:.4f} ms")
    print(f"| target | distribution | calibration timings | heads kept | neurons kept | predicted (b{args.price_batch_size}) | "
          "measured b32 | measured b1 |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    injection.measure_unit_costs = lambda *a, **k: costs  # price once: every target uses the same timing
    for target, distribution, timings in itertools.product(args.targets, args.distributions, args.calibration_timings):
        model = copy.deepcopy(base)
        config = PDPConfig(granularity="attention=head,ffn=neuron", target_speedup=target,
                           sparsity_distribution=distribution, method="magnitude",
                           speed_batch_size=args.price_batch_size, speed_calibration_timings=timings)
        apply_pruning(model, config)
        pruner = get_pruner(model)
        pruner.set_total_steps(10)
        pruner.step(pruner.schedule.start)
        predicted = pruner.predicted_speedup()
        heads = sum(g.num_units - pruner.budgets[g.name] for g in pruner.groups if g.kind == "head")
        neurons = sum(g.num_units - pruner.budgets[g.name] for g in pruner.groups if g.kind == "neuron")
        finalize_pruning(model)
        shrink_for_export(model)
        measured = {}
        for batch in (32, 1):
            ids = torch.randint(1000, 2000, (batch, 128))
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            for m in (base, model):
                timed(m, inputs)
            samples = {"dense": [], "shrunk": []}
            for _ in range(args.rounds):
                samples["dense"].append(timed(base, inputs))
                samples["shrunk"].append(timed(model, inputs))
            measured[batch] = statistics.median(samples["dense"]) / statistics.median(samples["shrunk"])
        print(f"| {target:g} | {distribution} | {timings} | {heads}/{heads_per_layer * layers} | {neurons}/{ffn * layers} | "
              f"{predicted:.2f}x | {measured[32]:.2f}x | {measured[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
