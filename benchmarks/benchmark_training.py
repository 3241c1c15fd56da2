#!/usr/bin/env python
"""Training-step cost of pruning beside dense training, as ratios measured side by side in one process.

    python benchmarks/benchmark_training.py                                  # BERT-base width, 4 layers; batch 8 and 32
    python benchmarks/benchmark_training.py --shape minilm --batch_sizes 8 --steps 10
    python benchmarks/benchmark_training.py --device cuda --dtype bf16        # on a GPU, bf16 autocast
    python benchmarks/benchmark_training.py --count_ops                       # operators per step, 2 and 8 layers

Every variant is its own copy of the same model (random weights: cost does not depend on them) with its own AdamW,
trained on the same batches. Steps are interleaved (one step of every variant, in a fresh random order, then the
next), so a slow drift of a shared machine hits every variant alike, and each ratio is the variant's total time over the dense total
across all measured steps (whole cycles of `threshold_refresh_steps`, so the exact-selection steps are counted at
their real frequency), with the mean of the dense instances (`dense`, `dense-2`) as the denominator. A step is what Trainer does per optimizer step: forward, backward, gradient clipping,
AdamW, zero_grad, plus `Pruner.step` for the pruned variants.

Variants:
- `dense`: plain nn.Linear layers;
- `dense-2`: a second, identical dense model: its ratio to `dense` shows how far two equal runs differ here;
- `floor`: the targeted layers pay the memory traffic of the floor of any per-weight mask, with no arithmetic
  (forward reads W and writes W'; backward reads W and the gradient, writes the weight gradient);
- `pdp`: PDP in its ramp (soft masks, threshold selection) with the default fused kernel (`mask_kernel="auto"`);
- `pdp-eager`: the same with `mask_kernel="eager"` (one pass per elementwise operation);
- `magnitude`: gradual magnitude pruning in its ramp (hard masks recomputed every step);
- `hardened`: after hardening, pruned weights zero in place with masked gradients (PrunerTrainer's path);
- `hardened-masked`: after hardening with the mask multiplied in at every forward (a loop without
  `Pruner.set_optimizer`, and pdp_hf before 0.3).
Peak memory is measured per variant in a child process (VmHWM on Linux CPU with glibc's mmap threshold fixed, so
that freed tensors leave the count; max allocated on CUDA) over 3 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

SHAPES = {
    "bert-base-4l": dict(hidden_size=768, num_hidden_layers=4, num_attention_heads=12, intermediate_size=3072),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}
VARIANTS = ("dense", "dense-2", "floor", "pdp", "pdp-eager", "magnitude", "smart", "smart-learned", "movement", "hardened",
            "hardened-masked")
# also accepted: "<v>-fused" and "<v>-pergroup" for v in FUSED_VARIANTS (see pdp_config)


def floor_linear_class():
    """A Linear whose weight costs exactly the memory traffic of the floor of any per-weight mask, with no
    arithmetic: forward reads W and writes a copy; backward reads W and the incoming gradient and writes the weight
    gradient (equal to the incoming one)."""
    import torch
    import torch.nn.functional as F

    class Floor(torch.autograd.Function):
        @staticmethod
        def forward(ctx, weight):
            ctx.save_for_backward(weight)
            return weight.clone()

        @staticmethod
        def backward(ctx, grad):
            (weight,) = ctx.saved_tensors
            return torch.addcmul(grad, grad, weight, value=0.0)

    class FloorLinear(torch.nn.Linear):
        def forward(self, x):
            return F.linear(x, Floor.apply(self.weight), self.bias)

    return FloorLinear


# "<variant>-fused" / "<variant>-pergroup": the same with PDPConfig(fused_masks="on" / "off"); the plain variant has
# the default ("auto": fused on a GPU, group by group on the CPU)
FUSED_VARIANTS = ("pdp", "magnitude", "smart", "movement", "hardened")
FUSED_SUFFIXES = {"-fused": "on", "-pergroup": "off"}


def pdp_config(variant: str, ramp_steps: int):
    from pdp_hf import PDPConfig

    for suffix, setting in FUSED_SUFFIXES.items():
        if variant.endswith(suffix):
            config = pdp_config(variant[: -len(suffix)], ramp_steps)
            config.fused_masks = setting
            return config
    # The ramp covers every step measured (mid-ramp at the end), soft masks and selection active at each.
    ramp = dict(target_sparsity=0.9, pruning_start=0, pruning_end=ramp_steps, harden_at=None)
    if variant == "pdp":
        return PDPConfig(**ramp)
    if variant == "pdp-eager":
        return PDPConfig(**ramp, mask_kernel="eager")
    if variant in ("magnitude", "smart", "movement"):
        return PDPConfig(**ramp, method=variant)
    if variant == "smart-learned":  # one lambda across layers, layers re-ranked at every refresh, the gradient fix-up
        return PDPConfig(**ramp, method="smart", sparsity_distribution="learned")
    if variant in ("hardened", "hardened-masked"):
        return PDPConfig(target_sparsity=0.9, pruning_start=0, pruning_end=0, harden_at=0)  # hard from step 0
    return None


class Run:
    """One variant: its model, optimizer and pruner, and a `step(batch)` as Trainer would run it."""

    def __init__(self, variant: str, args):
        import torch
        from transformers import BertConfig, BertForSequenceClassification

        from pdp_hf import apply_pruning, get_pruner

        torch.manual_seed(0)
        self.variant, self.args, self.torch = variant, args, torch
        self.model = BertForSequenceClassification(BertConfig(**SHAPES[args.shape], num_labels=2)).to(args.device)
        self.model.train()
        self.pruner = None
        if variant == "floor":
            from pdp_hf.targets import find_targets

            floor_linear = floor_linear_class()
            for name in find_targets(self.model, None):
                self.model.get_submodule(name).__class__ = floor_linear
        ramp_steps = 2 * (args.warmup + args.steps + 1)
        config = pdp_config(variant, ramp_steps)
        if config is not None:
            self.pruner = get_pruner(apply_pruning(self.model, config))
            self.pruner.set_total_steps(ramp_steps + 1)
        # SMART's and movement's scores train in their own group, as PrunerTrainer sets it up
        weights = [p for n, p in self.model.named_parameters() if not n.startswith("pdp_scores.")]
        groups = self.pruner.optimizer_param_groups() if self.pruner is not None else []
        self.optimizer = torch.optim.AdamW([{"params": weights}, *groups], lr=1e-5)
        if config is not None:
            if variant != "hardened-masked":
                self.pruner.set_optimizer(self.optimizer)
        self.global_step = 0

    def step(self, batch) -> float:
        torch = self.torch
        if self.args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if self.pruner is not None:
            self.pruner.step(self.global_step)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.args.dtype)
        with torch.autocast(self.args.device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.args.device == "cuda":
            torch.cuda.synchronize()
        self.global_step += 1
        return time.perf_counter() - start


def make_batch(args, batch_size: int, step: int):
    import torch

    g = torch.Generator().manual_seed(step)
    ids = torch.randint(1000, 20000, (batch_size, args.seq_len), generator=g)
    return {"input_ids": ids.to(args.device), "labels": (ids[:, 0] % 2).to(args.device)}


def peak_memory(variant: str, batch_size: int, args) -> float:
    """Peak memory (MiB) of `steps` training steps of one variant, in a fresh process."""
    command = [sys.executable, __file__, "--child", variant, "--batch_sizes", str(batch_size), *passthrough(args)]
    # glibc's malloc keeps freed blocks below its mmap threshold, which it raises as large blocks are freed: the high
    # water mark then counts memory no tensor holds any more. A fixed threshold returns every freed tensor to the
    # system, so VmHWM counts what was alive at once, as max_memory_allocated does on CUDA.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])["peak_mib"]


def passthrough(args) -> list[str]:
    flags = [f"--{k}={getattr(args, k)}" for k in ("shape", "seq_len", "device", "dtype", "warmup", "steps")]
    return flags + (["--flush_denormal"] if args.flush_denormal else [])


def child(variant: str, args) -> None:
    import torch

    run = Run(variant, args)
    for step in range(3):
        run.step(make_batch(args, args.batch_sizes[0], step))
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # VmHWM, not ru_maxrss: the latter keeps the parent's peak from before exec
        with open("/proc/self/status", encoding="utf-8") as f:
            peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    print("RESULT " + json.dumps({"peak_mib": peak}))


# Operators that only re-describe memory: no kernel runs for them on a GPU.
VIEW_OPS = {"aten::view", "aten::_unsafe_view", "aten::as_strided", "aten::reshape", "aten::t", "aten::transpose",
            "aten::expand", "aten::expand_as", "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze",
            "aten::permute", "aten::alias", "aten::detach", "aten::view_as", "aten::unflatten", "aten::flatten",
            "aten::split", "aten::chunk", "aten::unbind", "aten::narrow", "aten::lift_fresh", "aten::numpy_T"}


def count_step_operators(method: str | None, layers: int, phase: str, mask_kernel: str = "eager",
                         level: str = "leaf", granularity: str = "unstructured") -> int:
    """Operators dispatched by one training step (Pruner.step, forward, backward, clipping, AdamW, zero_grad) of a tiny
    BERT with `layers` layers: the leaf aten operators torch.profiler records on the CPU, views excluded; on a GPU each
    is about one kernel launch. `method` None is dense; `phase` "ramp" (soft masks, a step between exact refreshes)
    or "hardened" (fixed masks, zeros kept in place). `level="top"` counts the outermost aten operators instead
    (a composite such as aten::linear once, not its addmm)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import BertConfig, BertForSequenceClassification

    from pdp_hf import PDPConfig, apply_pruning, get_pruner

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=2))
    model.train()
    pruner = None
    if method is not None:
        schedule = dict(pruning_start=0, pruning_end=100, harden_at=None) if phase == "ramp" else dict(
            pruning_start=0, pruning_end=0, harden_at=0)
        pruner = get_pruner(apply_pruning(model, PDPConfig(method=method, target_sparsity=0.5, mask_kernel=mask_kernel,
                                                           granularity=granularity, fused_masks="on", **schedule)))
        pruner.set_total_steps(200)
    weights = [p for n, p in model.named_parameters() if not n.startswith("pdp_scores.")]
    # Trainer's default optimizer (optim="adamw_torch_fused") and multi-tensor clipping (its GPU default)
    optimizer = torch.optim.AdamW([{"params": weights}, *(pruner.optimizer_param_groups() if pruner else [])], lr=1e-4,
                                  fused=True)
    if pruner is not None:
        pruner.set_optimizer(optimizer)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, 100, (4, 16), generator=g), "labels": torch.randint(0, 2, (4,), generator=g)}

    def step(index):
        if pruner is not None:
            pruner.step(index)
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for index in range(4):  # past the exact selection at step 0: step 4 is a step between refreshes
        step(index)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(4)
    count = 0
    for event in prof.events():
        if not event.name.startswith("aten::") or event.name in VIEW_OPS or _inside_multi_tensor(event):
            continue
        if event.name == "aten::to" and not event.cpu_children:  # to the dtype and device it has: returns itself
            continue
        if event.name.startswith(MULTI_TENSOR):  # one multi-tensor launch on a GPU; per tensor on the CPU
            count += 1
        elif level == "top":
            parent = event.cpu_parent
            count += parent is None or not parent.name.startswith("aten::")
        elif not any(child.name.startswith("aten::") and child.name not in VIEW_OPS for child in event.cpu_children):
            count += 1
    return count


# Multi-tensor operators (torch._foreach_*, the fused AdamW): one launch (or a few) for all tensors on a GPU, whose
# CPU implementation loops over the tensors with per-tensor operators; counted once, without what runs inside.
MULTI_TENSOR = ("aten::_foreach_", "aten::_fused_")


def _inside_multi_tensor(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(MULTI_TENSOR):
            return True
        parent = parent.cpu_parent
    return False


def count_ops_table(methods=("pdp", "smart", "movement", "magnitude"), layers=(2, 8),
                    granularities=("unstructured", "attention=head,ffn=neuron")) -> list[str]:
    """Operators per step at 2 and 8 layers, and each method's extra per added layer, ramp and hardened."""
    dense = {n: count_step_operators(None, n, "ramp") for n in layers}
    per_layer = (dense[layers[1]] - dense[layers[0]]) / (layers[1] - layers[0])
    rows = [f"dense: {dense[layers[0]]} operators at {layers[0]} layers, {dense[layers[1]]} at {layers[1]} "
            f"({per_layer:.0f} per layer)", "",
            f"| method | granularity | phase | extra at {layers[0]} layers | extra at {layers[1]} layers | "
            "extra per added layer |", "|---|---|---|---:|---:|---:|"]
    for granularity in granularities:
        for method in methods:
            for phase in ("ramp", "hardened"):
                extra = {n: count_step_operators(method, n, phase, granularity=granularity) - dense[n] for n in layers}
                growth = (extra[layers[1]] - extra[layers[0]]) / (layers[1] - layers[0])
                rows.append(f"| {method} | {granularity} | {phase} | {extra[layers[0]]} | {extra[layers[1]]} | "
                            f"{growth:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="bert-base-4l", choices=list(SHAPES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS) + [
        v + suffix for v in FUSED_VARIANTS for suffix in FUSED_SUFFIXES])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2, help="Unmeasured steps per variant (compilation, caches).")
    parser.add_argument("--steps", type=int, default=20, help="Measured steps per variant (a multiple of 10).")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--no_memory", action="store_true", help="Skip the per-variant peak-memory processes.")
    parser.add_argument("--flush_denormal", action="store_true",
                        help="torch.set_flush_denormal(True) (CPU): denormal floats computed as zero.")
    parser.add_argument("--count_ops", action="store_true", help="Only the operators-per-step table (tiny BERT, CPU).")
    parser.add_argument("--child", metavar="VARIANT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.count_ops:
        print(f"# operators per training step (torch.profiler, CPU, leaf aten ops; views, no-op casts and what runs inside "
              f"a multi-tensor op excluded, the multi-tensor op counted once; torch {torch.__version__}); tiny BERT "
              "(hidden 32, 2 heads, FFN 64), batch 4 x 16, 50% sparsity, eager masks; fused AdamW and multi-tensor "
              "clipping as Trainer runs them on a GPU")
        print("\n".join(count_ops_table()))
        return

    if args.flush_denormal:
        torch.set_flush_denormal(True)
    if args.child:
        child(args.child, args)
        return
    variants = ["dense"] + [v for v in args.variants if v != "dense"]

    print(f"# {args.shape}, seq {args.seq_len}, {args.device}, {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.steps} measured steps per variant after {args.warmup} warm-up"
          + ("; denormals flushed" if args.flush_denormal else ""))
    rows = []
    for batch_size in args.batch_sizes:
        runs = {v: Run(v, args) for v in variants}
        totals = dict.fromkeys(variants, 0.0)
        per_step = {v: [] for v in variants}
        order = random.Random(0)
        for step in range(args.warmup + args.steps):
            batch = make_batch(args, batch_size, step)
            # A fresh random order at every step: no variant always runs after the same one.
            for variant in order.sample(variants, len(variants)):
                seconds = runs[variant].step(batch)
                if step >= args.warmup:
                    totals[variant] += seconds
                    per_step[variant].append(seconds)
            if step >= args.warmup:
                print(f"batch {batch_size} step {step - args.warmup + 1}/{args.steps}: "
                      + ", ".join(f"{v} {1000 * totals[v] / (step - args.warmup + 1):.0f} ms" for v in variants), flush=True)
        del runs
        memory = {} if args.no_memory else {v: peak_memory(v, batch_size, args) for v in variants}
        # The baseline is the mean of the dense instances: two identical dense models can differ by several percent
        # on a shared machine (their ratio is printed as the `dense-2` row), and no single one is the truth.
        dense_runs = [v for v in variants if v.startswith("dense")]
        dense_total = sum(totals[v] for v in dense_runs) / len(dense_runs)
        dense_mem = {v: memory[v] for v in dense_runs if v in memory}
        # Paired: each step's time over the dense instances' mean in that same step, the median over steps. A slow
        # spell of the machine (other tenants) moves every variant of a step alike and leaves this ratio alone.
        dense_steps = [sum(per_step[v][i] for v in dense_runs) / len(dense_runs) for i in range(args.steps)]
        for variant in variants:
            mem = memory.get(variant)
            mem_ratio = mem / (sum(dense_mem.values()) / len(dense_mem)) if mem is not None and dense_mem else None
            paired = statistics.median(t / d for t, d in zip(per_step[variant], dense_steps))
            rows.append((batch_size, variant, 1000 * totals[variant] / args.steps, totals[variant] / dense_total,
                         paired, mem, mem_ratio))

    print("\n| batch | variant | ms / step | step ratio to dense | paired median ratio | peak MiB | memory ratio to dense |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for batch_size, variant, ms, ratio, paired, mem, mem_ratio in rows:
        mem_cells = f"{mem:.0f} | {mem_ratio:.3f}" if mem is not None else "- | -"
        print(f"| {batch_size} | {variant} | {ms:.1f} | {ratio:.3f} | {paired:.3f} | {mem_cells} |")
    print("(ratios are to the mean of the dense instances; paired: the median over steps of each step's ratio)")


if __name__ == "__main__":
    main()
