"""A model with fewer attention heads and FFN neurons per layer, written by pdp_hf's `export_pruned(shrink=True)`.

It loads where pdp_hf is not installed, with torch and transformers only:

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)

`config.json` records the kept sizes in `pdp_shrunk`: `linear` maps each cut Linear (its name in the exported model)
to `[in_features, out_features]`, `heads` maps each attention module to its kept head count. The model is built at
the sizes of its config, then those modules are rebuilt at the kept sizes, and only then do the weights load. The
attention code of the encoders pdp_hf supports reshapes with `view(..., -1, head_dim)`, so a layer with fewer heads
needs only its Q/K/V rows (of each third of a fused QKV), its output-projection columns and its head count changed.
"""

from torch import nn

HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads", "n_heads")


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _module(model: nn.Module, name: str, named: str | None = None) -> nn.Module:
    """The submodule `name`; a clear error naming `named` (the entry of pdp_shrunk) when there is none."""
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        raise ValueError(f"config.pdp_shrunk names {named or name!r}, which this {type(model).__name__} does not have: "
                         "the config was changed or belongs to another model. Export it again.") from None


def _check(spec) -> None:
    linear, heads = (spec.get("linear", {}), spec.get("heads", {})) if isinstance(spec, dict) else (None, None)
    if not isinstance(linear, dict) or not isinstance(heads, dict):
        raise ValueError(f"config.pdp_shrunk must be {{'linear': {{name: [in, out]}}, 'heads': {{name: count}}}}, "
                         f"not {spec!r}: the config was changed. Export it again.")
    for name, sizes in linear.items():
        if not (isinstance(sizes, (list, tuple)) and len(sizes) == 2 and all(_count(n) for n in sizes)):
            raise ValueError(f"config.pdp_shrunk gives {name!r} the sizes {sizes!r}, not [in_features, out_features] "
                             "(positive integers): the config was changed. Export it again.")
    for name, count in heads.items():
        if not _count(count):
            raise ValueError(f"config.pdp_shrunk gives {name!r} {count!r} heads, not a positive integer: the config "
                             "was changed. Export it again.")


def shrink_modules(model: nn.Module, spec: dict) -> nn.Module:
    """Rebuild the Linear layers and head counts named in `spec` (config.pdp_shrunk) at their kept sizes."""
    _check(spec)
    for name, (in_features, out_features) in spec.get("linear", {}).items():
        parent, _, child = name.rpartition(".")
        owner = _module(model, parent, name)
        old = getattr(owner, child, None)
        if old is None:
            _module(model, name)  # raises, naming it
        if not isinstance(old, nn.Linear):
            raise ValueError(f"config.pdp_shrunk names {name!r}, which is a {type(old).__name__}, not a Linear layer.")
        weight = old.weight
        setattr(owner, child, nn.Linear(in_features, out_features, bias=old.bias is not None, device=weight.device,
                                        dtype=weight.dtype))
    for name, heads in spec.get("heads", {}).items():
        attention = _module(model, name)
        before = next((getattr(attention, a) for a in HEAD_COUNT_ATTRS if isinstance(getattr(attention, a, None), int)),
                      None)
        if before is None:
            if isinstance(getattr(attention, "head_dim", None), int):
                continue  # no count kept (ModernBERT): the forward takes the heads from the shapes
            raise ValueError(f"config.pdp_shrunk names {name!r}, which holds no head count ({HEAD_COUNT_ATTRS}).")
        for attr in HEAD_COUNT_ATTRS:
            if isinstance(getattr(attention, attr, None), int):
                setattr(attention, attr, heads)
        if isinstance(getattr(attention, "all_head_size", None), int):
            attention.all_head_size = attention.all_head_size // before * heads
    return model


class PDPShrunkMixin:
    """Put before a Transformers model class: builds the model, then shrinks it to `config.pdp_shrunk`."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        shrink_modules(self, getattr(config, "pdp_shrunk", None) or {})
