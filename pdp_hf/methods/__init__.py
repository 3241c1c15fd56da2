"""Mask methods behind one small interface (`MaskMethod`). A new method is one file plus one line here."""

from ..config import METHODS, get_method, register_method
from .base import MaskMethod
from .magnitude import MagnitudeMethod
from .movement import MovementMethod
from .pdp import PDPMethod
from .smart import SmartMethod

for _method in (PDPMethod, MagnitudeMethod, SmartMethod, MovementMethod):  # the order PDPConfig's errors list them in
    register_method(_method)


__all__ = ["MaskMethod", "MagnitudeMethod", "MovementMethod", "PDPMethod", "SmartMethod", "METHODS", "get_method"]
