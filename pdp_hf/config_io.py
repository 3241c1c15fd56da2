"""`PDPConfig`'s JSON round trip (`pruning_config.json`, sorted and indented, with the pdp_hf version) and its checks of
the speed target's fields."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from .atomic import atomic_write_text

PRUNING_CONFIG_NAME = "pruning_config.json"
VERSION_KEY = "pdp_hf_version"
UNIT_COSTS_KEY = "pdp_unit_costs"  # an export's config.json: the prices its budgets were set with


def _invalid(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"PDPConfig.{name}={value!r} is invalid: {allowed}.")


def check_target_speedup(self) -> None:
    """PDPConfig's checks of target_speedup and the speed_* fields (resolves speed_unit_costs to a dict)."""
    for name, least in (("speed_batch_size", 1), ("speed_seq_length", 1), ("speed_calibration_timings", 0)):
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise _invalid(name, value, f"it must be a whole number >= {least}")
    if self.target_speedup is None:
        if self.speed_unit_costs is not None:
            raise _invalid("speed_unit_costs", "...", "it prices target_speedup, which is not set")
        return
    self._check_number("target_speedup", self.target_speedup)
    if self.target_speedup <= 1:
        raise _invalid("target_speedup", self.target_speedup, "it must be > 1 (2.0 asks for twice as fast)")
    if self.target_sparsity is not None:
        raise _invalid("target_sparsity", self.target_sparsity, "target_sparsity and target_speedup exclude each "
                       "other; set one of them (the other None)")
    kinds = set(self.granularities().values())
    if not kinds <= {"head", "neuron"}:
        raise _invalid("granularity", self.granularity, "target_speedup prices whole heads and FFN neurons; use "
                       "'head', 'neuron' or 'attention=head,ffn=neuron'")
    if self.speed_unit_costs is not None:
        try:
            self.speed_unit_costs = read_unit_costs(self.speed_unit_costs, kinds)
        except ValueError as err:
            raise _invalid("speed_unit_costs", self.speed_unit_costs, str(err)) from None
    if self.sparsity_distribution == "learned":
        raise _invalid("sparsity_distribution", "learned", "target_speedup fixes the budgets at pruning_start; "
                       "use 'uniform' (one fraction of heads and neurons per layer) or 'global' (squared norm per "
                       "unit of cost over all layers)")


def read_unit_costs(value, kinds: set[str]) -> dict[str, float]:
    """`PDPConfig.speed_unit_costs` as a dict of seconds: a dict, JSON text, or the path of a JSON file (an export's
    config.json holds them under "pdp_unit_costs"), with the optional "calibration" of the shrunk shapes' timing.
    Raises ValueError saying what is wrong; `kinds` are the unit kinds the granularity prices."""
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
    for key in sorted(need | ({"calibration"} & set(value))):  # calibration: pdp_hf.speed_budget.calibrate_unit_costs
        number = value[key]
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 < number < float("inf"):
            raise ValueError(f"{key}={number!r} is not a positive number" + (" of seconds" if key != "calibration" else ""))
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
