import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
)

# Tiny models gain nothing from threads; one per test process keeps the suite fast on small machines.
torch.set_num_threads(1)

VOCAB, SEQ = 64, 8


def tiny_bert(seed: int = 0, layers: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, num_labels=2,
    )
    return BertForSequenceClassification(config)


def tiny_roberta(seed: int = 0) -> RobertaForSequenceClassification:
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=40, num_labels=2,
    )
    return RobertaForSequenceClassification(config)


def tiny_distilbert(seed: int = 0) -> DistilBertForSequenceClassification:
    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=32)
    return DistilBertForSequenceClassification(config)


def tiny_vit(seed: int = 0, num_labels: int = 3) -> ViTForImageClassification:
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=num_labels,
    )
    return ViTForImageClassification(config)


def text_dataset(n: int = 64, seed: int = 0):
    from datasets import Dataset  # imported here: the GPU checks run where `datasets` is not installed

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
    labels = (ids[:, 0] > VOCAB // 2).long()
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


def image_dataset(n: int = 48, seed: int = 0, num_labels: int = 3):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_labels, (n,), generator=g)
    pixels = torch.randn(n, 1, 8, 8, generator=g) + labels.view(-1, 1, 1, 1).float()
    return Dataset.from_dict({"pixel_values": pixels.tolist(), "labels": labels.tolist()})


def training_args(output_dir, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(output_dir), max_steps=20, per_device_train_batch_size=8, learning_rate=1e-3,
        logging_steps=5, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
        dataloader_num_workers=0,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


@pytest.fixture
def make_args(tmp_path):
    return lambda **kw: training_args(tmp_path / "run", **kw)


def errors_without_pdp_hf(cases: list[tuple], tmp_path) -> dict[str, dict]:
    """Load each export in one subprocess where `import pdp_hf` fails: Transformers with trust_remote_code, and
    onnxruntime on its `model.onnx` where asked. `cases`: (folder, inputs, reference logits, with_onnx). Returns
    folder -> {"class": the model class loaded, "errors": [max |logits - reference| in Transformers, and in
    onnxruntime when asked]}."""
    import json
    import subprocess
    import sys

    listed = []
    for index, (folder, inputs, reference, with_onnx) in enumerate(cases):
        path = tmp_path / f"case{index}.pt"
        torch.save({"inputs": inputs, "reference": reference}, path)
        listed.append((str(folder), str(path), bool(with_onnx)))
    code = f"""
import json, sys
sys.modules["pdp_hf"] = None  # `import pdp_hf` raises ImportError from here on
try:
    import pdp_hf
except ImportError:
    pass
else:
    raise SystemExit("pdp_hf is importable")
import torch
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification
errors = {{}}
for folder, path, with_onnx in {listed!r}:
    case = torch.load(path)
    auto = AutoModelForImageClassification if "pixel_values" in case["inputs"] else AutoModelForSequenceClassification
    model = auto.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        found = [(model(**case["inputs"]).logits - case["reference"]).abs().max().item()]
    errors[folder] = {{"class": type(model).__name__, "errors": found}}
    if with_onnx:
        import onnxruntime
        session = onnxruntime.InferenceSession(folder + "/model.onnx")
        feed = {{i.name: case["inputs"][i.name].numpy() for i in session.get_inputs()}}
        found.append(float(abs(session.run(["logits"], feed)[0] - case["reference"].numpy()).max()))
print(json.dumps(errors))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    errors = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(errors) == len(cases)
    return errors
