"""Shrunk exports that run anywhere: per-layer heads and FFN neurons cut out, loadable without pdp_hf.

`export_pruned(model, dir, shrink=True)` calls `shrink_for_export`. When only FFN neurons were cut, the same number
in every layer, the smaller FFN size fits a plain Transformers config. Otherwise the export records each layer's
kept sizes in `config.json` (`pdp_shrunk`) and carries `modeling_pdp_shrunk.py`, a small file that imports only
torch and transformers and is registered through `auto_map`, so that `AutoModelFor*.from_pretrained(dir,
trust_remote_code=True)` builds each layer at its kept sizes. `onnx=True` adds `model.onnx` (`export_onnx`), the
layout ONNX Runtime and Optimum's `ORTModelFor*.from_pretrained(dir)` read.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from .atomic import atomic_write_text
from .dummy_inputs import dummy_inputs
from .inference import _FFN_SIZE_ATTRS, shrink_neurons_for_config
from .layers import layer_heads, role_map
from .slicing import _keep_at_least_one, removable_heads, removable_neurons, slice_structure
from .targets import find_targets, head_roles, heads_uncut

logger = logging.getLogger(__name__)

MODELING_FILE = "modeling_pdp_shrunk.py"
ONNX_FILE = "model.onnx"
SPEC_KEY = "pdp_shrunk"
_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates", MODELING_FILE)


def _template_module():
    """The modeling file's own code, imported from pdp_hf's copy (one implementation for both sides)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pdp_hf._modeling_pdp_shrunk", _TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def kept_sizes(model: nn.Module) -> dict[int, dict[str, list[int]]]:
    """Per layer index: {"heads": [kept, total], "neurons": [kept, total]} of what slicing would keep (a layer with
    every unit pruned keeps one all-zero unit; heads that this architecture cannot cut out are all kept)."""
    layers = {}
    uncut = heads_uncut(model)
    for index, roles in sorted(role_map(model, find_targets(model, None)).items()):
        sizes = {}
        if {"ffn_in", "ffn_out"} <= roles.keys():
            keep = _keep_at_least_one(~removable_neurons(model.get_submodule(roles["ffn_in"]),
                                                         model.get_submodule(roles["ffn_out"])))
            sizes["neurons"] = [int(keep.sum()), int(keep.numel())]
        if head_roles(roles):
            heads = layer_heads(model, roles)
            keep = _keep_at_least_one(~removable_heads(model.get_submodule(roles["attn_out"]), heads))
            if uncut and not bool(keep.all()):
                logger.warning("Layer %d keeps its %d pruned heads as zeros: %s.", index, int((~keep).sum()), uncut)
            sizes["heads"] = [heads if uncut else int(keep.sum()), heads]
        layers[index] = sizes
    return layers


def auto_class_names(model: nn.Module) -> list[str]:
    """The Auto classes that map this model's type to its class (e.g. AutoModelForSequenceClassification)."""
    from transformers.models.auto import modeling_auto

    model_type = getattr(model.config, "model_type", None)
    names = []
    for name, auto in vars(modeling_auto).items():
        mapping = getattr(getattr(auto, "_model_mapping", None), "_model_mapping", None)
        if not (name.startswith("AutoModel") and isinstance(mapping, dict)):
            continue
        classes = mapping.get(model_type)
        if type(model).__name__ in (classes if isinstance(classes, (tuple, list)) else (classes,)):  # DeiT: two
            names.append(name)
    return sorted(names)


@torch.no_grad()
def shrink_for_export(model: nn.Module) -> dict | None:
    """Cut pruned heads and neurons out of a finalized model in place, and make its config say how to rebuild it.

    Returns None when nothing is removable, `{"intermediate_size": n}` (or the config's FFN size field) when a plain
    config expresses the result (only FFN neurons cut, the same number per layer), else `{"per_layer": sizes}` with
    `config.pdp_shrunk` and `config.auto_map` set for the modeling file that `write_modeling_file` writes."""
    sizes = kept_sizes(model)
    if not sizes:
        raise ValueError("shrink=True found no attention or FFN layers with known roles in this model; pass "
                         "target_modules to prune it, and export it with zeros (shrink=False).")
    heads_cut = any(s["heads"][0] < s["heads"][1] for s in sizes.values() if "heads" in s)
    neurons = {tuple(s["neurons"]) for s in sizes.values() if "neurons" in s}
    ffn_attr = next((a for a in _FFN_SIZE_ATTRS if hasattr(model.config, a)), None)
    if not heads_cut and len(neurons) == 1 and ffn_attr is not None:
        new_size = shrink_neurons_for_config(model)
        return None if new_size is None else {ffn_attr: new_size}
    if not heads_cut and all(kept == total for kept, total in neurons):
        return None
    before = {name: tuple(m.weight.shape) for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    slice_structure(model, heads=heads_cut)
    linear = {name: [m.in_features, m.out_features] for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and name in before and tuple(m.weight.shape) != before[name]}
    heads = {}
    for index, roles in sorted(role_map(model, find_targets(model, None)).items()):
        if "heads" in sizes[index] and sizes[index]["heads"][0] < sizes[index]["heads"][1]:
            heads[roles[head_roles(roles)[0]].rpartition(".")[0]] = sizes[index]["heads"][0]
    autos = auto_class_names(model)
    if not autos:
        raise ValueError(f"{type(model).__name__} is not a class any AutoModel* loads, so the shrunk export could not "
                         "be registered through auto_map; export with shrink=False and load it with "
                         "pdp_hf.load_pruned(dir, optimize=True).")
    model.config.pdp_shrunk = {"linear": linear, "heads": heads}
    model.config.auto_map = {auto: f"{MODELING_FILE[:-3]}.PDPShrunk{type(model).__name__}" for auto in autos}
    return {"per_layer": sizes}


def write_modeling_file(model: nn.Module, directory: str) -> str:
    """Write `modeling_pdp_shrunk.py`: the template plus the subclass `auto_map` names."""
    with open(_TEMPLATE, encoding="utf-8") as f:
        code = f.read()
    base = type(model).__name__
    code += (f"\n\nfrom transformers import {base}  # noqa: E402\n\n\n"
             f"class PDPShrunk{base}(PDPShrunkMixin, {base}):\n"
             f'    """{base} with the per-layer sizes of config.pdp_shrunk."""\n')
    path = os.path.join(directory, MODELING_FILE)
    atomic_write_text(path, code)
    return path


def shrunk_class(config, model_class: type) -> type:
    """`model_class` built at the per-layer sizes of `config.pdp_shrunk` (pdp_hf's own loader for such exports)."""
    mixin = _template_module().PDPShrunkMixin
    return type(f"PDPShrunk{model_class.__name__}", (mixin, model_class), {})


@torch.no_grad()
def export_onnx(model: nn.Module, path: str, opset: int = 17) -> str:
    """Write `model` to ONNX at `path` with dynamic batch (and sequence) axes, through `torch.onnx.export`'s
    TorchScript exporter, which needs no extra package. Outputs: `logits`."""
    inputs = dummy_inputs(model.config, 2, 16, next(model.parameters()).device)
    axes = {name: ({0: "batch_size", 1: "sequence_length"} if value.dim() == 2 else {0: "batch_size"})
            for name, value in inputs.items()}
    axes["logits"] = {0: "batch_size"}
    was_training = model.training
    model.eval()

    class LogitsOnly(nn.Module):  # a tuple-free signature: the inputs by name, the logits out
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(inputs, args))).logits

    try:
        torch.onnx.export(LogitsOnly(model), tuple(inputs.values()), path, input_names=list(inputs),
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False)
    finally:
        model.train(was_training)
    return path
