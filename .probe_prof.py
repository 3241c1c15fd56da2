import time, torch
from transformers import BertConfig, BertForSequenceClassification
from pdp_hf import PDPConfig, apply_pruning, get_pruner
torch.manual_seed(0)
for dist in ("uniform", "learned"):
    m = BertForSequenceClassification(BertConfig(hidden_size=768, num_hidden_layers=4, num_attention_heads=12, intermediate_size=3072))
    cfg = PDPConfig(target_sparsity=0.9, pruning_start=0, pruning_end=50, harden_at=None, method="smart", sparsity_distribution=dist)
    p = get_pruner(apply_pruning(m, cfg)); p.set_total_steps(51)
    for step in range(0, 14):
        with torch.no_grad():
            for g in p.groups: g.score.add_(0.01*torch.randn_like(g.score))
        t=time.perf_counter(); p.step(step); t1=time.perf_counter()
        for g in p.groups: g.score.grad = torch.randn_like(g.score)
        t2=time.perf_counter(); p.adjust_score_gradients(); t3=time.perf_counter()
        print(dist, step, f"step {1000*(t1-t):.0f} ms, adjust {1000*(t3-t2):.0f} ms")
