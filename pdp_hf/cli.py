"""`pdp-hf` command line: inspect sparsity and turn training checkpoints into exports.

    pdp-hf report DIR [--plot X.png]  per-layer sparsity of any checkpoint (exported, plain, or mid-training)
    pdp-hf export CHECKPOINT OUT      finalize a PrunerTrainer checkpoint into a plain Transformers export
                                      (--shrink: cut pruned heads and neurons out; --onnx: also model.onnx;
                                      --compressed: bitmask format)
    pdp-hf speed EXPORT               CPU latency against dense, in PyTorch and ONNX Runtime (--update_card)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .config import PRUNING_CONFIG_NAME, PDPConfig
from .injection import STATE_NAME


def _load_pruning(path: str):
    """The model of a folder; a mid-training checkpoint gets its masks and pruning state back."""
    from .compressed import load_pruned
    from .injection import apply_pruning, get_pruner

    config = PDPConfig.from_pretrained(path) if os.path.isfile(os.path.join(path, PRUNING_CONFIG_NAME)) else None
    checkpoint = config is not None and os.path.isfile(os.path.join(path, STATE_NAME))
    model = _load_quietly(path) if checkpoint else load_pruned(path)
    if config is not None and os.path.isfile(os.path.join(path, STATE_NAME)):
        apply_pruning(model, config)
        pruner = get_pruner(model)
        pruner.load_state(path)
        trainer_state = os.path.join(path, "trainer_state.json")
        if not pruner.hardened and os.path.isfile(trainer_state):
            # where the schedule stood: the zeros in force for the checkpoint's next optimizer step
            with open(trainer_state, encoding="utf-8") as f:
                state = json.load(f)
            pruner.set_total_steps(state["max_steps"])
            pruner.step(state["global_step"])
    return model, config


def _load_quietly(path: str):
    """`load_pruned` of a training checkpoint without Transformers' report of the `pdp_scores.*` keys as unexpected:
    `Pruner.load_state` puts them back into the scores right after."""
    from transformers.utils import logging as hf_logging

    from .compressed import load_pruned

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return load_pruned(path)
    finally:
        hf_logging.set_verbosity(level)


def cmd_report(args) -> int:
    from .report import format_report, sparsity_report

    model, config = _load_pruning(args.path)
    report = sparsity_report(model, config=config)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        print(f"\n{report['convention']}.")
    if args.plot:
        from .report import plot_report

        name = os.path.basename(os.path.normpath(args.path))
        print(f"plot: {plot_report(report, args.plot, title=f'{name}: sparsity by layer and module role')}")
    return 0


def cmd_export(args) -> int:
    from transformers import AutoProcessor, AutoTokenizer

    from .export import export_pruned
    from .injection import get_pruner

    model, config = _load_pruning(args.checkpoint)
    card: dict = {}
    if get_pruner(model) is None:
        if config is None:
            raise SystemExit(
                f"{args.checkpoint} holds no {STATE_NAME}: it is not a PrunerTrainer checkpoint (nor a pdp_hf export "
                f"with {PRUNING_CONFIG_NAME})."
            )
        card = _card_metadata(args.checkpoint)  # an export, written again (e.g. --shrink): keep what its card says
    processor = None
    for loader in (AutoTokenizer, AutoProcessor):
        try:
            processor = loader.from_pretrained(args.checkpoint)
            break
        except (OSError, ValueError, KeyError):
            continue
    out = export_pruned(
        model, args.output_dir, processor, pdp_config=config, overwrite=args.overwrite,
        base_model=args.base_model or card.get("base_model"), dataset=card.get("dataset"),
        eval_results=card.get("eval_results"), shrink=args.shrink, compressed=args.compressed, onnx=args.onnx,
        command="pdp-hf " + " ".join(sys.argv[1:]) if card else None,
    )
    print(f"exported {args.checkpoint} -> {out}")
    return 0


def _card_metadata(folder: str) -> dict:
    """base_model, dataset and eval results recorded in an export's model card (empty when it has none)."""
    from huggingface_hub import ModelCard

    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        return {}
    data = ModelCard.load(path).data
    datasets = data.datasets or []
    return {"base_model": data.base_model, "dataset": datasets[0] if datasets else None, "eval_results": data.eval_results}


def cmd_speed(args) -> int:
    from transformers import AutoConfig

    from .speed import format_speed, measure_load_speeds, update_card

    limit = getattr(AutoConfig.from_pretrained(args.path), "max_position_embeddings", None)
    if limit is not None and args.seq > limit:
        print(f"pdp-hf speed: error: --seq {args.seq} is longer than this model's {limit} positions; use at most {limit}.",
              file=sys.stderr)
        return 2
    text = format_speed(measure_load_speeds(args.path, args.batch, args.seq, args.rounds), args.path)
    print(text)
    if args.update_card:
        print(f"card: {update_card(args.path, text)}")
    return 0


def _positive(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a whole number >= 1, not {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} takes a whole number >= 1, not {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdp-hf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="per-layer sparsity table of a checkpoint folder")
    report.add_argument("path")
    report.add_argument("--json", action="store_true", help="print the full report as JSON")
    report.add_argument("--plot", metavar="PNG", default=None, help="also write a PNG plot of sparsity by layer and role")
    report.set_defaults(func=cmd_report)
    export = sub.add_parser(
        "export", help="finalize a training checkpoint into a plain Transformers export, or write an export again "
        "(e.g. with --shrink)"
    )
    export.add_argument("checkpoint")
    export.add_argument("output_dir")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    export.add_argument("--base_model", default=None, help="Hub id of the base model, for the model card")
    export.add_argument("--shrink", action="store_true", help="cut pruned heads and FFN neurons out (any count per "
                        "layer; per-layer sizes load with trust_remote_code=True)")
    export.add_argument("--onnx", action="store_true", help="also write model.onnx (ONNX Runtime, Optimum)")
    export.add_argument("--compressed", action="store_true", help="bitmask + values format (loads with pdp_hf)")
    export.set_defaults(func=cmd_export)
    speed = sub.add_parser("speed", help="CPU latency of an export as stored and with load_pruned(optimize=True)")
    speed.add_argument("path")
    speed.add_argument("--batch", type=_positive("--batch"), nargs="+", default=[1, 32])
    speed.add_argument("--seq", type=_positive("--seq"), default=128, help="tokens per example (text models)")
    speed.add_argument("--rounds", type=_positive("--rounds"), default=5)
    speed.add_argument("--update_card", action="store_true", help="write the table into the export's README.md")
    speed.set_defaults(func=cmd_speed)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .compressed import check_model_folder

    args = build_parser().parse_args(argv)
    folder = getattr(args, "path", None) or getattr(args, "checkpoint", None)
    try:  # a refused input (missing folder, damaged or changed file): one line and exit code 2, not a traceback
        check_model_folder(folder)
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"pdp-hf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
