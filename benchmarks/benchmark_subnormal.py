#!/usr/bin/env python
"""SMART's training step on the CPU with and without subnormal mask values, side by side in one process.

    python benchmarks/benchmark_subnormal.py            # MiniLM shape (6 layers, 384 wide), heads + neurons, batch 32 x 128

At a small temperature SMART's soft top-k mask sigmoid(s / tau + lambda) falls below 1e-38 for units far under the
cut: float32 subnormals, and so are the weights they multiply. A CPU computes with subnormal operands through
microcode assists. pdp_hf writes mask values below `pdp_hf.topk.MASK_FLOOR` (2^-100) as exact zeros; this script
times a forward and backward of the same model, the same scores and the same batch with that floor (as shipped) and
without it (the mask as the formula gives it), interleaved, and prints the ratio. The scores are spread from 0 to 2
(relative unit norms, as training spreads them) and the temperature is at its end value, as late in a run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from transformers import BertConfig, BertForSequenceClassification

    import pdp_hf.topk as topk
    from pdp_hf import PDPConfig, apply_pruning, get_pruner

    torch.manual_seed(0)
    config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, num_labels=2)
    model = apply_pruning(BertForSequenceClassification(config), PDPConfig(
        method="smart", granularity="attention=head,ffn=neuron", target_sparsity=0.67, pruning_start=0,
        pruning_end=10, harden_at=None))
    pruner = get_pruner(model)
    pruner.set_total_steps(20)
    for step in range(11):
        pruner.step(step)
    with torch.no_grad():
        for group in pruner.groups:
            group.score.uniform_(0, 2)
    pruner.step(11)  # past the ramp: the temperature at its end value, lambda solved for these scores
    raw = [torch.sigmoid(g.score.float() / g.state["tau"] + g.state["lambda"]) for g in pruner.groups]
    units = sum(g.num_units for g in pruner.groups)
    subnormal = sum(int(((f > 0) & (f < torch.finfo(torch.float32).tiny)).sum()) for f in raw)
    below = sum(int(((f > 0) & (f < topk.MASK_FLOOR)).sum()) for f in raw)
    model.train()
    ids = torch.randint(1000, 20000, (args.batch, args.seq))
    shipped = topk.flush_tiny

    def step(floor: bool) -> float:
        topk.flush_tiny = shipped if floor else (lambda mask: mask)
        start = time.perf_counter()
        model(input_ids=ids, labels=ids[:, 0] % 2).loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step(True), step(False)  # warm-up
    times = {True: [], False: []}
    for _ in range(args.rounds):
        for floor in (True, False):
            times[floor].append(step(floor))
    topk.flush_tiny = shipped
    with_floor, without = statistics.median(times[True]), statistics.median(times[False])
    print(f"# {units} heads and neurons; masks under 2^-100: {below} ({subnormal} of them subnormal floats); "
          f"batch {args.batch} x {args.seq}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"forward+backward with the floor (shipped): {with_floor:.2f} s; without: {without:.2f} s; "
          f"ratio {without / with_floor:.2f}x (median of {args.rounds}, interleaved)")


if __name__ == "__main__":
    main()
