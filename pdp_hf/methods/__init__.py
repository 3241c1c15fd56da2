"""Mask methods behind one small interface (`MaskMethod`). A new method is one file plus one line here."""

from .base import MaskMethod
from .magnitude import MagnitudeMethod
from .pdp import PDPMethod

METHODS: dict[str, type[MaskMethod]] = {
    "pdp": PDPMethod,
    "magnitude": MagnitudeMethod,
}


def get_method(name: str) -> type[MaskMethod]:
    if name not in METHODS:
        raise ValueError(f"Unknown pruning method {name!r}; available: {sorted(METHODS)}.")
    return METHODS[name]


__all__ = ["MaskMethod", "MagnitudeMethod", "PDPMethod", "METHODS", "get_method"]
