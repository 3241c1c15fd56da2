"""Which Linear layers to prune: one role table per architecture, and user patterns.

Module names move between Transformers versions (ViT was rewritten from `encoder.layer.N.attention.attention.query`
to `layers.N.attention.q_proj`), so each role lists every spelling we know. Defaults that match nothing raise:
pruning is never a silent no-op.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

_BERT_LIKE = {
    "query": (r"encoder\.layer\.\d+\.attention\.self\.query$",),
    "key": (r"encoder\.layer\.\d+\.attention\.self\.key$",),
    "value": (r"encoder\.layer\.\d+\.attention\.self\.value$",),
    "attn_out": (r"encoder\.layer\.\d+\.attention\.output\.dense$",),
    "ffn_in": (r"encoder\.layer\.\d+\.intermediate\.dense$",),
    "ffn_out": (r"encoder\.layer\.\d+\.output\.dense$",),
}
# q/k/v/o_proj + mlp.fc1/fc2: ViT (Transformers 5), DeiT and DINOv2; DINOv2's SwiGLU FFN is gate/up/down_proj
_PROJ_MLP = {
    "query": (r"layers?\.\d+\.attention\.q_proj$",),
    "key": (r"layers?\.\d+\.attention\.k_proj$",),
    "value": (r"layers?\.\d+\.attention\.v_proj$",),
    "attn_out": (r"layers?\.\d+\.attention\.o_proj$",),
    "ffn_gate": (r"layers?\.\d+\.mlp\.gate_proj$",),
    "ffn_in": (r"layers?\.\d+\.mlp\.fc1$", r"layers?\.\d+\.mlp\.up_proj$"),
    "ffn_out": (r"layers?\.\d+\.mlp\.fc2$", r"layers?\.\d+\.mlp\.down_proj$"),
}


def _deberta_heads(config) -> str | None:
    if getattr(config, "relative_attention", False) and not getattr(config, "share_att_key", False) and (
            getattr(config, "pos_att_type", None)):
        return ("this DeBERTa config has share_att_key=False: each attention also projects the relative positions "
                "with its own pos_key_proj/pos_query_proj, whose rows belong to heads but are not pruning targets")
    return None


# the roles one head spans (separate Q, K, V or one fused QKV, then the output projection), and one FFN neuron
# (FFN-in, or a gate and FFN-in as in SwiGLU, then FFN-out): rows of all but the last, columns of the last
HEAD_LAYOUTS = (("query", "key", "value", "attn_out"), ("qkv", "attn_out"))
NEURON_LAYOUTS = (("ffn_gate", "ffn_in", "ffn_out"), ("ffn_in", "ffn_out"))


@dataclass(frozen=True)
class Architecture:
    """One supported model type, as data.

    `roles`: role -> the regexes of the module names that play it (every spelling we know). A head spans the rows
    of `query`, `key` and `value` (or of one fused `qkv`) and the columns of `attn_out`; an FFN neuron a row of
    `ffn_in` and a column of `ffn_out`. `parts`: role -> the number of equal row chunks of that matrix, each holding
    every unit in order: a fused Q|K|V matrix has 3, a gated FFN-in (value|gate, or gate|value) 2; a unit then spans
    its rows in every chunk. `parts` is keyed by the end of the module name (a model type may have gated and plain
    FFNs, as DINOv2 with and without `use_swiglu_ffn`). `heads_uncut`: config -> why heads cannot be cut out of this model (None: they can);
    such heads can be pruned (their weights are zero) but stay in shrunk and sliced models.
    """

    roles: dict
    parts: dict = field(default_factory=dict)
    heads_uncut: Callable | None = None

    def __post_init__(self):
        known = [r for layout in HEAD_LAYOUTS + NEURON_LAYOUTS for r in layout]
        where = f"Architecture(roles={sorted(self.roles) if isinstance(self.roles, dict) else self.roles!r})"
        if not isinstance(self.roles, dict) or not self.roles:
            raise ValueError(f"{where}: roles must be a non-empty dict role -> module-name regexes.")
        for role, patterns in self.roles.items():
            if role not in known:
                raise ValueError(f"{where}: {role!r} is not a role; the roles are {sorted(set(known))}.")
            if isinstance(patterns, str) or not patterns or not all(isinstance(p, str) for p in patterns):
                raise ValueError(f"{where}: roles[{role!r}] must be a non-empty list of regexes, not {patterns!r}.")
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"{where}: roles[{role!r}] holds {pattern!r}, not a valid regex ({err}).") from err
        for kind, layouts in (("attention", HEAD_LAYOUTS), ("FFN", NEURON_LAYOUTS)):
            present = {r for r in self.roles if any(r in layout for layout in layouts)}
            if present and not any(present == set(layout) for layout in layouts):
                raise ValueError(f"{where}: its {kind} roles {sorted(present)} are not one of "
                                 f"{[list(x) for x in layouts]}; a head or a neuron needs all of one.")
        for suffix, count in (self.parts or {}).items():
            if not isinstance(suffix, str) or isinstance(count, bool) or not isinstance(count, int) or count < 2:
                raise ValueError(f"{where}: parts maps the end of a module name to its row chunks (an int >= 2), "
                                 f"not {suffix!r}: {count!r}.")
        if self.heads_uncut is not None and not callable(self.heads_uncut):
            raise ValueError(f"{where}: heads_uncut must be a function of the config (or None).")


def register_architecture(model_type: str, roles: dict, parts: dict | None = None, heads_uncut: Callable | None = None,
                          replace: bool = False) -> Architecture:
    """Teach pdp_hf a model type: its default targets and structured units, as data (see `Architecture`).

    >>> from pdp_hf.targets import ARCHITECTURES, register_architecture
    >>> arch = register_architecture("camembert", ARCHITECTURES["roberta"].roles)  # RoBERTa's module names
    >>> del ARCHITECTURES["camembert"]
    """
    if not isinstance(model_type, str) or not model_type:
        raise ValueError(f"register_architecture: model_type must be a model's config.model_type, not {model_type!r}.")
    if model_type in ARCHITECTURES and not replace:
        raise ValueError(f"model_type={model_type!r} already has an entry; pass replace=True to change it.")
    if not isinstance(roles, dict) or not (parts is None or isinstance(parts, dict)):
        raise ValueError(f"register_architecture({model_type!r}): roles must be a dict role -> module-name regexes and "
                         f"parts a dict or None, not {type(roles).__name__} and {type(parts).__name__}.")
    # a generator of regexes would be used up by the checks: hold each role's regexes as a tuple
    roles = {role: tuple(p) if isinstance(p, (list, tuple)) or not isinstance(p, str) and hasattr(p, "__iter__")
             else p for role, p in roles.items()}
    arch = Architecture(roles, dict(parts or {}), heads_uncut)
    ARCHITECTURES[model_type] = arch
    return arch


_MPNET_HEADS = ("MPNet adds one relative-position bias per head, computed once and shared by every layer "
                "(encoder.relative_attention_bias), so one layer cannot lose heads while the bias keeps them all")

ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(_BERT_LIKE),
    "roberta": Architecture(_BERT_LIKE),
    "xlm-roberta": Architecture(_BERT_LIKE),
    "electra": Architecture(_BERT_LIKE),
    "deberta-v2": Architecture({**_BERT_LIKE, **{
        r: (rf"encoder\.layer\.\d+\.attention\.self\.{r}_proj$",) for r in ("query", "key", "value")}},
        heads_uncut=_deberta_heads),
    "mpnet": Architecture({
        **{role: (rf"encoder\.layer\.\d+\.attention\.attn\.{short}$",)
           for role, short in (("query", "q"), ("key", "k"), ("value", "v"), ("attn_out", "o"))},
        "ffn_in": _BERT_LIKE["ffn_in"], "ffn_out": _BERT_LIKE["ffn_out"]}, heads_uncut=lambda config: _MPNET_HEADS),
    "distilbert": Architecture({
        "query": (r"transformer\.layer\.\d+\.attention\.q_lin$",),
        "key": (r"transformer\.layer\.\d+\.attention\.k_lin$",),
        "value": (r"transformer\.layer\.\d+\.attention\.v_lin$",),
        "attn_out": (r"transformer\.layer\.\d+\.attention\.out_lin$",),
        "ffn_in": (r"transformer\.layer\.\d+\.ffn\.lin1$",),
        "ffn_out": (r"transformer\.layer\.\d+\.ffn\.lin2$",),
    }),
    "vit": Architecture({  # Transformers 5 spells ViT like DeiT; the older spelling is BERT's under .attention.attention
        role: _PROJ_MLP[role] + tuple(p.replace(r"\.self\.", r"\.attention\.") for p in _BERT_LIKE[role])
        for role in _BERT_LIKE}),
    "deit": Architecture(_PROJ_MLP),
    "dinov2": Architecture(_PROJ_MLP),
    "modernbert": Architecture({
        "qkv": (r"layers\.\d+\.attn\.Wqkv$",),
        "attn_out": (r"layers\.\d+\.attn\.Wo$",),
        "ffn_in": (r"layers\.\d+\.mlp\.Wi$",),
        "ffn_out": (r"layers\.\d+\.mlp\.Wo$",),
    }, parts={"attn.Wqkv": 3, "mlp.Wi": 2}),  # fused Q|K|V; gated FFN-in: value|gate
}


class _RoleTable(Mapping):
    """model_type -> role -> regexes: a live view of ARCHITECTURES (the role tables of pdp_hf 0.3)."""

    def __getitem__(self, model_type: str) -> dict:
        return ARCHITECTURES[model_type].roles

    def __iter__(self):
        return iter(ARCHITECTURES)

    def __len__(self) -> int:
        return len(ARCHITECTURES)


ROLE_TABLE = _RoleTable()


def architecture(model_or_type) -> Architecture | None:
    """The entry of a model (or a model_type string), None for a type without one."""
    model_type = model_or_type if isinstance(model_or_type, str) or model_or_type is None else _model_type(model_or_type)
    return ARCHITECTURES.get(model_type or "")


def parts_of(model, name: str) -> int:
    """Row chunks of the targeted matrix `name` (see Architecture.parts)."""
    arch = architecture(model)
    found = [n for suffix, n in (arch.parts if arch else {}).items() if name == suffix or name.endswith("." + suffix)]
    return found[0] if found else 1


def heads_uncut(model) -> str | None:
    """Why this model's heads cannot be cut out (None when they can)."""
    arch = architecture(model)
    reason = None if arch is None or arch.heads_uncut is None else arch.heads_uncut(getattr(model, "config", None))
    if reason is not None and not isinstance(reason, str):
        raise ValueError(f"The architecture entry of model_type={_model_type(model)!r}: heads_uncut must return a "
                         f"reason (a string) or None, not {reason!r}.")
    return reason or None


def _model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def role_of(model_type: str | None, name: str) -> str:
    """The role (query, key, value, qkv, attn_out, ffn_gate, ffn_in, ffn_out) of a module name, or 'other'."""
    arch = ARCHITECTURES.get(model_type or "")
    found = [role for role, patterns in (arch.roles if arch else {}).items() if any(re.search(p, name) for p in patterns)]
    if len(found) > 1:
        raise ValueError(f"The role table of model_type={model_type!r} gives {name!r} several roles ({found}); each "
                         "module plays one. Fix the table (pdp_hf.targets.ARCHITECTURES).")
    return found[0] if found else "other"


def head_roles(roles) -> tuple[str, ...] | None:
    """The head layout whose roles are all in `roles` (a layer's role -> name), None when none is complete."""
    return next((layout for layout in HEAD_LAYOUTS if set(layout) <= set(roles)), None)


def neuron_roles(roles) -> tuple[str, ...] | None:
    """The FFN layout whose roles are all in `roles`, None when none is complete."""
    return next((layout for layout in NEURON_LAYOUTS if set(layout) <= set(roles)), None)


def closest_layout(layouts, present, model) -> tuple[str, ...]:
    """The layout a layer's targets `present` (role -> name) are meant to fill: a complete one, else the one they
    fill most, else the one the model's architecture has (for an error that names the roles really missing)."""
    arch = architecture(model)
    known = set(arch.roles) if arch else set()
    return max(layouts, key=lambda layout: (set(layout) <= set(present), len(set(layout) & set(present)),
                                            len(set(layout) & known)))


def check_role_table(model_type: str, names: list[str]) -> None:
    """Every numbered layer of the default targets `names` holds whole heads and whole neurons, each role once: a
    wrong or partial role table (a spelling that changed, a missing role) fails here, naming the layer and role."""
    layers: dict[str, dict[str, list[str]]] = {}
    for name in names:
        match = re.search(r"\.(\d+)\.", name)
        if match is not None:
            layers.setdefault(match.group(1), {}).setdefault(role_of(model_type, name), []).append(name)
    for index, roles in layers.items():
        twice = {role: found for role, found in roles.items() if len(found) > 1}
        attention = {r for r in roles if r in {r for layout in HEAD_LAYOUTS for r in layout}}
        ffn = {r for r in roles if r in {r for layout in NEURON_LAYOUTS for r in layout}}
        problem = None
        if twice:
            problem = f"these roles match several modules: {twice}"
        elif attention and not any(attention == set(layout) for layout in HEAD_LAYOUTS):
            problem = f"its attention roles are {sorted(attention)}, not one of {[list(x) for x in HEAD_LAYOUTS]}"
        elif ffn and not any(ffn == set(layout) for layout in NEURON_LAYOUTS):
            problem = f"its FFN roles are {sorted(ffn)}, not one of {[list(x) for x in NEURON_LAYOUTS]}"
        if problem:
            raise ValueError(f"The role table of model_type={model_type!r} is wrong or partial for this model: in "
                             f"layer {index}, {problem}. Fix pdp_hf.targets.ARCHITECTURES, or pass "
                             "PDPConfig(target_modules=[...]).")


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
        if model_type not in ARCHITECTURES:
            raise ValueError(
                f"pdp_hf has no default target modules for model_type={model_type!r} "
                f"(defaults exist for {sorted(ARCHITECTURES)}). Pass PDPConfig(target_modules=[...]) with names, "
                f"suffixes or one regex. The model's Linear layers: {_preview(linears)}."
            )
        matched = [n for n in linears if role_of(model_type, n) != "other"]
        check_role_table(model_type, matched)
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
