#!/usr/bin/env python
"""Dense, magnitude, movement, PDP and SMART on the same model, data, seeds, steps and budgets: which method is worth what.

    python benchmarks/compare_methods.py                    # run what is missing (in priority order), then the table
    python benchmarks/compare_methods.py --table_only       # rebuild the table and plot from the finished runs
    python benchmarks/compare_methods.py --settings 90u     # only some settings (see SETTINGS)
    python benchmarks/compare_methods.py --list             # every run, finished or not, with its command

Every run is `scripts/demo.py` (all-MiniLM-L6-v2 on SST-2, 600 steps, batch 32, the demo's schedule points) with
only the method, its own settings, the budget, the distribution and the seed changed. Each run writes
`<out>/<name>.json` the moment it finishes (accuracy, sparsity, minutes, the exact argv, the code's git commit), and
finished runs are skipped, so an interrupted grid resumes where it stopped; the table `<out>.md` and the plot
`<out>.png` are rebuilt from whatever exists after every run. A method the installed pdp_hf does not have is left
"not run yet" rather than failing the grid.

Methods keep their papers' schedule shape (magnitude and movement: cubic; PDP and SMART: linear ramp); everything
else is shared. Runs go seed by seed through a setting (every method at seed 42 first), so a partial grid compares
all methods on the same seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPTS = os.path.join(ROOT, "scripts")  # demo.py, the user's entry point every run goes through
SEEDS = (42, 43, 44)

# method -> demo flags of the method itself (its own knobs at their chosen values, see docs/results.md, "Comparing methods")
METHOD_ARGS = {
    "dense": ["--target_sparsity", "0"],
    "magnitude": ["--method", "magnitude", "--sparsity_schedule", "cubic"],
    "movement": ["--method", "movement", "--sparsity_schedule", "cubic", "--movement_score_init", "magnitude"],
    "pdp": ["--method", "pdp"],
    "smart": ["--method", "smart"],
}
# Each method's own knob, tried at 90% uniform with seed 42 (the "same small budget"): name -> (method, flag,
# its value in METHOD_ARGS or the PDPConfig default, the other values tried), in the order they run. The default's
# run is the 90u run itself. Hard movement's knob is where its scores start: from zero (the paper) it collapsed to
# chance at 90% in 600 steps (50.92), from the units' relative norms it reached 79.59 (seed 42), so the grid runs
# movement with `--movement_score_init magnitude`, pdp_hf's option, not the paper's (docs/results.md, "Comparing methods").
# Its mask depends only on the ranking of its scores, and from zero scores under Adam that ranking barely depends on
# the score learning rate, so the rate is not tuned.
TUNING = {
    "smart-tau": ("smart", "--smart_temperature_start", "1.0", ("0.3", "3.0")),
    "pdp-tau": ("pdp", "--temperature", "0.05", ("0.02", "0.2")),
    "smart-lr": ("smart", "--score_learning_rate", "0.01", ("0.003", "0.03")),
    "magnitude-schedule": ("magnitude", "--sparsity_schedule", "cubic", ("linear",)),
    "movement-init": ("movement", "--movement_score_init", "magnitude", ("zeros",)),
}
TUNE_FLAGS = ["--target_sparsity", "0.9", "--sparsity_distribution", "uniform"]
# setting -> (label, sparsity for the plot, demo flags, methods); in the order the grid runs them
SETTINGS = {
    "90u": ("90% unstructured, uniform", 0.9, ["--target_sparsity", "0.9", "--sparsity_distribution", "uniform"],
            ("dense", "magnitude", "movement", "pdp", "smart")),
    "90g": ("90% unstructured, global", 0.9, ["--target_sparsity", "0.9", "--sparsity_distribution", "global"],
            ("magnitude", "movement", "pdp", "smart")),
    "90l": ("90% unstructured, learned", 0.9, ["--target_sparsity", "0.9", "--sparsity_distribution", "learned"],
            ("movement", "smart")),
    "80u": ("80% unstructured, uniform", 0.8, ["--target_sparsity", "0.8", "--sparsity_distribution", "uniform"],
            ("magnitude", "movement", "pdp", "smart")),
    "80g": ("80% unstructured, global", 0.8, ["--target_sparsity", "0.8", "--sparsity_distribution", "global"],
            ("magnitude", "movement", "pdp", "smart")),
    "n50u": ("50% FFN neurons, uniform", 0.5, ["--granularity", "neuron", "--target_sparsity", "0.5",
                                               "--sparsity_distribution", "uniform"],
             ("magnitude", "movement", "pdp", "smart")),
    "hn50u": ("50% heads + 50% FFN neurons, uniform", 0.5, ["--granularity", "attention=head,ffn=neuron",
                                                            "--target_sparsity", "0.5", "--sparsity_distribution",
                                                            "uniform"],
              ("magnitude", "movement", "pdp", "smart")),
    "90ukd": ("90% unstructured, uniform, KD", 0.9, ["--target_sparsity", "0.9", "--sparsity_distribution", "uniform",
                                                     "--teacher_model_name_or_path", "outputs/compare/dense_s42/export"],
              ("magnitude", "pdp")),
    "90u3x": ("90% unstructured, uniform, 3x longer (1800 steps)", 0.9,
              ["--target_sparsity", "0.9", "--sparsity_distribution", "uniform"], ("dense", "magnitude", "pdp")),
}
# Settings that change the training itself, for every method of the setting and its own dense run: 3x the steps over
# 3x the sentences and 3x the warmup (one pass, the same schedule shape), to test whether the gap to dense at 90% is the
# short budget's.
TRAINING_FLAGS = {"90u3x": ["--max_steps", "1800", "--train_samples", "57600", "--warmup_steps", "90"]}


def tuning_runs(seed: int = SEEDS[0]) -> dict[str, tuple[str, str, int, list[str]]]:
    """The knob values other than each method's default, at 90% uniform (setting "tune")."""
    table = {}
    for method, flag, _, values in TUNING.values():
        for value in values:
            name = f"{method}_tune_{flag.strip('-')}{value}_s{seed}"
            argv = ["--output_dir", f"outputs/compare/{name}", "--seed", str(seed)] + METHOD_ARGS[method] + TUNE_FLAGS
            table[name] = ("tune", method, seed, [*argv, flag, value])
    return table


ORDER = ["90u", "tune", *[k for k in SETTINGS if k != "90u"]]  # what the grid runs first
SHARED_DENSE = ("90u", "dense")  # the dense runs every setting that keeps the recipe is compared with


def runs(settings: list[str], seeds=SEEDS) -> dict[str, tuple[str, str, int, list[str]]]:
    """name -> (setting, method, seed, demo argv), in the order they run: seed 42 of 90% uniform for every method,
    then the knob values, then the other seeds and settings. Dense is trained once per seed."""
    table = {}
    for setting in settings:
        if setting == "tune":
            table.update(tuning_runs())
            continue
        _, _, flags, methods = SETTINGS[setting]
        for seed in seeds:
            for method in methods:
                own_dense = method == "dense" and setting in TRAINING_FLAGS
                name = f"{method}_{setting}_s{seed}" if method != "dense" or own_dense else f"dense_s{seed}"
                argv = ["--output_dir", f"outputs/compare/{name}", "--seed", str(seed)] + METHOD_ARGS[method]
                argv += TRAINING_FLAGS.get(setting, [])
                table[name] = (setting, method, seed, argv if method == "dense" else argv + flags)
    return table


def priority(setting: str, method: str, seed: int) -> int:
    """The order of the grid, for a machine that runs about 12 runs per 3-hour session: every method at seed 42 of 90%
    uniform; the baselines' own knobs (magnitude's schedule, movement's score init); seeds 43/44 of 90% uniform for
    every pruning method; SMART with the learned distribution; the structured settings at seed 42 (the SMART vs
    magnitude goal; 50% neurons alone costs magnitude only half a point, heads and neurons together more);
    distillation at seed 42; seeds 43/44 of heads + neurons for magnitude and SMART (one seed left them 1.03 apart);
    every other setting at seed 42 (global, 80%); then what the comparison needs for three seeds everywhere (dense's
    seeds, seeds 43/44 of 80%/90% global and uniform); then dense, magnitude and PDP trained 3x longer at seed 42
    (does the gap to dense close?); then 50% neurons' other seeds for magnitude and SMART, movement on the learned and
    structured settings and the remaining knobs; then the rest."""
    first = seed == SEEDS[0]
    if setting == "90u" and first:
        return 0
    if setting == "tune":
        return 1 if method in ("magnitude", "movement") else 10
    if setting in TRAINING_FLAGS:  # the longer training
        return 9 if first else 11
    if setting == "90u":
        return 2 if method != "dense" else 8
    if setting in ("90g", "80u", "80g") and not first:
        return 8
    if setting == "90l" and first:
        return 3 if method == "smart" else 10
    if setting in ("n50u", "hn50u"):  # structured
        if first:
            return 4 if method != "movement" else 10
        if method in ("magnitude", "smart"):
            return 6 if setting == "hn50u" else 10
        return 11
    if first:
        return 5 if setting == "90ukd" else 7
    return 11


def available_methods() -> set[str]:
    """Methods of the pdp_hf that the runs will import (a fresh process, so code changed since start counts)."""
    code = "from pdp_hf.methods import METHODS; print(' '.join(METHODS))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    return set(out.stdout.split()) | {"dense"}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        dirty = subprocess.run(["git", "status", "--porcelain", "pdp_hf", "scripts", "benchmarks"], capture_output=True, text=True, cwd=ROOT)
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def run_one(name: str, argv: list[str], out: str, started=None) -> bool:
    """Train one run in a child process; True when its result file was written. `started(child)` is called once the
    child runs (the frontier holds its quiet lock over the child's first minutes)."""
    tmp = os.path.join(out, name + ".json.tmp")
    record = {"argv": argv, "commit": git_commit()}
    final = os.path.join(out, name + ".json")
    code = (  # the child writes and renames its own result, so a result survives an interrupted parent
        f"import json, os, sys; sys.path.insert(0, {SCRIPTS!r}); import demo; r = demo.main({argv!r}); "
        f"json.dump({{**r, **{record!r}}}, open({tmp!r}, 'w'), indent=2); os.replace({tmp!r}, {final!r})"
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    if started is not None:
        started(child)
    done = child.wait() == 0
    if not done:
        print(f"compare: {name} failed (see its log above); continuing", flush=True)
    return done


def load_results(out: str, table: dict) -> dict[str, dict]:
    results = {}
    for name in table:
        path = os.path.join(out, name + ".json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                results[name] = json.load(f)
    return results


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else float("nan")
    return mean, std


def command_of(argv: list[str]) -> str:
    return "python scripts/demo.py " + " ".join(a if " " not in a and "," not in a else repr(a) for a in argv)


def summary(out: str, settings: list[str]) -> dict[tuple[str, str], dict]:
    """(setting, method) -> {"accs": [...], "seeds": [...], "sparsity": s, "minutes": m, "argv": one run's argv}."""
    table = runs(settings)
    results = load_results(out, table)
    cells: dict[tuple[str, str], dict] = {}
    for name, (setting, method, seed, argv) in table.items():
        cell = cells.setdefault((setting, method), {"accs": [], "seeds": [], "minutes": [], "argv": argv})
        if name in results and not cell["accs"]:
            cell["argv"] = argv  # the exact command of the first seed that finished
        if name in results:
            r = results[name]
            cell["accs"].append(100 * r["accuracy"])
            cell["seeds"].append(seed)
            cell["minutes"].append(r["minutes"])
            cell["sparsity"] = r["sparsity"]
    return cells


def tuning_markdown(out: str) -> str:
    """One row per method and knob value at 90% uniform, seed 42 (the default's row is the 90u run)."""
    done = load_results(out, {**runs(["90u"], seeds=SEEDS[:1]), **tuning_runs()})
    lines = ["| method | knob | value | SST-2 accuracy (seed 42) |", "|---|---|---|---:|"]
    for method, flag, default, values in TUNING.values():
        for value in sorted((default, *values), key=lambda v: (not v.replace(".", "").isdigit(), v)):
            name = f"{method}_90u_s{SEEDS[0]}" if value == default else f"{method}_tune_{flag.strip('-')}{value}_s{SEEDS[0]}"
            acc = f"{100 * done[name]['accuracy']:.2f}" if name in done else "not run yet"
            lines.append(f"| {method} | `{flag}` | {value}{' (default)' if value == default else ''} | {acc} |")
    return "\n".join(lines) + "\n"


def markdown(out: str, settings: list[str]) -> str:
    settings = [s for s in settings if s != "tune"]
    cells = summary(out, settings)
    lines = [
        "SST-2 dev accuracy (872 sentences) of all-MiniLM-L6-v2 after `scripts/demo.py` (600 steps) with each method;",
        "mean ± sample standard deviation over the seeds that finished. Sparsity: zeros in the targeted encoder",
        "Linear weights. Built by `python benchmarks/compare_methods.py`; the exact command of each cell's first finished",
        "seed is shown (the other seeds differ in `--seed` and `--output_dir`). Minutes are wall time on the 2-core",
        "machine, inflated where other work shared the cores.",
        "",
        "| setting | method | seeds | SST-2 accuracy | per seed | sparsity | minutes/run | command (first seed) |",
        "|---|---|---:|---:|---|---:|---:|---|",
    ]
    for (setting, method), cell in cells.items():
        label = SETTINGS[setting][0] if method != "dense" else "dense (0%)"
        if method == "dense" and setting in TRAINING_FLAGS:
            label += ", " + SETTINGS[setting][0].split(", ")[-1]
        accs = cell["accs"]
        if not accs:
            lines.append(f"| {label} | {method} | 0 | not run yet | | | | |")
            continue
        mean, std = mean_std(accs)
        spread = f" ± {std:.2f}" if len(accs) > 1 else ""
        per_seed = ", ".join(f"{a:.2f}" for a in accs)
        argv = cell["argv"]
        lines.append(
            f"| {label} | {method} | {len(accs)} | {mean:.2f}{spread} | {per_seed} | {cell['sparsity']:.4f} | "
            f"{sum(cell['minutes']) / len(accs):.1f} | `{command_of(argv)}` |"
        )
    text = "\n".join(lines) + "\n"
    text += "\n" + differences_markdown(cells)
    return text + "\nEach method's own knob at 90% uniform, seed 42 (`--settings tune`):\n\n" + tuning_markdown(out)


def paired_difference(cell: dict, reference: dict) -> str:
    """Mean ± std of the per-seed differences cell - reference over the seeds both finished, and the paired t
    (mean / (std / sqrt(n))): two runs with the same seed share the data order and the classifier's init."""
    ref = dict(zip(reference.get("seeds", []), reference.get("accs", [])))
    diffs = [acc - ref[seed] for seed, acc in zip(cell["seeds"], cell["accs"]) if seed in ref]
    if not diffs:
        return ""
    mean, std = mean_std(diffs)
    if len(diffs) == 1:
        return f"{mean:+.2f} (1 seed)"
    t = f", t = {mean / (std / math.sqrt(len(diffs))):+.1f}" if std > 1e-6 else ""  # not float noise of equal gaps
    return f"{mean:+.2f} ± {std:.2f} ({len(diffs)} seeds{t})"


def differences_markdown(cells: dict) -> str:
    """Each pruning method against magnitude and against dense at the same seeds (dense: the setting's own dense run
    where the setting changes the training, else the shared one)."""
    lines = [
        "Differences in points, paired by seed (mean ± std of the per-seed differences; t = mean / (std / sqrt(n));",
        "the two-sided 5% level is |t| > 12.7 with 2 seeds and |t| > 4.3 with 3):",
        "",
        "| setting | method | minus magnitude | minus dense |",
        "|---|---|---:|---:|",
    ]
    for (setting, method), cell in cells.items():
        if method in ("dense", "magnitude") or not cell["accs"]:
            continue
        dense = cells.get((setting, "dense")) or cells.get(SHARED_DENSE, {})
        magnitude = cells.get((setting, "magnitude"), {})
        lines.append(f"| {SETTINGS[setting][0]} | {method} | {paired_difference(cell, magnitude)} | "
                     f"{paired_difference(cell, dense)} |")
    return "\n".join(lines) + "\n"


def plot(out: str, settings: list[str], path: str) -> None:
    """Accuracy vs sparsity, one line per method and distribution (unstructured settings), dense as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = summary(out, [s for s in settings if s != "tune"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    dense = cells.get(SHARED_DENSE, {}).get("accs", [])
    if dense:
        mean, std = mean_std(dense)
        ax.axhline(mean, color="black", lw=1, label=f"dense ({mean:.2f})")
        if len(dense) > 1:
            ax.axhspan(mean - std, mean + std, color="black", alpha=0.08)
    colors = {"magnitude": "tab:gray", "movement": "tab:orange", "pdp": "tab:blue", "smart": "tab:green"}
    lines = [(d, style, m, c) for d, style in (("uniform", "-o"), ("global", "--s"), ("learned", ":^")) for m, c in colors.items()]
    for k, (distribution, style, method, color) in enumerate(lines):
        dodge = (k - (len(lines) - 1) / 2) * 0.15  # side by side at each sparsity, so overlapping error bars stay readable
        points = []
        for setting in settings:
            if setting == "tune":
                continue
            label, sparsity, flags, _ = SETTINGS[setting]
            if "unstructured" not in label or distribution not in label or "KD" in label or setting in TRAINING_FLAGS:
                continue
            accs = cells.get((setting, method), {}).get("accs", [])
            if accs:
                mean, std = mean_std(accs)
                points.append((100 * sparsity + dodge, mean, 0.0 if math.isnan(std) else std))
        if points:
            points.sort()
            xs, ys, es = zip(*points)
            ax.errorbar(xs, ys, yerr=es, fmt=style, color=color, capsize=3, label=f"{method}, {distribution}")
    ax.set_xlabel("sparsity of the targeted encoder weights (%; methods drawn side by side)")
    ax.set_ylabel("SST-2 dev accuracy (%)")
    ax.set_title("all-MiniLM-L6-v2 on SST-2, 600 steps (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(out: str, settings: list[str]) -> str:
    text = markdown(out, settings)
    with open(out + ".md", "w", encoding="utf-8") as f:
        f.write(text)
    plot(out, settings, out + ".png")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "compare_minilm_sst2"))
    parser.add_argument("--settings", nargs="+", default=ORDER, choices=ORDER)
    parser.add_argument("--table_only", action="store_true", help="Only rebuild the table and plot.")
    parser.add_argument("--list", action="store_true", help="Print every run and its command in run order, then stop.")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    table = runs(args.settings)
    if args.list:
        done = load_results(args.out, table)
        for name in sorted(table, key=lambda n: priority(*table[n][:3])):  # the order the grid runs them in
            demo_argv = table[name][3]
            print(f"{'done' if name in done else 'todo'}  {name}: {command_of(demo_argv)}")
        return
    if not args.table_only:
        failed: set[str] = set()
        while True:
            # Re-read what exists and what the code offers before every run: results written by another process,
            # and methods added since the grid started, are picked up.
            methods, done = available_methods(), load_results(args.out, table)
            todo = [n for n, (_, m, _, _) in table.items() if n not in done and n not in failed and m in methods]
            todo.sort(key=lambda n: priority(*table[n][:3]))  # stable: table order within a priority
            if not todo:
                break
            name = todo[0]
            print(f"compare: running {name} ({len(todo)} runnable left) at {time.strftime('%H:%M:%S')}", flush=True)
            if not run_one(name, table[name][3], args.out):
                failed.add(name)
            write_outputs(args.out, args.settings)
    print(write_outputs(args.out, args.settings))


if __name__ == "__main__":
    main()
