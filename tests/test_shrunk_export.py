"""Shrunk exports run anywhere: per-layer heads and FFN neurons cut out of BERT, RoBERTa, DistilBERT and ViT load with
equal logits through pdp_hf, through plain Transformers with trust_remote_code in a process where `import pdp_hf`
fails, and through onnxruntime; uniform FFN cuts keep a plain config; the weight file shrinks in proportion."""

import json
import os

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
    ViTConfig,
    ViTForImageClassification,
)

from pdp_hf import PDPConfig, apply_pruning, export_pruned, finalize_pruning, load_pruned
from pdp_hf.layers import head_count, role_map
from pdp_hf.shrink import MODELING_FILE, ONNX_FILE
from pdp_hf.targets import find_targets
from tests.conftest import errors_without_pdp_hf

onnxruntime = pytest.importorskip("onnxruntime", reason='pip install "pdp-hf[onnx]" (make test installs it)')

LAYERS, HEADS, FFN = 3, 4, 64


def build(arch: str):
    torch.manual_seed(0)
    if arch == "bert":
        return BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=LAYERS,
                                                        num_attention_heads=HEADS, intermediate_size=FFN, num_labels=3))
    if arch == "roberta":
        return RobertaForSequenceClassification(RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=LAYERS,
                                                              num_attention_heads=HEADS, intermediate_size=FFN,
                                                              max_position_embeddings=40, num_labels=3))
    if arch == "distilbert":
        return DistilBertForSequenceClassification(DistilBertConfig(vocab_size=64, dim=32, n_layers=LAYERS,
                                                                    n_heads=HEADS, hidden_dim=FFN, num_labels=3))
    return ViTForImageClassification(ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32,
                                               num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                               intermediate_size=FFN, num_labels=3))


# pattern -> per layer (heads kept, neurons kept); None = that structure untouched
PATTERNS = {
    "heads": [(1, None), (3, None), (2, None)],  # uneven heads only; layer 0 keeps a single head
    "neurons": [(None, 16), (None, 40), (None, 64)],  # uneven neurons only (layer 2 keeps all)
    "both": [(1, 8), (4, 32), (2, 50)],
}


@torch.no_grad()
def cut(model, pattern) -> None:
    """Zero whole heads and neurons as finalize would: Q/K/V rows and output columns; FFN-in rows and FFN-out columns."""
    for index, roles in sorted(role_map(model, find_targets(model, None)).items()):
        heads, neurons = pattern[index]
        if heads is not None:
            width = model.get_submodule(roles["query"]).out_features // head_count(model, roles["query"])
            for role in ("query", "key", "value"):
                linear = model.get_submodule(roles[role])
                linear.weight[heads * width:] = 0
                linear.bias[heads * width:] = 0
            model.get_submodule(roles["attn_out"]).weight[:, heads * width:] = 0
        if neurons is not None:
            model.get_submodule(roles["ffn_in"]).weight[neurons:] = 0
            model.get_submodule(roles["ffn_in"]).bias[neurons:] = 0
            model.get_submodule(roles["ffn_out"]).weight[:, neurons:] = 0


def inputs_for(arch: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if arch == "vit":
        return {"pixel_values": torch.randn(2, 1, 8, 8, generator=g)}
    ids = torch.randint(3, 64, (2, 7), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def weights_size(folder: str) -> int:
    return os.path.getsize(os.path.join(folder, "model.safetensors"))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every architecture x pattern exported with shrink=True and onnx=True, with its zero-weight logits."""
    root = tmp_path_factory.mktemp("shrunk")
    made = {}
    for arch in ("bert", "roberta", "distilbert", "vit"):
        dense = build(arch).eval()
        dense_dir = export_pruned(dense, str(root / f"{arch}-dense"))
        for name, pattern in PATTERNS.items():
            model = build(arch).eval()
            cut(model, pattern)
            inputs = inputs_for(arch)
            reference = model(**inputs).logits.detach()
            folder = export_pruned(model, str(root / f"{arch}-{name}"), shrink=True, onnx=True)
            made[(arch, name)] = (folder, inputs, reference, dense_dir)
    return made


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "vit"])
@pytest.mark.parametrize("name", list(PATTERNS))
def test_per_layer_export_records_sizes_and_loads_in_pdp_hf(exports, arch, name):
    folder, inputs, reference, dense_dir = exports[(arch, name)]
    config = json.load(open(os.path.join(folder, "config.json"), encoding="utf-8"))
    assert MODELING_FILE in os.listdir(folder) and ONNX_FILE in os.listdir(folder)
    auto = "AutoModelForImageClassification" if arch == "vit" else "AutoModelForSequenceClassification"
    assert config["auto_map"][auto].startswith("modeling_pdp_shrunk.PDPShrunk")
    pattern = PATTERNS[name]
    assert len(config["pdp_shrunk"]["heads"]) == sum(h is not None and h < HEADS for h, _ in pattern)
    assert sorted(config["pdp_shrunk"]["heads"].values()) == sorted(h for h, _ in pattern if h is not None and h < HEADS)
    loaded = load_pruned(folder)
    with torch.no_grad():
        logits = loaded(**inputs).logits
    assert (logits - reference).abs().max() <= 1e-4
    layers = role_map(loaded, find_targets(loaded, None))
    assert [head_count(loaded, layers[i]["query"]) for i in sorted(layers)] == [h or HEADS for h, _ in pattern]
    # the weight file shrinks by exactly the cut-out fp32 weights (up to the safetensors header)
    removed = sum(p.numel() for p in load_pruned(dense_dir).parameters()) - sum(p.numel() for p in load_pruned(folder).parameters())
    assert removed > 0
    assert abs((weights_size(dense_dir) - weights_size(folder)) - 4 * removed) < 2048


def test_exports_load_without_pdp_hf_and_in_onnxruntime(exports, tmp_path):
    """One subprocess where `import pdp_hf` fails checks every export through Transformers with trust_remote_code
    and through onnxruntime, against the zero-weight model's logits."""
    cases = [(folder, inputs, reference, True) for folder, inputs, reference, _ in exports.values()]
    loaded = errors_without_pdp_hf(cases, tmp_path)
    assert all(row["class"].startswith("PDPShrunk") for row in loaded.values()), loaded
    assert all(max(row["errors"]) <= 1e-4 and len(row["errors"]) == 2 for row in loaded.values()), loaded


def test_uniform_neurons_keep_a_plain_config(tmp_path):
    model = build("bert").eval()
    cut(model, [(None, 32)] * LAYERS)
    folder = export_pruned(model, str(tmp_path / "plain"), shrink=True)
    config = json.load(open(os.path.join(folder, "config.json"), encoding="utf-8"))
    assert config["intermediate_size"] == 32 and "auto_map" not in config and "pdp_shrunk" not in config
    assert MODELING_FILE not in os.listdir(folder)


def test_trained_global_budgets_export_per_layer(tmp_path):
    """Global budgets over heads and neurons after finalize: the export's sizes are the finalized model's, and its
    card shows the three ways to load it and parses with huggingface_hub."""
    from huggingface_hub import ModelCard

    model = build("bert")
    apply_pruning(model, PDPConfig(granularity="attention=head,ffn=neuron", target_sparsity=0.5,
                                   sparsity_distribution="global"))
    model = finalize_pruning(model).eval()
    inputs = inputs_for("bert")
    with torch.no_grad():
        reference = model(**inputs).logits
    folder = export_pruned(model, str(tmp_path / "global"), shrink=True, onnx=True)
    with torch.no_grad():
        assert (load_pruned(folder)(**inputs).logits - reference).abs().max() <= 1e-4
    card = ModelCard.load(os.path.join(folder, "README.md"))
    assert "trust_remote_code=True" in card.text and "ORTModelForSequenceClassification" in card.text
    assert "load_pruned" in card.text


def test_push_of_a_shrunk_export_uploads_the_modeling_file_and_the_onnx_model(exports, monkeypatch):
    from huggingface_hub import HfApi

    from pdp_hf.hub import push_export

    uploaded = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: repo_id)
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, repo_id, folder_path, **kw: uploaded.update(
        {repo_id: sorted(os.listdir(folder_path))}) or "https://huggingface.co/me/shrunk/commit/0")
    folder = exports[("bert", "both")][0]
    push_export(folder, "me/shrunk")
    assert {MODELING_FILE, ONNX_FILE, "config.json", "model.safetensors", "README.md"} <= set(uploaded["me/shrunk"])
