"""Where the time of a training step goes: the median time of each phase (Pruner.step, forward, backward, clipping,
optimizer step, zero_grad) of the `benchmark_training.py` variants, steps taken in turn in one process.

    python benchmarks/benchmark_step_phases.py --batch_size 8 --variants dense pdp hardened

Prints one line per variant, in milliseconds, and each phase's difference to the first variant. A training
step's total varies by several percent between runs on a shared CPU; the per-phase medians show which phase a
method's extra cost sits in.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_training as bt  # noqa: E402

PHASES = ("pruner.step", "forward", "backward", "clip", "optimizer", "zero_grad")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="bert-base-4l", choices=list(bt.SHAPES))
    parser.add_argument("--variants", nargs="+", default=["dense", "pdp", "hardened"])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    import torch

    run_args = argparse.Namespace(shape=args.shape, device="cpu", dtype="fp32", warmup=args.warmup, steps=args.steps,
                                  seq_len=args.seq_len, flush_denormal=False, batch_sizes=[args.batch_size])
    runs = {v: bt.Run(v, run_args) for v in args.variants}
    times = {v: {p: [] for p in PHASES} for v in runs}
    for step in range(args.warmup + args.steps):
        batch = bt.make_batch(run_args, args.batch_size, step)
        for variant, run in runs.items():
            marks = [time.perf_counter()]
            if run.pruner is not None:
                run.pruner.step(run.global_step)
            marks.append(time.perf_counter())
            loss = run.model(**batch).loss
            marks.append(time.perf_counter())
            loss.backward()
            marks.append(time.perf_counter())
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
            marks.append(time.perf_counter())
            run.optimizer.step()
            marks.append(time.perf_counter())
            run.optimizer.zero_grad(set_to_none=True)
            marks.append(time.perf_counter())
            run.global_step += 1
            if step >= args.warmup:
                for phase, start, end in zip(PHASES, marks, marks[1:]):
                    times[variant][phase].append(end - start)
    print(f"# {args.shape}, batch {args.batch_size}, seq {args.seq_len}, cpu fp32, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median ms per phase over {args.steps} steps after {args.warmup} warm-up")
    medians = {v: {p: 1000 * statistics.median(t) for p, t in phases.items()} for v, phases in times.items()}
    first = args.variants[0]
    for variant, phases in medians.items():
        cells = ", ".join(f"{p} {ms:.1f}" + (f" ({ms - medians[first][p]:+.1f})" if variant != first else "")
                          for p, ms in phases.items())
        print(f"{variant}: {cells}; total {sum(phases.values()):.1f}")


if __name__ == "__main__":
    main()
