#!/usr/bin/env python
"""PDP and magnitude at each granularity on MiniLM SST-2 (the `make demo` recipe), like for like.

    python benchmarks/granularity_grid.py                 # run what is missing, then write the table
    python benchmarks/granularity_grid.py --table_only    # only rebuild the table from the finished runs

Every run is `scripts/demo.py` with the same model, data, seed (42), steps (600), batch and schedule points, and
`sparsity_distribution="uniform"` for both methods (N:M requires it, and it keeps the comparison like for like);
magnitude uses its own cubic schedule (Zhu & Gupta). Each run writes `<out>/<name>.json` the moment it finishes,
and finished runs are skipped, so an interrupted grid resumes where it stopped. The table (`<out>.md`) is built
from whatever results exist.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Exact cut at every step, as the committed magnitude runs had it (pdp_hf 0.2 had no sampled cut for magnitude).
MAGNITUDE = ["--method", "magnitude", "--sparsity_schedule", "cubic", "--threshold_refresh_steps", "1"]
SETTINGS = {
    "2:4": ["--granularity", "n:m", "--n_m", "2:4"],
    "50% FFN neurons": ["--granularity", "neuron", "--target_sparsity", "0.5"],
    "50% heads + 50% neurons": ["--granularity", "attention=head,ffn=neuron", "--target_sparsity", "0.5"],
    "unstructured 50%": ["--granularity", "unstructured", "--target_sparsity", "0.5"],
}


def runs() -> dict[str, tuple[str, str, list[str]]]:
    """name -> (setting, method, demo arguments), in the order they run."""
    table = {}
    for setting, args in SETTINGS.items():
        slug = setting.replace("%", "").replace(":", "of").replace("+", "").replace(" ", "_").replace("__", "_")
        table[f"pdp_{slug}"] = (setting, "pdp", args)
        table[f"magnitude_{slug}"] = (setting, "magnitude", args + MAGNITUDE)
    table["dense"] = ("dense", "dense", ["--target_sparsity", "0"])
    return table


def run_one(name: str, args: list[str], out: str) -> None:
    argv = ["--sparsity_distribution", "uniform", "--output_dir", os.path.join("outputs", "grid", name)] + args
    tmp = os.path.join(out, name + ".json.tmp")
    code = (
        f"import json, sys; sys.path.insert(0, {os.path.join(HERE, '..', 'scripts')!r}); import demo; r = demo.main({argv!r}); "
        f"json.dump({{**r, 'argv': {argv!r}}}, open({tmp!r}, 'w'), indent=2)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    os.replace(os.path.join(out, name + ".json.tmp"), os.path.join(out, name + ".json"))


def table(out: str) -> str:
    lines = [
        "| setting | method | sparsity of targeted weights | SST-2 dev accuracy | minutes | command |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, (setting, method, _) in runs().items():
        path = os.path.join(out, name + ".json")
        if not os.path.isfile(path):
            lines.append(f"| {setting} | {method} | | not run yet | | |")
            continue
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        command = "python scripts/demo.py " + " ".join(a if " " not in a and "=" not in a else repr(a) for a in r["argv"])
        lines.append(
            f"| {setting} | {method} | {r['sparsity']:.4f} | {100 * r['accuracy']:.2f} | {r['minutes']:.1f} | `{command}` |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(HERE, "granularity_minilm_sst2"))
    parser.add_argument("--table_only", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if not args.table_only:
        for name, (_, _, demo_args) in runs().items():
            if os.path.isfile(os.path.join(args.out, name + ".json")):
                continue
            print(f"grid: running {name}", flush=True)
            run_one(name, demo_args, args.out)
            with open(args.out + ".md", "w", encoding="utf-8") as f:
                f.write(table(args.out))
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(table(args.out))
    print(table(args.out))


if __name__ == "__main__":
    main()
