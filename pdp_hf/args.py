"""Script arguments: HfArgumentParser from the command line, a JSON file, or a JSON file plus overrides."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from transformers import HfArgumentParser


@dataclass(kw_only=True)
class ExportArguments:
    """How a script's export is written (`export_pruned`'s `shrink` and `onnx`); the scripts' model arguments extend
    it."""

    export_shrink: bool = field(
        default=False,
        metadata={"help": "Cut pruned heads and FFN neurons out of the export (export_pruned(shrink=True)): smaller and "
                          "faster anywhere; per-layer sizes load with trust_remote_code=True."},
    )
    export_onnx: bool = field(default=False, metadata={"help": "Also write model.onnx into the export (ONNX Runtime)."})


def parse_script_args(parser: HfArgumentParser, argv: list[str]) -> tuple:
    """`script.py --a 1 ...`, `script.py config.json`, or `script.py config.json --a 2` (flags override the file).

    Example: `python scripts/run_glue.py scripts/configs/minilm_rte_90.json --model_name_or_path ./minilm`.
    """
    if not argv or not argv[0].endswith(".json"):
        return parser.parse_args_into_dataclasses(args=argv)
    path = os.path.abspath(argv[0])
    with open(path, encoding="utf-8") as f:
        values = json.load(f)
    if len(argv) == 1:
        return parser.parse_dict(values)
    known = {action.dest: action for action in parser._actions}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown arguments {unknown}.")
    for key, value in values.items():
        known[key].required = False  # the file supplies it; a flag may still override
        known[key].default = value
    return parser.parse_args_into_dataclasses(args=argv[1:])
