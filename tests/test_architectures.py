"""Every architecture of the role table (pdp_hf.targets.ARCHITECTURES) beyond BERT, RoBERTa, DistilBERT and ViT, as a
tiny model built from config: each granularity the issue names, with PDP and SMART, gives the exact counts after
finalize (checked on the weights, with the layouts written out here, not through pdp_hf's unit code); the plain,
shrunk (modeling file and ONNX) and compressed exports load with equal logits, the shrunk and plain ones in a process
where `import pdp_hf` fails; a broken role table fails loudly."""

import json
import os

import pytest
import torch
import transformers as T

from pdp_hf import PDPConfig, apply_pruning, export_pruned, finalize_pruning, get_pruner, load_pruned, sparsity_report
from pdp_hf.layers import role_map
from pdp_hf.targets import ARCHITECTURES, Architecture, find_targets, role_of
from tests.conftest import errors_without_pdp_hf

onnxruntime = pytest.importorskip("onnxruntime", reason='pip install "pdp-hf[onnx]" (make test installs it)')

LAYERS, HEADS, HIDDEN = 2, 4, 32
TEXT = dict(vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            intermediate_size=64, max_position_embeddings=40, num_labels=3)
IMAGE = dict(image_size=8, patch_size=4, num_channels=1, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
             num_attention_heads=HEADS, num_labels=3)
# name -> (model class, config); DeBERTa-v3's attention: relative positions projected by the heads' own Q and K
MODELS = {
    "xlm-roberta": (T.XLMRobertaForSequenceClassification, lambda: T.XLMRobertaConfig(**TEXT)),
    "electra": (T.ElectraForSequenceClassification, lambda: T.ElectraConfig(embedding_size=HIDDEN, **TEXT)),
    "deberta-v3": (T.DebertaV2ForSequenceClassification, lambda: T.DebertaV2Config(
        relative_attention=True, pos_att_type=["p2c", "c2p"], share_att_key=True, position_buckets=8,
        norm_rel_ebd="layer_norm", position_biased_input=False, **TEXT)),
    "deberta-v2-own-pos": (T.DebertaV2ForSequenceClassification, lambda: T.DebertaV2Config(
        relative_attention=True, pos_att_type=["p2c", "c2p"], share_att_key=False, **TEXT)),
    "mpnet": (T.MPNetForSequenceClassification, lambda: T.MPNetConfig(**TEXT)),
    # ModernBERT's checkpoints have no biases (the defaults); a biased one checks the bias chunks of Wqkv and Wi
    "modernbert": (T.ModernBertForSequenceClassification, lambda: T.ModernBertConfig(
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
        **{**TEXT, "max_position_embeddings": 64})),
    "modernbert-bias": (T.ModernBertForSequenceClassification, lambda: T.ModernBertConfig(
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, attention_bias=True,
        mlp_bias=True, **{**TEXT, "max_position_embeddings": 64})),
    "dinov2": (T.Dinov2ForImageClassification, lambda: T.Dinov2Config(mlp_ratio=2, **IMAGE)),
    "dinov2-swiglu": (T.Dinov2ForImageClassification, lambda: T.Dinov2Config(mlp_ratio=2, use_swiglu_ffn=True, **IMAGE)),
    "deit": (T.DeiTForImageClassification, lambda: T.DeiTConfig(intermediate_size=64, **IMAGE)),
}
# heads that stay as zeros in shrunk and sliced models (Architecture.heads_uncut)
HEADS_UNCUT = {"mpnet", "deberta-v2-own-pos"}
SETTINGS = {
    "unstructured": dict(target_sparsity=0.5),
    "2:4": dict(granularity="n:m", n_m="2:4"),
    "heads+neurons": dict(granularity="attention=head,ffn=neuron", target_sparsity=0.5),
}
STEPS = 8


def build(name: str):
    torch.manual_seed(0)
    cls, config = MODELS[name]
    return cls(config()).eval()


def inputs_for(model, batch: int = 3, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    if getattr(model.config, "vocab_size", None):
        ids = torch.randint(3, 64, (batch, 12), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return {"pixel_values": torch.randn(batch, 1, 8, 8, generator=g)}


def train(model, method: str, spec: dict):
    config = PDPConfig(method=method, pruning_start=0, pruning_end=0.5, harden_at=0.75, **spec)
    model = apply_pruning(model, config)
    pruner = get_pruner(model)
    weights = [p for n, p in model.named_parameters() if not n.startswith("pdp_scores.")]
    optimizer = torch.optim.AdamW([{"params": weights}, *pruner.optimizer_param_groups()], lr=1e-3)
    pruner.set_total_steps(STEPS)
    pruner.set_optimizer(optimizer)
    model.train()
    for step in range(STEPS):
        pruner.step(step)
        batch = {**inputs_for(model, 4, seed=step), "labels": torch.randint(0, 3, (4,))}
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    finalize_pruning(model)
    return model.eval(), config


def layouts(model) -> dict[int, dict]:
    """Per layer: the targeted Linear of each role, as the architecture names them."""
    return {i: {r: model.get_submodule(n) for r, n in roles.items()}
            for i, roles in role_map(model, find_targets(model, None)).items()}


def zero_units(rows_of: list, cols: torch.Tensor, units: int, parts: list[int]) -> torch.Tensor:
    """Per unit: True when every row block (in each of a matrix's parts, with its bias entries) and the output
    columns are zero; asserts no unit is partly zero."""
    width = cols.shape[1] // units
    col_zero = (cols == 0).view(cols.shape[0], units, width).all(dim=2).all(dim=0)
    for linear, n in zip(rows_of, parts):
        rows = (linear.weight == 0).view(n, units, width, linear.weight.shape[1]).all(dim=3).all(dim=2).all(dim=0)
        assert torch.equal(rows, col_zero), (rows, col_zero)
        if linear.bias is not None:  # a pruned unit's bias entries are zero in every part
            assert bool((linear.bias.view(n, units, width)[:, col_zero] == 0).all())
    return col_zero


def check_counts(model, name: str, setting: str, config) -> None:
    # row chunks: ModernBERT's Wqkv is Q|K|V and its Wi value|gate; DINOv2's SwiGLU has a separate gate_proj
    modernbert = name.startswith("modernbert")
    qkv_parts = 3 if modernbert else 1
    ffn_parts = 2 if modernbert else 1
    for layer in layouts(model).values():
        targets = list(layer.values())
        assert len(targets) == (4 if modernbert else 7 if name == "dinov2-swiglu" else 6)
        if setting == "unstructured":
            for linear in targets:
                assert int((linear.weight == 0).sum()) == round(0.5 * linear.weight.numel())
        elif setting == "2:4":
            for linear in targets:
                assert bool(((linear.weight != 0).view(linear.weight.shape[0], -1, 4).sum(-1) == 2).all())
        else:
            q = ["qkv"] if modernbert else ["query", "key", "value"]
            heads = zero_units([layer[r] for r in q], layer["attn_out"].weight, HEADS, [qkv_parts] * len(q))
            assert int(heads.sum()) == HEADS // 2
            units = layer["ffn_out"].in_features
            rows = [layer[r] for r in ("ffn_gate", "ffn_in") if r in layer]
            neurons = zero_units(rows, layer["ffn_out"].weight, units, [ffn_parts] * len(rows))
            assert int(neurons.sum()) == units // 2
    for group, row in sparsity_report(model, config=config)["units"].items():
        expected = row["units"] if ":" in row["granularity"] else round(0.5 * row["units"])
        assert row["pruned_units"] == expected, group


def test_every_layer_has_whole_heads_and_neurons():
    for name in MODELS:
        model = build(name)
        roles = [role_of(model.config.model_type, n) for n in find_targets(model, None)]
        attention = ["qkv", "attn_out"] if name.startswith("modernbert") else ["query", "key", "value", "attn_out"]
        expected = attention + (["ffn_gate"] if name == "dinov2-swiglu" else []) + ["ffn_in", "ffn_out"]
        assert sorted(roles) == sorted(expected * LAYERS), name


@pytest.mark.parametrize("method", ["pdp", "smart"])
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", list(MODELS))
def test_exact_counts_after_finalize(name, setting, method):
    model, config = train(build(name), method, SETTINGS[setting])
    check_counts(model, name, setting, config)


MORE = {
    "block": dict(granularity="block", block_size=16, target_sparsity=0.5),
    "head": dict(granularity="head", target_sparsity=0.5),
    "neuron": dict(granularity="neuron", target_sparsity=0.5),
    "mixed": dict(granularity="attention=unstructured,ffn=n:m", n_m="1:4", target_sparsity=0.5),
}


@pytest.mark.parametrize("method", ["magnitude", "movement"])
@pytest.mark.parametrize("setting", list(MORE))
@pytest.mark.parametrize("name", list(MODELS))
def test_other_granularities_and_methods_give_their_budgets(name, setting, method):
    model, config = train(build(name), method, MORE[setting])
    for group, row in sparsity_report(model, config=config)["units"].items():
        expected = row["units"] if ":" in row["granularity"] else round(0.5 * row["units"])
        assert row["pruned_units"] == expected, group
    kinds = {row["granularity"] for row in sparsity_report(model, config=config)["units"].values()}
    assert kinds == {"block": {"block 16x16"}, "head": {"head"}, "neuron": {"neuron"},
                     "mixed": {"unstructured", "1:4"}}[setting]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """PDP on every architecture and setting: the plain export of each, the shrunk (+ ONNX) export of the structured
    one, the compressed export of the unstructured one; name -> [(kind, folder)], the reference inputs and logits."""
    root = tmp_path_factory.mktemp("architectures")
    made = {}
    for name in MODELS:
        folders, reference = [], {}
        for setting in SETTINGS:
            model, config = train(build(name), "pdp", SETTINGS[setting])
            inputs = inputs_for(model)
            with torch.no_grad():
                logits = model(**inputs).logits
            reference[setting] = (inputs, logits)
            base = str(root / f"{name}-{setting.replace(':', '_').replace('+', '_')}")
            folders.append(("plain", setting, export_pruned(model, base + "-plain", pdp_config=config)))
            if setting == "heads+neurons":
                folders.append(("shrunk", setting, export_pruned(model, base + "-shrunk", pdp_config=config,
                                                                 shrink=True, onnx=True)))
            if setting == "unstructured":
                folders.append(("compressed", setting, export_pruned(model, base + "-compressed", pdp_config=config,
                                                                     compressed=True)))
        made[name] = (folders, reference)
    return made


def test_compressed_and_sliced_loads_give_equal_logits(exports):
    for name, (folders, reference) in exports.items():
        for kind, setting, folder in folders:
            inputs, logits = reference[setting]
            loaded = [load_pruned(folder)]
            if kind == "plain" and setting == "heads+neurons":
                loaded.append(load_pruned(folder, optimize=True))  # heads and neurons sliced at load
            for model in loaded:
                with torch.no_grad():
                    assert torch.allclose(model.eval()(**inputs).logits, logits, atol=1e-5), (name, kind, setting)


def test_shrunk_exports_are_smaller_except_the_heads_that_cannot_be_cut(exports):
    for name, (folders, _) in exports.items():
        shrunk = next(folder for kind, _, folder in folders if kind == "shrunk")
        config = json.load(open(os.path.join(shrunk, "config.json"), encoding="utf-8"))
        model = load_pruned(shrunk)
        layers = layouts(model)
        units = {i: layer["ffn_out"].in_features for i, layer in layers.items()}
        full = 2 * (64 if name != "dinov2-swiglu" else 48)  # before: 64 neurons (SwiGLU: 48)
        assert all(u == full // 4 for u in units.values()), (name, units)
        kept_heads = {i: layer["attn_out"].in_features // (HIDDEN // HEADS) for i, layer in layers.items()}
        assert set(kept_heads.values()) == ({HEADS} if name in HEADS_UNCUT else {HEADS // 2}), (name, kept_heads)
        # heads cut: per-layer sizes and the modeling file; only uniform neurons cut: a plain config says it all
        assert ("auto_map" in config) == (name not in HEADS_UNCUT), name


def test_exports_load_without_pdp_hf_and_in_onnxruntime(exports, tmp_path):
    cases = [(folder, *reference[setting], kind == "shrunk") for folders, reference in exports.values()
             for kind, setting, folder in folders if kind != "compressed"]
    loaded = errors_without_pdp_hf(cases, tmp_path)
    assert all(max(row["errors"]) <= 1e-4 for row in loaded.values()), loaded
    assert sum(len(row["errors"]) == 2 for row in loaded.values()) == len(MODELS)  # each shrunk one in onnxruntime


def test_dense_shaped_baselines_of_shrunk_exports_have_the_original_shapes_and_logits(exports):
    """`pdp-hf speed` times a shrunk export against its dense-shaped twin: every row chunk of a fused matrix padded
    on its own (ModernBERT's Q|K|V and value|gate), the FFN size read from FFN-out (a gated FFN-in has 2 rows each)."""
    from pdp_hf.speed import dense_shaped

    for name, (folders, reference) in exports.items():
        shrunk = next(folder for kind, _, folder in folders if kind == "shrunk")
        stored = load_pruned(shrunk)
        dense = dense_shaped(stored, shrunk)
        assert dense is not None, name
        original = build(name)
        assert {k: v.shape for k, v in dense.state_dict().items()} == {
            k: v.shape for k, v in original.state_dict().items()}, name
        inputs, logits = reference["heads+neurons"]
        with torch.no_grad():
            assert torch.allclose(dense(**inputs).logits, logits, atol=1e-5), name


@pytest.mark.parametrize("name", ["modernbert", "dinov2-swiglu"])
def test_dense_shaped_baseline_of_a_gated_ffn_with_a_plain_config(name, tmp_path):
    """Uniform neurons only: the config's FFN size says it all, read from FFN-out's inputs."""
    from pdp_hf.speed import dense_shaped

    model, config = train(build(name), "magnitude", dict(granularity="neuron", target_sparsity=0.5))
    folder = export_pruned(model, str(tmp_path / "out"), pdp_config=config, shrink=True)
    stored = load_pruned(folder)
    inputs = inputs_for(model)
    dense = dense_shaped(stored, folder)
    assert dense is not None and sum(p.numel() for p in dense.parameters()) == sum(
        p.numel() for p in build(name).parameters())
    with torch.no_grad():
        assert torch.allclose(dense(**inputs).logits, model(**inputs).logits, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_gradient_accumulation_reuses_no_spent_mask(name):
    """Two micro-batches per optimizer step, as Trainer runs gradient accumulation: the second forward computes its
    own masks (DeBERTa runs Q and K twice per forward, which once left a spent mask cached for the next one)."""
    model = apply_pruning(build(name), PDPConfig(granularity="attention=head,ffn=neuron", target_sparsity=0.5,
                                                 pruning_start=0, pruning_end=2, fused_masks="off"))
    pruner = get_pruner(model)
    pruner.set_total_steps(4)
    model.train()
    pruner.step(1)
    for micro in range(2):
        batch = {**inputs_for(model, 4, seed=micro), "labels": torch.randint(0, 3, (4,))}
        model(**batch).loss.backward()
    assert all(group._forward_cache is None for group in pruner.groups)


def test_target_speedup_refuses_heads_that_cannot_be_cut():
    with pytest.raises(ValueError, match="MPNet adds one relative-position bias per head"):
        apply_pruning(build("mpnet"), PDPConfig(granularity="attention=head,ffn=neuron", target_speedup=1.5))
    with pytest.raises(ValueError, match="share_att_key=False: each attention also projects the relative positions"):
        apply_pruning(build("deberta-v2-own-pos"), PDPConfig(granularity="head", target_speedup=1.1))


@pytest.mark.parametrize("broken", ["missing", "misspelt", "twice"])
def test_a_wrong_or_partial_role_table_fails_loudly(monkeypatch, broken):
    roles = dict(ARCHITECTURES["electra"].roles)
    if broken == "missing":
        del roles["key"]
    elif broken == "misspelt":
        roles["ffn_out"] = (r"encoder\.layer\.\d+\.outptu\.dense$",)
    else:
        roles["attn_out"] = roles["value"]
    # a role left out is refused when the entry is made; a spelling that matches nothing (another Transformers
    # version) or a module matched twice, when a model is pruned
    message = {"missing": "its attention roles \\['attn_out', 'query', 'value'\\] are not one of",
               "misspelt": "in layer 0, its FFN roles are \\['ffn_in'\\]", "twice": "several roles"}[broken]
    with pytest.raises(ValueError, match=message):
        monkeypatch.setitem(ARCHITECTURES, "electra", Architecture(roles))
        apply_pruning(build("electra"), PDPConfig(target_sparsity=0.5))


def test_parts_that_do_not_divide_the_rows_are_refused(monkeypatch):
    arch = ARCHITECTURES["deit"]
    monkeypatch.setitem(ARCHITECTURES, "deit", Architecture(arch.roles, parts={"mlp.fc1": 3}))
    with pytest.raises(ValueError, match="do not split into"):
        apply_pruning(build("deit"), PDPConfig(granularity="neuron", target_sparsity=0.5))


TEXT_MODELS = ["xlm-roberta", "electra", "deberta-v3", "mpnet", "modernbert"]


@pytest.fixture(scope="module")
def text_model_dirs(tmp_path_factory):
    """Each text architecture saved with a small word-piece tokenizer, as run_glue loads a model from the Hub."""
    from transformers import BertTokenizerFast

    from tests.test_run_glue import WORDS

    dirs = {}
    for name in TEXT_MODELS:
        root = tmp_path_factory.mktemp(name)
        vocab = root / "vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ".", "?", ","]) + "\n")
        BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(root)
        build(name).save_pretrained(root)
        dirs[name] = root
    return dirs


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_run_glue_prunes_heads_and_neurons_and_exports_shrunk(name, text_model_dirs, tmp_path):
    from tests.test_run_glue import args_for, load_script

    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    rows = ["the film is fine\t1", "a dull film\t0", "he sings\t1", "it rains\t0"] * 8
    for split in ("train.tsv", "dev.tsv"):
        (glue / split).write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    summary = load_script().main(args_for("sst2", text_model_dirs[name], tmp_path / "glue", out, "--granularity",
                                          "attention=head,ffn=neuron", "--export_shrink", "true"))
    assert summary["task"] == "sst2" and "eval_accuracy" in summary
    report = json.loads((out / "export" / "sparsity_report.json").read_text())
    assert all(row["pruned_units"] == row["units"] // 2 for row in report["units"].values()), report["units"]
    model = load_pruned(str(out / "export"))
    assert all(layer["ffn_out"].in_features == 32 for layer in layouts(model).values())


@pytest.mark.parametrize("name", ["deit", "dinov2"])
def test_run_image_classification_prunes_heads_and_neurons(name, tmp_path):
    from PIL import Image
    from transformers import ViTImageProcessorPil

    from tests.test_run_image_classification import load_script

    model_dir = tmp_path / "model"
    build(name).save_pretrained(model_dir)
    ViTImageProcessorPil(size={"height": 8, "width": 8}, image_mean=[0.5], image_std=[0.5]).save_pretrained(model_dir)
    rng = torch.Generator().manual_seed(0)
    for split in ("train", "validation"):
        for label in range(3):
            folder = tmp_path / split / str(label)
            folder.mkdir(parents=True)
            for i in range(8):
                pixels = (torch.rand(8, 8, generator=rng) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    out = tmp_path / "run"
    summary = load_script().main([
        "--model_name_or_path", str(model_dir), "--train_dir", str(tmp_path / "train"),
        "--validation_dir", str(tmp_path / "validation"), "--output_dir", str(out), "--max_steps", "6",
        "--per_device_train_batch_size", "8", "--report_to", "none", "--save_strategy", "no", "--use_cpu",
        "--granularity", "attention=head,ffn=neuron", "--target_sparsity", "0.5", "--export_shrink", "true",
        "--disable_tqdm", "true", "--seed", "0"])
    assert "eval_accuracy" in summary
    model = load_pruned(str(out / "export"))
    assert all(layer["attn_out"].in_features == HIDDEN // 2 for layer in layouts(model).values())


@pytest.mark.parametrize("name", ["modernbert", "dinov2-swiglu", "deberta-v3"])
def test_target_speedup_prices_and_cuts_fused_and_gated_layers(name, tmp_path):
    """Pricing times copies with half the heads or neurons sliced out (every chunk of a fused matrix); with prices
    given, the budgets reach the target and the shrunk export keeps exactly the budgeted units."""
    from pdp_hf.speed_budget import measure_unit_costs
    from pdp_hf.units import build_unit_groups

    model = build(name)
    structure = dict(granularity="attention=head,ffn=neuron")
    groups = build_unit_groups(model, find_targets(model, None), PDPConfig(target_sparsity=0.5, **structure))
    costs = measure_unit_costs(model, groups, batch=2, seq=8, rounds=2)
    assert set(costs) == {"dense", "head", "neuron"} and all(v > 0 for v in costs.values())
    prices = {"dense": 1.0, "head": 0.02, "neuron": 0.001}  # tiny models are too fast to reach 1.2x on a timing
    model, config = train(model, "magnitude", dict(target_speedup=1.2, speed_unit_costs=prices, **structure))
    with torch.no_grad():
        inputs = inputs_for(model)
        logits = model(**inputs).logits
    assert model.config.pdp_predicted_speedup >= 1.2
    shrunk = load_pruned(export_pruned(model, str(tmp_path / "shrunk"), pdp_config=config, shrink=True))
    report = json.loads((tmp_path / "shrunk" / "sparsity_report.json").read_text())
    for group, row in report["units"].items():
        layer = layouts(shrunk)[int(group.split(":")[0].rsplit(".", 1)[1])]
        kept = (layer["attn_out"].in_features // (HIDDEN // HEADS) if row["granularity"] == "head"
                else layer["ffn_out"].in_features)
        assert kept == row["units"] - row["pruned_units"], group
    with torch.no_grad():
        assert torch.allclose(shrunk.eval()(**inputs).logits, logits, atol=1e-5)


def test_a_new_model_type_is_one_registered_entry(tmp_path, monkeypatch):
    """CamemBERT has no entry: pruning it asks for one; registered with RoBERTa's module names, it prunes heads and
    neurons and its shrunk export loads with the trained model's logits."""
    from pdp_hf import register_architecture

    monkeypatch.setitem(ARCHITECTURES, "camembert", None)  # restored (removed) after the test, whatever happens
    del ARCHITECTURES["camembert"]
    torch.manual_seed(0)
    model = T.CamembertForSequenceClassification(T.CamembertConfig(**TEXT)).eval()
    with pytest.raises(ValueError, match="no default target modules for model_type='camembert'"):
        apply_pruning(model, PDPConfig(target_sparsity=0.5))
    register_architecture("camembert", ARCHITECTURES["roberta"].roles)
    with pytest.raises(ValueError, match="already has an entry"):
        register_architecture("camembert", ARCHITECTURES["roberta"].roles)
    model, config = train(model, "pdp", SETTINGS["heads+neurons"])
    inputs = inputs_for(model)
    with torch.no_grad():
        logits = model(**inputs).logits
        shrunk = load_pruned(export_pruned(model, str(tmp_path / "out"), pdp_config=config, shrink=True)).eval()
        assert torch.allclose(shrunk(**inputs).logits, logits, atol=1e-5)
    assert all(layer["attn_out"].in_features == HIDDEN // 2 for layer in layouts(shrunk).values())


@pytest.mark.parametrize("roles, parts, says", [
    ({"qeury": (r"q$",)}, None, "'qeury' is not a role"),
    ({"query": r"q$"}, None, "must be a non-empty list of regexes"),
    ({"query": (r"q($",)}, None, "not a valid regex"),
    ({"query": (r"q$",), "attn_out": (r"o$",)}, None, "attention roles \\['attn_out', 'query'\\] are not one of"),
    ({"ffn_in": (r"i$",)}, None, "FFN roles \\['ffn_in'\\] are not one of"),
    ({"ffn_in": (r"i$",), "ffn_out": (r"o$",)}, {"mlp.Wi": 1}, "an int >= 2"),
])
def test_an_architecture_entry_is_validated_when_made(roles, parts, says):
    from pdp_hf import register_architecture

    with pytest.raises(ValueError, match=says):
        register_architecture("not-a-model", roles, parts)
    assert "not-a-model" not in ARCHITECTURES


@pytest.mark.parametrize("name, granularity, targets, says", [
    ("modernbert", "head", ["attn.Wqkv"], "lack \\['attn_out'\\]"),
    ("dinov2-swiglu", "neuron", ["mlp.gate_proj", "mlp.down_proj"], "lack \\['ffn_in'\\]"),
])
def test_partial_targets_of_a_unit_name_the_roles_really_missing(name, granularity, targets, says):
    with pytest.raises(ValueError, match=says):
        apply_pruning(build(name), PDPConfig(granularity=granularity, target_sparsity=0.5, target_modules=targets))


def test_register_architecture_refuses_what_is_not_an_entry_and_keeps_generated_regexes(monkeypatch):
    from pdp_hf import register_architecture

    for model_type, roles, says in [(None, {}, "model_type must be"), ("", {}, "model_type must be"),
                                    ("x-model", None, "roles must be a dict")]:
        with pytest.raises(ValueError, match=says):
            register_architecture(model_type, roles)
    monkeypatch.setitem(ARCHITECTURES, "camembert", None)
    del ARCHITECTURES["camembert"]
    roberta = ARCHITECTURES["roberta"].roles
    register_architecture("camembert", {role: (p for p in patterns) for role, patterns in roberta.items()},
                          heads_uncut=lambda config: True)
    model = T.CamembertForSequenceClassification(T.CamembertConfig(**TEXT))
    assert len(find_targets(model, None)) == 6 * LAYERS  # the generated regexes were kept, not used up
    with pytest.raises(ValueError, match="heads_uncut must return a reason"):
        apply_pruning(model, PDPConfig(granularity="head", target_speedup=1.1))
