#!/usr/bin/env python
"""Training-step cost of pruning, side by side: plain Trainer vs PrunerTrainer per method, as ratios to dense.

    python scripts/benchmark_training.py                       # MiniLM and BERT-base shapes, CPU, batch 32, seq 128
    python scripts/benchmark_training.py --shapes minilm --steps 8 --rounds 3
    python scripts/benchmark_training.py --device cuda --dtype bf16   # on a GPU, with autocast

Each (shape, variant) runs in its own process (so peak memory is its own), for `--steps` measured optimizer steps
after `--warmup` steps; variants are interleaved round by round and the median step time is kept, so slow drifts of
a shared machine hit every variant alike. The pruning ramp covers every measured step (soft masks and threshold
selection active at each step: PDP's most expensive phase). Weights are random: cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
VARIANTS = {
    "dense": None,
    "pdp": dict(method="pdp", threshold_refresh_steps=1),  # exact selection at every step
    "pdp-refresh10": dict(method="pdp", threshold_refresh_steps=10),  # the default
    "magnitude": dict(method="magnitude"),
}


def run_one(shape: str, variant: str, args) -> dict:
    """Inside the child process: build, train, report step times and peak memory."""
    import torch
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    from pdp_hf import PDPConfig, PrunerTrainer

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**SHAPES[shape], num_labels=2))
    n = args.batch_size * (args.warmup + args.steps)
    ids = torch.randint(1000, 20000, (n, args.seq_len))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 2).tolist()})
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)

    targs = TrainingArguments(
        output_dir=os.path.join(args.tmp, f"{shape}-{variant}"), max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=1e-4, report_to=[], save_strategy="no",
        logging_steps=10_000, disable_tqdm=True, use_cpu=args.device == "cpu",
        bf16=args.dtype == "bf16", fp16=args.dtype == "fp16", dataloader_num_workers=0,
    )
    kwargs = dict(model=model, args=targs, train_dataset=data, callbacks=[Timer()])
    if VARIANTS[variant] is None:
        trainer = Trainer(**kwargs)
    else:
        config = PDPConfig(target_sparsity=0.9, pruning_start=0, pruning_end=args.warmup + args.steps, harden_at=None, **VARIANTS[variant])
        trainer = PrunerTrainer(**kwargs, pdp_config=config)
    trainer.train()
    peak = (
        torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {"ms": 1000 * statistics.median(times[args.warmup :]), "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--tmp", default="outputs/benchmark")
    parser.add_argument("--child", nargs=2, metavar=("SHAPE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_one(*args.child, args)))
        return

    results: dict[tuple[str, str], list[dict]] = {}
    passthrough = [f"--{k}={v}" for k, v in vars(args).items() if k in ("batch_size", "seq_len", "warmup", "steps", "device", "dtype", "tmp")]
    for round_ in range(args.rounds):
        for shape in args.shapes:
            for variant in args.variants:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", shape, variant, *passthrough],
                    capture_output=True, text=True, check=True,
                ).stdout
                result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
                results.setdefault((shape, variant), []).append(result)
                print(f"round {round_ + 1} {shape:9s} {variant:14s} {result['ms']:9.1f} ms/step  peak {result['peak_mib']:8.0f} MiB", flush=True)

    print(f"\nbatch {args.batch_size}, seq {args.seq_len}, device {args.device}, {args.dtype}, threads "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')}; median over rounds of the median step time")
    print("| shape | variant | ms / step | step ratio to dense | peak MiB | memory ratio to dense |")
    print("|---|---|---:|---:|---:|---:|")
    for shape in args.shapes:
        dense_ms = statistics.median(r["ms"] for r in results[(shape, "dense")]) if "dense" in args.variants else None
        dense_mem = statistics.median(r["peak_mib"] for r in results[(shape, "dense")]) if dense_ms else None
        for variant in args.variants:
            ms = statistics.median(r["ms"] for r in results[(shape, variant)])
            mem = statistics.median(r["peak_mib"] for r in results[(shape, variant)])
            ratio = f"{ms / dense_ms:.3f}" if dense_ms else "-"
            mratio = f"{mem / dense_mem:.3f}" if dense_mem else "-"
            print(f"| {shape} | {variant} | {ms:.1f} | {ratio} | {mem:.0f} | {mratio} |")


if __name__ == "__main__":
    main()
