"""Script arguments: HfArgumentParser from the command line, a JSON file, or a JSON file plus overrides."""

from __future__ import annotations

import json
import os

from transformers import HfArgumentParser


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
