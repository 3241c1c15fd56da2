"""Role groups: the parts of a layer a granularity can be set for separately ("attention=head,ffn=neuron")."""

from __future__ import annotations

# role group -> the roles (pdp_hf.targets) it spans
ROLE_GROUPS = {"attention": ("query", "key", "value", "qkv", "attn_out"), "ffn": ("ffn_gate", "ffn_in", "ffn_out")}


def parse_role_map(value: str, what: str, allowed: tuple[str, ...] | None = None) -> dict[str, str]:
    """`"head"` -> {"*": "head"}; `"attention=head,ffn=neuron"` -> {"attention": "head", "ffn": "neuron"}.

    >>> parse_role_map("attention=head, ffn=neuron", "granularity")
    {'attention': 'head', 'ffn': 'neuron'}
    """
    if "=" not in value:
        if allowed is not None and value.strip() not in allowed:
            raise ValueError(
                f"PDPConfig.{what}={value!r} is invalid: choose one of {list(allowed)}, or map role groups "
                "to them, e.g. 'attention=head,ffn=neuron'."
            )
        return {"*": value.strip()}
    mapping: dict[str, str] = {}
    for part in value.split(","):
        key, sep, item = (p.strip() for p in part.partition("="))
        if not sep or key not in ROLE_GROUPS or key in mapping or not item:
            raise ValueError(
                f"PDPConfig.{what}={value!r} is invalid: write one value for all targets, or "
                f"'attention=...,ffn=...' with each of {sorted(ROLE_GROUPS)} at most once."
            )
        if allowed is not None and item not in allowed:
            raise ValueError(f"PDPConfig.{what}={value!r} is invalid: {item!r} is not one of {list(allowed)}.")
        mapping[key] = item
    return mapping
