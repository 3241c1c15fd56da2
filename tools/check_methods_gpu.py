#!/usr/bin/env python
"""Every method trains on CUDA under bf16 autocast and ends with exact sparsity (a check for a machine with a GPU).

    PYTHONPATH=. python tools/check_methods_gpu.py      # the H200 run's output: benchmarks/gpu_checks.txt

A small BERT (hidden 128, 2 layers) in a custom loop with the pruner driven by hand (scores in their own AdamW group,
`set_optimizer` for hardening), 24 steps through the ramp and hardening, then `finalize_pruning` and the report.
"""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification

from pdp_hf import PDPConfig, apply_pruning, finalize_pruning, get_pruner, sparsity_report

CASES = [
    ("pdp", {}), ("magnitude", {}), ("smart", {}), ("movement", {}), ("smart", dict(granularity="n:m")),
    ("movement", dict(granularity="attention=head,ffn=neuron", target_sparsity=0.5)),
]


def main() -> None:
    for method, extra in CASES:
        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                                         intermediate_size=256, vocab_size=100)).cuda().train()
        kwargs = {"target_sparsity": 0.9, **extra}
        if kwargs.get("granularity") == "n:m":
            kwargs.pop("target_sparsity")
        config = PDPConfig(method=method, pruning_start=2, pruning_end=12, harden_at=16, **kwargs)
        apply_pruning(model, config)
        pruner = get_pruner(model)
        pruner.set_total_steps(24)
        weights = [p for n, p in model.named_parameters() if not n.startswith("pdp_scores.")]
        optimizer = torch.optim.AdamW([{"params": weights}, *pruner.optimizer_param_groups()], lr=1e-3)
        pruner.set_optimizer(optimizer)
        for step in range(24):
            pruner.step(step)
            ids = torch.randint(1, 100, (8, 32), device="cuda")
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids[:, 0] % 2).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            assert torch.isfinite(loss), (method, step)
        finalize_pruning(model)
        report = sparsity_report(model, config=config)
        units = {k: (v["pruned_units"], v["units"]) for k, v in list(report["units"].items())[:2]}
        print(method, extra, "total sparsity", round(report["total"]["sparsity"], 4), "scores left",
              hasattr(model, "pdp_scores"), units, flush=True)


if __name__ == "__main__":
    main()
