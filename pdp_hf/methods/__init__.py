"""Mask methods behind one small interface (`MaskMethod`). A new method is one file plus one line here."""

from .base import MaskMethod
from .magnitude import MagnitudeMethod
from .movement import MovementMethod
from .pdp import PDPMethod
from .smart import SmartMethod

METHODS: dict[str, type[MaskMethod]] = {
    "pdp": PDPMethod,
    "magnitude": MagnitudeMethod,
    "smart": SmartMethod,
    "movement": MovementMethod,
}


def get_method(name: str) -> type[MaskMethod]:
    if name not in METHODS:
        raise ValueError(f"Unknown pruning method {name!r}; available: {sorted(METHODS)}.")
    return METHODS[name]


__all__ = ["MaskMethod", "MagnitudeMethod", "MovementMethod", "PDPMethod", "SmartMethod", "METHODS", "get_method"]
