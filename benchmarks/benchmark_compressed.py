#!/usr/bin/env python
"""Size of a compressed export against the plain one, for a finished export folder.

    python benchmarks/benchmark_compressed.py outputs/demo/export

Prints the pruned matrices' bytes (bitmask + values vs dense) and the whole weight files, and checks that the
compressed folder loads back bit-exactly.
"""

import os
import sys
import tempfile

import torch
from safetensors import safe_open

from pdp_hf import export_pruned, load_pruned, sparsity_report
from pdp_hf.compressed import COMPRESSED_WEIGHTS_NAME


def main(folder: str) -> None:
    model = load_pruned(folder)
    report = sparsity_report(model)
    with tempfile.TemporaryDirectory() as tmp:
        packed_dir = export_pruned(model, os.path.join(tmp, "packed"), compressed=True)
        packed_file = os.path.join(packed_dir, COMPRESSED_WEIGHTS_NAME)
        with safe_open(packed_file, framework="pt") as f:
            packed = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys() if "__pdp_" in k)
        dense = sum(row["numel"] for row in report["modules"].values()) * 4
        exact = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), load_pruned(packed_dir).state_dict().values()))
        plain_size = os.path.getsize(os.path.join(folder, "model.safetensors"))
        print(f"sparsity of pruned matrices: {report['total']['sparsity']:.4f}")
        print(f"pruned matrices: {packed / 2**20:.2f} MiB compressed vs {dense / 2**20:.2f} MiB dense = {packed / dense:.4f}x")
        print(f"whole weight file: {os.path.getsize(packed_file) / 2**20:.2f} MiB vs {plain_size / 2**20:.2f} MiB = "
              f"{os.path.getsize(packed_file) / plain_size:.4f}x (embeddings and head stay dense)")
        print(f"round trip bit-exact: {exact}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "outputs/demo/export")
