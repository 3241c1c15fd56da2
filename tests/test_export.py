"""export_pruned: a plain Transformers folder that loads without pdp_hf and gives the same logits."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import EvalResult, ModelCard

from pdp_hf import PDPConfig, PrunerTrainer, apply_pruning, export_pruned, finalize_pruning, get_pruner, sparsity_report
from tests.conftest import image_dataset, text_dataset, tiny_bert, tiny_vit

# Runs in a fresh interpreter where importing pdp_hf is impossible.
LOADER = textwrap.dedent(
    """
    import sys, json
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "pdp_hf" or name.startswith("pdp_hf."):
                raise ImportError("pdp_hf is blocked in this process")
    sys.meta_path.insert(0, Block())
    import torch
    from transformers import {auto}
    folder, inputs_path, out_path = sys.argv[1:4]
    model = {auto}.from_pretrained(folder).eval()
    inputs = torch.load(inputs_path)
    with torch.no_grad():
        logits = model(**inputs).logits
    zeros = {{n: int((m.weight == 0).sum()) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}}
    torch.save({{"logits": logits, "zeros": zeros, "pdp_loaded": "pdp_hf" in sys.modules}}, out_path)
    """
)


def load_elsewhere(folder, inputs, auto, tmp_path):
    inputs_path, out_path = tmp_path / "inputs.pt", tmp_path / "out.pt"
    torch.save(inputs, inputs_path)
    script = LOADER.format(auto=auto)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", script, str(folder), str(inputs_path), str(out_path)], check=True, env=env, cwd=tmp_path)
    return torch.load(out_path)


@pytest.mark.parametrize(
    "factory,dataset,inputs,auto",
    [
        (tiny_bert, text_dataset, {"input_ids": torch.randint(1, 60, (3, 8))}, "AutoModelForSequenceClassification"),
        (tiny_vit, image_dataset, {"pixel_values": torch.randn(3, 1, 8, 8)}, "AutoModelForImageClassification"),
    ],
)
def test_export_loads_without_pdp_hf_with_same_logits(factory, dataset, inputs, auto, make_args, tmp_path):
    model = factory()
    trainer = PrunerTrainer(model=model, args=make_args(), train_dataset=dataset(), pdp_config=PDPConfig(target_sparsity=0.9))
    trainer.train()
    out = trainer.export_pruned(str(tmp_path / "export"))
    with torch.no_grad():
        expected = model.eval()(**inputs).logits
    loaded = load_elsewhere(out, inputs, auto, tmp_path)
    assert not loaded["pdp_loaded"]
    torch.testing.assert_close(loaded["logits"], expected, atol=1e-5, rtol=0)
    report = sparsity_report(model)
    for name, row in report["modules"].items():
        assert loaded["zeros"][name] == row["zeros"] == round(0.9 * row["numel"])


def test_export_folder_contents_and_card(tmp_path):
    model = apply_pruning(tiny_bert(), PDPConfig(target_sparsity=0.5))
    get_pruner(model).set_total_steps(10)
    get_pruner(model).step(9)
    result = EvalResult(
        task_type="text-classification", dataset_type="nyu-mll/glue", dataset_name="GLUE SST-2",
        dataset_config="sst2", dataset_split="validation", metric_type="accuracy", metric_value=0.8125,
    )
    out = export_pruned(
        model, tmp_path / "export", base_model="google-bert/bert-base-uncased", dataset="nyu-mll/glue",
        eval_results=[result], command="python train.py --target_sparsity 0.5",
    )
    files = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "pruning_config.json", "sparsity_report.json", "README.md"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert get_pruner(model) is not None  # the model passed in keeps its masks; the export finalized a copy
    assert PDPConfig.from_pretrained(out).target_sparsity == 0.5
    report = json.load(open(os.path.join(out, "sparsity_report.json")))
    assert report["total"]["sparsity"] == 0.5 and "convention" in report
    card = ModelCard.load(os.path.join(out, "README.md"))
    assert card.data.base_model == "google-bert/bert-base-uncased"
    assert card.data.eval_results[0].metric_value == 0.8125
    text = card.text
    for needle in ("Sparsity convention", "AutoModelForSequenceClassification", "bert.encoder.layer.1.output.dense",
                   "PDP, Parameter-free Differentiable Pruning", "python train.py --target_sparsity 0.5"):
        assert needle in text, needle


def test_export_refuses_non_empty_folder_and_keeps_previous(tmp_path):
    model = finalize_pruning(apply_pruning(tiny_bert(), PDPConfig(target_sparsity=0.5)))
    target = tmp_path / "export"
    export_pruned(model, target)
    before = (target / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="not empty.*overwrite=True"):
        export_pruned(model, target)
    assert (target / "model.safetensors").read_bytes() == before
    export_pruned(model, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging leftovers


def test_finalize_without_pruning_refused():
    with pytest.raises(ValueError, match="no pruning applied"):
        finalize_pruning(tiny_bert())


def test_compressed_export_round_trip_is_bit_exact_and_small(tmp_path):
    from safetensors import safe_open

    from pdp_hf import load_pruned
    from pdp_hf.compressed import COMPRESSED_WEIGHTS_NAME

    model = finalize_pruning(apply_pruning(tiny_bert(seed=3), PDPConfig(target_sparsity=0.9))).eval()
    out = export_pruned(model, tmp_path / "packed", compressed=True)
    assert not os.path.exists(os.path.join(out, "model.safetensors"))
    loaded = load_pruned(out)
    assert type(loaded) is type(model)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
        if a.dtype == torch.float32:  # bit for bit, sign of zero included
            assert torch.equal(a.view(torch.int32), b.view(torch.int32)), name
    x = torch.randint(1, 60, (2, 8))
    assert torch.equal(model(input_ids=x).logits, loaded(input_ids=x).logits)
    # size of the pruned matrices: bitmask + values against dense float32
    report = sparsity_report(model)
    dense_bytes = 4 * report["total"]["numel"]
    with safe_open(os.path.join(out, COMPRESSED_WEIGHTS_NAME), framework="pt") as f:
        packed = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys() if "__pdp_" in k)
    assert packed / dense_bytes <= 0.14
    card = open(os.path.join(out, "README.md")).read()
    assert "compressed" in card and "load_pruned" in card
    # plain-folder path of load_pruned
    plain = export_pruned(model, tmp_path / "plain")
    assert torch.equal(load_pruned(plain)(input_ids=x).logits, model(input_ids=x).logits)


def test_interrupted_export_leaves_previous_export_intact(tmp_path):
    model = finalize_pruning(apply_pruning(tiny_bert(), PDPConfig(target_sparsity=0.5)))
    target = tmp_path / "export"
    export_pruned(model, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    class FailingTokenizer:  # fails after the weights were written into the staging folder
        def save_pretrained(self, path):
            raise KeyboardInterrupt("interrupted")

    with pytest.raises(KeyboardInterrupt):
        export_pruned(model, target, FailingTokenizer(), overwrite=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # the staging folder was cleaned up


def test_a_compressed_fp16_export_loads_as_fp16_with_its_ties(tmp_path):
    """The stored dtype comes back (it loaded as float32 before), and a tied decoder stays tied to the embeddings."""
    from transformers import BertConfig, BertForMaskedLM

    from pdp_hf import load_pruned

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    model = finalize_pruning(apply_pruning(BertForMaskedLM(config), PDPConfig(target_sparsity=0.9))).eval().half()
    loaded = load_pruned(export_pruned(model, tmp_path / "half", compressed=True))
    assert {p.dtype for p in loaded.parameters()} == {torch.float16}
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
