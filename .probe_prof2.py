import time, torch
from transformers import BertConfig, BertForSequenceClassification
from pdp_hf import PDPConfig, apply_pruning, get_pruner
import pdp_hf.methods.smart as sm
calls=[]
orig=sm.solve_lambda
def counting(*a, **k):
    import pdp_hf.topk as tk
    n=[0]; o=torch.sigmoid
    def sig(x): n[0]+=1; return o(x)
    tk.torch.sigmoid=sig
    try: return orig(*a, **k)
    finally:
        tk.torch.sigmoid=o; calls.append(n[0])
sm.solve_lambda=counting
torch.manual_seed(0)
m = BertForSequenceClassification(BertConfig(hidden_size=768, num_hidden_layers=4, num_attention_heads=12, intermediate_size=3072))
cfg = PDPConfig(target_sparsity=0.9, pruning_start=0, pruning_end=50, harden_at=None, method="smart", sparsity_distribution="learned")
p = get_pruner(apply_pruning(m, cfg)); p.set_total_steps(51)
for step in range(0, 8):
    with torch.no_grad():
        for g in p.groups: g.score.add_(0.01*torch.randn_like(g.score))
    t=time.perf_counter(); b=p.compute_budgets(); t1=time.perf_counter()
    calls.clear(); p.step(step); t2=time.perf_counter()
    print(step, f"budgets {1000*(t1-t):.0f} ms, step {1000*(t2-t1):.0f} ms, newton iters {calls}")
