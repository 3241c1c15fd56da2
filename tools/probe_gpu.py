#!/usr/bin/env python
"""A GPU probe (needs CUDA): 2:4 semi-structured vs dense per Linear (CUTLASS and cuSPARSELt) and per BERT-base
model (eager and torch.compile), then where the time of PDP and magnitude training steps goes (torch.profiler).

    PYTHONPATH=. python tools/probe_gpu.py      # the H200 run's output: benchmarks/gpu_probe.txt
"""

from __future__ import annotations

import copy
import os
import sys
import time
import types

import torch
from torch.profiler import ProfilerActivity, profile
from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured
from transformers import BertConfig, BertForSequenceClassification

from pdp_hf import PDPConfig, apply_pruning, finalize_pruning, optimize_for_inference

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import benchmark_training as bt  # noqa: E402

DEVICE = "cuda"


def wall_us(fn, iters: int = 50) -> float:
    """Mean wall time per call in microseconds, after 5 warm-up calls, synchronized."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e6


def linear_level() -> None:
    print("== linear level, bf16, us per call (wall)")
    linear = torch.nn.functional.linear
    for tokens, out_f, in_f in [(128, 3072, 768), (4096, 3072, 768), (4096, 768, 3072), (32768, 3072, 768), (32768, 768, 3072)]:
        w = torch.randn(out_f, in_f, device=DEVICE, dtype=torch.bfloat16)
        w = w * (torch.arange(in_f, device=DEVICE) % 4 < 2)  # 2:4
        x = torch.randn(tokens, in_f, device=DEVICE, dtype=torch.bfloat16)
        row = [f"tokens {tokens} W {out_f}x{in_f}: dense {wall_us(lambda x=x, w=w: linear(x, w)):.0f}"]
        for name, force in (("cutlass", True), ("cusparselt", False)):
            try:
                SparseSemiStructuredTensor._FORCE_CUTLASS = force
                ws = to_sparse_semi_structured(w)
                row.append(f"{name}({type(ws).__name__}) {wall_us(lambda x=x, ws=ws: linear(x, ws)):.0f}")
                x3 = x.view(tokens // 128 if tokens >= 128 else 1, -1, in_f)
                row.append(f"{name}-3d {wall_us(lambda x3=x3, ws=ws: linear(x3, ws)):.0f}")
            except Exception as err:  # a kernel this GPU does not have: say which and why
                row.append(f"{name} failed: {str(err)[:120]}")
        print(" | ".join(row), flush=True)
    SparseSemiStructuredTensor._FORCE_CUTLASS = False


def model_level() -> None:
    print("== whole model BERT-base 12L, bf16, batch 32 seq 128, ms per forward (wall)")
    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(num_labels=2)).eval()
    finalize_pruning(apply_pruning(base, PDPConfig(method="magnitude", granularity="n:m", n_m="2:4")))
    base = base.to(DEVICE, torch.bfloat16)
    ids = torch.randint(1000, 2000, (32, 128), device=DEVICE)
    dense = copy.deepcopy(base)
    semi = optimize_for_inference(copy.deepcopy(base), "semi-structured")
    with torch.inference_mode():
        for label, model in (("dense eager", dense), ("semi eager", semi)):
            print(label, f"{wall_us(lambda m=model: m(input_ids=ids), 20) / 1000:.2f} ms", flush=True)
        try:
            for label, model in (("dense compiled", torch.compile(dense)), ("semi compiled", torch.compile(semi))):
                start = time.time()
                model(input_ids=ids)
                compile_s = time.time() - start
                print(label, "compile", f"{compile_s:.0f}s", f"{wall_us(lambda m=model: m(input_ids=ids), 20) / 1000:.2f} ms", flush=True)
        except Exception as err:
            print("compile failed:", str(err)[:300])


def training_profile() -> None:
    print("== PDP training step profile, BERT-base 12L bf16 autocast batch 32")
    args = types.SimpleNamespace(shape="bert-base", device=DEVICE, dtype="bf16", warmup=2, steps=20, seq_len=128,
                                 flush_denormal=False)
    for variant in ("pdp", "magnitude"):
        run = bt.Run(variant, args)
        for i in range(12):  # past an exact refresh
            run.step(bt.make_batch(args, 32, i))
        for label, step in (("sampled", run.global_step), ("exact", 10)):
            start = time.perf_counter()
            run.pruner.step(step)
            torch.cuda.synchronize()
            print(variant, f"pruner.step {label}", f"{(time.perf_counter() - start) * 1000:.1f} ms")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(12, 16):
                run.step(bt.make_batch(args, 32, i))
        for key, rows in (("self_cpu_time_total", 14), ("self_cuda_time_total", 10)):
            print(variant, "by", key)
            print(prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=50))


if __name__ == "__main__":
    linear_level()
    model_level()
    training_profile()
