"""Which Linear layers to prune: one role table per architecture, and user patterns.

Module names move between Transformers versions (ViT was rewritten from `encoder.layer.N.attention.attention.query`
to `layers.N.attention.q_proj`), so each role lists every spelling we know. Defaults that match nothing raise:
pruning is never a silent no-op.
"""

from __future__ import annotations

import re

from torch import nn

_BERT_LIKE = {
    "query": [r"encoder\.layer\.\d+\.attention\.self\.query$"],
    "key": [r"encoder\.layer\.\d+\.attention\.self\.key$"],
    "value": [r"encoder\.layer\.\d+\.attention\.self\.value$"],
    "attn_out": [r"encoder\.layer\.\d+\.attention\.output\.dense$"],
    "ffn_in": [r"encoder\.layer\.\d+\.intermediate\.dense$"],
    "ffn_out": [r"encoder\.layer\.\d+\.output\.dense$"],
}

ROLE_TABLE: dict[str, dict[str, list[str]]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "distilbert": {
        "query": [r"transformer\.layer\.\d+\.attention\.q_lin$"],
        "key": [r"transformer\.layer\.\d+\.attention\.k_lin$"],
        "value": [r"transformer\.layer\.\d+\.attention\.v_lin$"],
        "attn_out": [r"transformer\.layer\.\d+\.attention\.out_lin$"],
        "ffn_in": [r"transformer\.layer\.\d+\.ffn\.lin1$"],
        "ffn_out": [r"transformer\.layer\.\d+\.ffn\.lin2$"],
    },
    "vit": {
        "query": [r"layers\.\d+\.attention\.q_proj$", r"encoder\.layer\.\d+\.attention\.attention\.query$"],
        "key": [r"layers\.\d+\.attention\.k_proj$", r"encoder\.layer\.\d+\.attention\.attention\.key$"],
        "value": [r"layers\.\d+\.attention\.v_proj$", r"encoder\.layer\.\d+\.attention\.attention\.value$"],
        "attn_out": [r"layers\.\d+\.attention\.o_proj$", r"encoder\.layer\.\d+\.attention\.output\.dense$"],
        "ffn_in": [r"layers\.\d+\.mlp\.fc1$", r"encoder\.layer\.\d+\.intermediate\.dense$"],
        "ffn_out": [r"layers\.\d+\.mlp\.fc2$", r"encoder\.layer\.\d+\.output\.dense$"],
    },
}


def _model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def role_of(model_type: str | None, name: str) -> str:
    """The role (query, key, value, attn_out, ffn_in, ffn_out) of a module name, or 'other'."""
    for role, patterns in ROLE_TABLE.get(model_type or "", {}).items():
        if any(re.search(p, name) for p in patterns):
            return role
    return "other"


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _preview(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _match_user_patterns(model: nn.Module, patterns: list[str]) -> list[str]:
    names = [n for n, _ in model.named_modules() if n]
    matched = [n for n in names if any(n == p or n.endswith("." + p) for p in patterns)]
    if not matched and len(patterns) == 1:
        try:
            regex = re.compile(patterns[0])
        except re.error as err:
            raise ValueError(f"target_modules={patterns!r} matches no module and is not a valid regex ({err}).") from err
        matched = [n for n in names if regex.search(n)]
    return matched


def find_targets(model: nn.Module, target_modules: list[str] | None) -> list[str]:
    """Names of the nn.Linear modules to prune, in model order. Raises a clear error when nothing fits."""
    modules = dict(model.named_modules())
    linears = _linear_names(model)
    if target_modules is None:
        model_type = _model_type(model)
        if model_type not in ROLE_TABLE:
            raise ValueError(
                f"pdp_hf has no default target modules for model_type={model_type!r} "
                f"(defaults exist for {sorted(ROLE_TABLE)}). Pass PDPConfig(target_modules=[...]) with names, "
                f"suffixes or one regex. The model's Linear layers: {_preview(linears)}."
            )
        matched = [n for n in linears if role_of(model_type, n) != "other"]
        subclassed = sorted({type(modules[n]).__name__ for n in matched if type(modules[n]) is not nn.Linear})
        if subclassed:
            raise ValueError(
                f"The default targets of this model are {subclassed}, not plain nn.Linear (a quantized model?). "
                "pdp_hf prunes full-precision nn.Linear weights; load the model unquantized."
            )
        if not matched:
            raise ValueError(
                f"The default targets for model_type={model_type!r} matched no Linear layer in this model "
                f"(module names changed in this Transformers version?). Pass target_modules explicitly. "
                f"The model's Linear layers: {_preview(linears)}."
            )
        return matched
    matched = _match_user_patterns(model, target_modules)
    if not matched:
        raise ValueError(
            f"target_modules={target_modules!r} matched no module. The model's Linear layers: {_preview(linears)}."
        )
    non_linear = [n for n in matched if type(modules[n]) is not nn.Linear]
    if non_linear:
        kinds = sorted({type(modules[n]).__name__ for n in non_linear})
        raise ValueError(
            f"target_modules={target_modules!r} matched modules that are not plain nn.Linear ({kinds}): "
            f"{_preview(non_linear)}. Only nn.Linear layers can be pruned (not quantized or other subclasses); "
            "narrow the patterns. "
            f"The model's Linear layers: {_preview(linears)}."
        )
    return matched


def tied_targets(model: nn.Module, names: list[str]) -> dict[str, list[str]]:
    """Target -> the other parameters that share its weight's storage (a decoder or lm_head tied to the word
    embeddings): pruning the target would prune those too."""
    by_storage: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.device.type != "meta":
            by_storage.setdefault(param.untyped_storage().data_ptr(), []).append(name)
    tied = {}
    for name in names:
        weight = model.get_submodule(name).weight
        if weight.device.type == "meta":
            continue
        others = [p for p in by_storage.get(weight.untyped_storage().data_ptr(), []) if p != f"{name}.weight"]
        if others:
            tied[name] = others
    return tied
