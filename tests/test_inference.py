"""optimize_for_inference and shrunk exports: outputs equal to the zero-weight model's, on every backend."""

import json

import pytest
import torch
from torch import nn

from pdp_hf import (
    PDPConfig,
    PrunerTrainer,
    apply_pruning,
    export_pruned,
    finalize_pruning,
    load_pruned,
    optimize_for_inference,
)
from pdp_hf.inference import CSRLinear, csr_crossover
from tests.conftest import image_dataset, text_dataset, tiny_bert, tiny_distilbert, tiny_roberta, tiny_vit

MODELS = [tiny_bert, tiny_roberta, tiny_distilbert, tiny_vit]
CAPABLE_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def inputs_for(factory, n=3):
    if factory is tiny_vit:
        return {"pixel_values": torch.randn(n, 1, 8, 8)}
    return {"input_ids": torch.randint(1, 60, (n, 8))}


def pruned(factory, **config):
    """A trained-then-finalized model (weights moved by training, so kept biases are nonzero)."""
    model = factory()
    dataset = image_dataset if factory is tiny_vit else text_dataset
    import tempfile

    from tests.conftest import training_args

    args = training_args(tempfile.mkdtemp(), max_steps=8)
    PrunerTrainer(model=model, args=args, train_dataset=dataset(), pdp_config=PDPConfig(**config)).train()
    return model.eval()


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def linear_shapes(model):
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, (nn.Linear, CSRLinear))}


@pytest.mark.parametrize("factory", MODELS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("backend", ["slice", "csr", "auto"])
def test_backends_equal_zero_weight_model(factory, backend):
    structured = backend != "csr"
    config = dict(granularity="attention=head,ffn=neuron", target_sparsity=0.5) if structured else dict(target_sparsity=0.9)
    model = pruned(factory, **config)
    inputs = inputs_for(factory)
    expected = logits(model, inputs)
    before = linear_shapes(model)
    optimize_for_inference(model, backend, calibrate=False)
    torch.testing.assert_close(logits(model, inputs), expected, rtol=0, atol=1e-4)
    after = linear_shapes(model)
    if structured:
        assert sum(a[0] * a[1] for a in after.values()) < sum(b[0] * b[1] for b in before.values())
        assert model.pdp_inference["slice"]["heads"] == {0: [1, 2], 1: [1, 2]}
        assert model.pdp_inference["slice"]["neurons"] == {0: [32, 64], 1: [32, 64]}
    if backend == "csr":
        assert len(model.pdp_inference["csr"]) == 12
        assert sum(isinstance(m, CSRLinear) for m in model.modules()) == 12


def test_slice_handles_uneven_layers_and_fully_pruned_layers():
    model = pruned(tiny_bert, granularity="neuron", target_sparsity=0.5, sparsity_distribution="global")
    layer = model.bert.encoder.layer[1]
    with torch.no_grad():  # prune every neuron and head of layer 1 by hand
        layer.output.dense.weight.zero_()
        layer.attention.output.dense.weight.zero_()
    inputs = inputs_for(tiny_bert)
    expected = logits(model, inputs)
    optimize_for_inference(model, "slice")
    torch.testing.assert_close(logits(model, inputs), expected, rtol=0, atol=1e-5)
    report = model.pdp_inference["slice"]
    assert report["neurons"][1] == [1, 64] and report["heads"][1] == [1, 2]  # one all-zero unit stays
    assert report["neurons"][0][0] != 32  # global budgets: layer 0 kept another number than half


def test_sliced_attention_bookkeeping_is_updated():
    model = pruned(tiny_bert, granularity="head", target_sparsity=0.5)
    optimize_for_inference(model, "slice")
    attention = model.bert.encoder.layer[0].attention.self
    assert attention.num_attention_heads == 1 and attention.all_head_size == 16 and attention.query.out_features == 16


def test_csr_linear_takes_the_dense_path_for_large_calls():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    with torch.no_grad():
        linear.weight[torch.rand_like(linear.weight) < 0.9] = 0
    layer = CSRLinear(linear, max_tokens=8)
    for rows in (4, 8, 9, 64):
        x = torch.randn(2, rows, 64)
        torch.testing.assert_close(layer(x), linear(x), rtol=0, atol=1e-5)
    assert not layer.weight.requires_grad
    assert list(layer.state_dict()) == ["weight", "bias"]


def test_csr_crossover_returns_a_grid_point():
    weight = torch.randn(64, 32)
    weight[torch.rand_like(weight) < 0.95] = 0
    assert csr_crossover(weight, tokens=(1, 8)) in (0, 1, 8)


@pytest.mark.skipif(CAPABLE_GPU, reason="a capable GPU is present; the error path is for machines without one")
def test_semi_structured_without_gpu_is_a_clear_error():
    model = pruned(tiny_bert, granularity="n:m", n_m="2:4")
    with pytest.raises(RuntimeError, match="2:4 acceleration needs an NVIDIA GPU of compute capability 8.0 or newer"):
        optimize_for_inference(model, "semi-structured")


@pytest.mark.skipif(not CAPABLE_GPU, reason="2:4 kernels need an NVIDIA GPU of compute capability 8.0 or newer")
@pytest.mark.parametrize("backend", ["semi-structured", "auto"])
def test_semi_structured_equals_zero_weight_model_on_gpu(backend):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)  # cuSPARSELt/CUTLASS need at least 32 x 64 weights: a small BERT, not the tiny one
    model = BertForSequenceClassification(BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=256, vocab_size=100)).eval()
    finalize_pruning(apply_pruning(model, PDPConfig(method="magnitude", granularity="n:m", n_m="2:4")))
    model = model.to("cuda", torch.bfloat16)
    inputs = {"input_ids": torch.randint(1, 100, (4, 64), device="cuda")}
    expected = logits(model, inputs).float()
    optimize_for_inference(model, backend)
    from torch.sparse import SparseSemiStructuredTensor

    converted = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and isinstance(m.weight, SparseSemiStructuredTensor)]
    if backend == "semi-structured":
        assert len(converted) == 12  # every targeted Linear of both layers
    else:  # auto converts only the shapes whose 2:4 product measured faster than dense on this GPU
        assert converted == model.pdp_inference["semi-structured"]
    torch.testing.assert_close(logits(model, inputs).float(), expected, rtol=2e-2, atol=2e-2)


def test_optimize_refuses_models_with_live_masks_and_unknown_backends():
    with pytest.raises(ValueError, match="still carries pruning masks"):
        optimize_for_inference(apply_pruning(tiny_bert(), PDPConfig()), "slice")
    with pytest.raises(ValueError, match="backend='fast' is invalid"):
        optimize_for_inference(tiny_bert(), "fast")


@pytest.mark.parametrize("factory", [tiny_bert, tiny_distilbert, tiny_vit], ids=lambda f: f.__name__)
def test_shrink_export_loads_without_pdp_hf_with_equal_logits(factory, tmp_path):
    """Uniform FFN cuts alone fit a plain config: no modeling file, no trust_remote_code (heads and uneven layers:
    tests/test_shrunk_export.py)."""
    from tests.test_export import load_elsewhere

    model = pruned(factory, granularity="neuron", target_sparsity=0.5)
    folder = export_pruned(model, tmp_path / "export", shrink=True, pdp_config=PDPConfig(granularity="neuron", target_sparsity=0.5))
    inputs = inputs_for(factory)
    auto = "AutoModelForImageClassification" if factory is tiny_vit else "AutoModelForSequenceClassification"
    out = load_elsewhere(folder, inputs, auto, tmp_path)
    assert not out["pdp_loaded"]
    torch.testing.assert_close(out["logits"], logits(model, inputs), rtol=0, atol=1e-5)
    config_text = (tmp_path / "export" / "config.json").read_text()
    assert '"intermediate_size": 32' in config_text or '"hidden_dim": 32' in config_text
    assert "auto_map" not in config_text and not (tmp_path / "export" / "modeling_pdp_shrunk.py").exists()
    assert "every layer's FFN has 32 neurons" in (tmp_path / "export" / "README.md").read_text()
    assert [m.weight.shape[0] for n, m in model.named_modules() if n.endswith(("intermediate.dense", "lin1", "fc1"))] == [64, 64]


def test_uneven_layers_shrink_per_layer_with_the_modeling_file(tmp_path):
    model = pruned(tiny_bert, granularity="neuron", target_sparsity=0.5, sparsity_distribution="global")
    folder = export_pruned(model, tmp_path / "export", shrink=True)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    sizes = [config["pdp_shrunk"]["linear"][f"bert.encoder.layer.{i}.intermediate.dense"][1] for i in (0, 1)]
    assert sizes[0] != sizes[1] and config["intermediate_size"] == 64
    inputs = inputs_for(tiny_bert)
    torch.testing.assert_close(logits(load_pruned(folder), inputs), logits(model, inputs), rtol=0, atol=1e-5)


def test_shrink_without_removable_neurons_writes_a_plain_export(tmp_path):
    model = finalize_pruning(apply_pruning(tiny_bert(), PDPConfig(target_sparsity=0.5)))
    export_pruned(model, tmp_path / "export", shrink=True)
    assert '"intermediate_size": 64' in (tmp_path / "export" / "config.json").read_text()


def test_a_sliced_model_can_be_pruned_again_by_heads():
    """Head units come from the attention module's own head count, which slicing updated (not the config's)."""
    model = pruned(tiny_bert, granularity="head", target_sparsity=0.5)
    optimize_for_inference(model, "slice")
    groups = apply_pruning(model, PDPConfig(granularity="head", target_sparsity=0.5))._pdp_pruner.groups
    assert [g.num_units for g in groups] == [1, 1] and model.config.num_attention_heads == 2
