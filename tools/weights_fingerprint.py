#!/usr/bin/env python
"""A SHA-256 of the final state_dict of tiny models trained with every method, granularity and distribution.

    python tools/weights_fingerprint.py > after.txt     # then diff against benchmarks/weights_fingerprint.txt
    python tools/weights_fingerprint.py --fused_masks on > fused.txt    # the fused masks: the same hashes

A change that claims not to alter behaviour (a refactor, a faster kernel path that must stay bit-identical in fp32 on
the CPU) must leave every line unchanged. Each line trains a tiny BERT (or ViT) from a fixed seed for 16 optimizer
steps of AdamW through the `Pruner` API (dense warm-up, ramp, hardening, fine-tuning with fixed masks), finalizes, and
hashes every tensor of the state_dict in key order. The hashes depend on the CPU's floating-point kernels, so compare
runs made on the same machine and torch build.
"""

from __future__ import annotations

import hashlib
import sys

import torch
from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

from pdp_hf import PDPConfig, apply_pruning, finalize_pruning, get_pruner

STEPS = 16
# `--fused_masks on`: the whole model's masks at once (pdp_hf.fused), which must give the same hashes as "off"
FUSED_MASKS = sys.argv[sys.argv.index("--fused_masks") + 1] if "--fused_masks" in sys.argv else "auto"
GRANULARITIES = {
    "unstructured": {},
    "2:4": {"granularity": "n:m", "n_m": "2:4"},
    "neuron": {"granularity": "neuron"},
    "head": {"granularity": "head"},
    "block": {"granularity": "block", "block_size": 8},
    "heads+neurons": {"granularity": "attention=head,ffn=neuron"},
}
METHODS = ("pdp", "smart", "movement", "magnitude")
DISTRIBUTIONS = ("uniform", "global", "learned")


def tiny(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "vit":
        return ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=4, intermediate_size=64, num_labels=3))
    return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=64, num_labels=3))


def batch(kind: str, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    labels = torch.randint(0, 3, (8,), generator=g)
    if kind == "vit":
        return {"pixel_values": torch.randn(8, 3, 16, 16, generator=g), "labels": labels}
    return {"input_ids": torch.randint(0, 100, (8, 12), generator=g), "labels": labels}


def fingerprint(kind: str, method: str, granularity: str, distribution: str) -> str:
    model = tiny(kind)
    config = PDPConfig(method=method, sparsity_distribution=distribution, target_sparsity=None if granularity == "2:4"
                       else 0.5, pruning_start=2, pruning_end=8, harden_at=12, threshold_refresh_steps=3,
                       mask_kernel="eager", fused_masks=FUSED_MASKS, **GRANULARITIES[granularity])
    apply_pruning(model, config)
    pruner = get_pruner(model)
    params = [p for n, p in model.named_parameters() if not n.startswith("pdp_scores.")]
    optimizer = torch.optim.AdamW([{"params": params}, *pruner.optimizer_param_groups()], lr=1e-3)
    pruner.set_total_steps(STEPS)
    pruner.set_optimizer(optimizer)
    model.train()
    for step in range(STEPS):
        pruner.step(step)
        model(**batch(kind, step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    finalize_pruning(model)
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cases():
    for kind in ("bert", "vit"):
        for method in METHODS:
            for granularity in GRANULARITIES:
                for distribution in DISTRIBUTIONS:
                    if distribution != "uniform" and granularity == "2:4":
                        continue  # N:M has nothing to distribute
                    if distribution == "learned" and method not in ("smart", "movement"):
                        continue
                    yield kind, method, granularity, distribution


def main() -> None:
    torch.set_num_threads(1)
    for case in cases():
        try:
            value = fingerprint(*case)
        except Exception as err:  # a refusal is part of the behaviour too
            value = f"error {type(err).__name__}: {str(err)[:80]}"
        print(" ".join(case), value, flush=True)


if __name__ == "__main__":
    sys.exit(main())
