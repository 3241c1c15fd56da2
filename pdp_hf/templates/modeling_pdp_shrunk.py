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


def shrink_modules(model: nn.Module, spec: dict) -> nn.Module:
    """Rebuild the Linear layers and head counts named in `spec` (config.pdp_shrunk) at their kept sizes."""
    for name, (in_features, out_features) in spec.get("linear", {}).items():
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        old = getattr(owner, child)
        if not isinstance(old, nn.Linear):
            raise ValueError(f"config.pdp_shrunk names {name!r}, which is a {type(old).__name__}, not a Linear layer.")
        weight = old.weight
        setattr(owner, child, nn.Linear(in_features, out_features, bias=old.bias is not None, device=weight.device,
                                        dtype=weight.dtype))
    for name, heads in spec.get("heads", {}).items():
        attention = model.get_submodule(name)
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
