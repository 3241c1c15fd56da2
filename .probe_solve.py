import time, torch
from pdp_hf.topk import solve_lambda
torch.manual_seed(0)
sizes=[768*768]*16+[768*3072]*8
parts=[torch.rand(n) for n in sizes]
k=int(0.1*sum(sizes)); tau=0.5
def pooled(parts, lam):
    fs=sl=0
    for p in parts:
        f=torch.sigmoid(p/tau+lam); fs=fs+f.sum(); sl=sl+(f*(1-f)).sum()
    return fs, sl
t=time.perf_counter(); cat=torch.cat(parts).view(1,-1); lam=solve_lambda(cat,k,tau,dtype=torch.float32); t1=time.perf_counter()
print("concat solve", 1000*(t1-t))
for _ in range(2):
    t=time.perf_counter(); 
    for i in range(5): pooled(parts, lam.view(()))
    t1=time.perf_counter()
    s=cat/tau
    for i in range(5): f=torch.sigmoid(s+lam); f.sum(); (f*(1-f)).sum()
    t2=time.perf_counter()
    print("per-iter pooled", 1000*(t1-t)/5, "concat", 1000*(t2-t1)/5)
