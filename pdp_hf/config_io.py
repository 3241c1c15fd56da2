"""`PDPConfig`'s JSON round trip: `pruning_config.json`, sorted and indented, with the pdp_hf version."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from .atomic import atomic_write_text

PRUNING_CONFIG_NAME = "pruning_config.json"
VERSION_KEY = "pdp_hf_version"
UNIT_COSTS_KEY = "pdp_unit_costs"  # an export's config.json: the prices its budgets were set with


def read_unit_costs(value, kinds: set[str]) -> dict[str, float]:
    """`PDPConfig.speed_unit_costs` as a dict of seconds: a dict, JSON text, or the path of a JSON file (an export's
    config.json holds them under "pdp_unit_costs"). Raises ValueError saying what is wrong; `kinds` are the unit
    kinds the granularity prices."""
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if os.path.isfile(text):
            with open(text, encoding="utf-8-sig") as f:
                text = f.read()
        try:
            value = json.loads(text)
        except ValueError:
            raise ValueError("give a dict, JSON text or the path of a JSON file (an export's config.json)") from None
    if isinstance(value, dict) and UNIT_COSTS_KEY in value:
        value = value[UNIT_COSTS_KEY]
    need = {"dense", *kinds}
    if not isinstance(value, dict) or not need <= set(value):
        raise ValueError(f"it must hold seconds for {sorted(need)} (as in an export's config.json, {UNIT_COSTS_KEY})")
    costs = {}
    for key in sorted(need):
        number = value[key]
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 < number < float("inf"):
            raise ValueError(f"{key}={number!r} is not a positive number of seconds")
        costs[key] = float(number)
    return costs


class ConfigIO:
    """to_dict / save_pretrained / from_pretrained for a config dataclass (PDPConfig)."""

    # -- serialization ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (JSON-serializable)."""
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        from .version import __version__

        return json.dumps({**self.to_dict(), VERSION_KEY: __version__}, indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write `pruning_config.json` (sorted, indented, with the pdp_hf version) and return its path."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, PRUNING_CONFIG_NAME)
        atomic_write_text(path, self.to_json_string())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        data = dict(data)
        data.pop(VERSION_KEY, None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown PDPConfig keys {unknown}; known keys are {sorted(known)}.")
        return cls(**data)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Any:
        """Read `pruning_config.json` from a folder (or the file itself)."""
        from .version import __version__

        file = os.path.join(path, PRUNING_CONFIG_NAME) if os.path.isdir(path) else str(path)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"No {PRUNING_CONFIG_NAME} found at {path!s}.")
        try:
            with open(file, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{file} is not valid JSON ({err}); re-export it or fix the file by hand.") from err
        if not isinstance(data, dict):
            raise ValueError(f"{file} must hold a JSON object, got {type(data).__name__}.")
        saved = data.get(VERSION_KEY)
        if saved is not None and _major_minor(str(saved)) > _major_minor(__version__):
            raise ValueError(
                f"{file} was written by pdp_hf {saved}, newer than the installed {__version__}; "
                "upgrade with `pip install -U pdp-hf`."
            )
        return cls.from_dict(data)




def _major_minor(version: str) -> tuple[int, int]:
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:2]]
    return tuple(parts + [0] * (2 - len(parts)))  # type: ignore[return-value]
