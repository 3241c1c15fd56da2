import torch
from transformers import BertConfig, BertForSequenceClassification
from pdp_hf import PDPConfig, apply_pruning, finalize_pruning, get_pruner, sparsity_report
for method, extra in [("pdp", {}), ("magnitude", {}), ("smart", {}), ("movement", {}), ("smart", dict(granularity="n:m")), ("movement", dict(granularity="attention=head,ffn=neuron", target_sparsity=0.5))]:
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, vocab_size=100)).cuda().train()
    kw = dict(target_sparsity=0.9); kw.update(extra)
    if kw.get("granularity") == "n:m": kw.pop("target_sparsity")
    config = PDPConfig(method=method, pruning_start=2, pruning_end=12, harden_at=16, **kw)
    apply_pruning(model, config)
    pruner = get_pruner(model); pruner.set_total_steps(24)
    weights = [p for n, p in model.named_parameters() if not n.startswith("pdp_scores.")]
    opt = torch.optim.AdamW([{"params": weights}, *pruner.optimizer_param_groups()], lr=1e-3)
    pruner.set_optimizer(opt)
    for step in range(24):
        pruner.step(step)
        ids = torch.randint(1, 100, (8, 32), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids[:, 0] % 2).loss
        loss.backward(); opt.step(); opt.zero_grad()
        assert torch.isfinite(loss), (method, step)
    finalize_pruning(model)
    rep = sparsity_report(model, config=config)
    units = {k: (v["pruned_units"], v["units"]) for k, v in list(rep["units"].items())[:2]}
    print(method, extra, "total sparsity", round(rep["total"]["sparsity"], 4), "scores left", hasattr(model, "pdp_scores"), units, flush=True)
