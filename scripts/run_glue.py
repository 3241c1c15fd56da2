#!/usr/bin/env python
"""Fine-tune and prune a model on a GLUE task: Transformers' run_glue.py workflow with PrunerTrainer.

    python scripts/run_glue.py --model_name_or_path bert-base-uncased --task_name mnli --target_sparsity 0.9 \\
        --output_dir out/mnli --max_steps 20000 --learning_rate 1e-4 --do_train --do_eval
    python scripts/run_glue.py scripts/configs/minilm_sst2_90_pdp.json     # everything from one JSON file
    python scripts/run_glue.py --model_name_or_path out/mnli/export --task_name mnli --output_dir out/mnli-eval \\
        --do_eval --do_predict                                              # evaluate / predict with an export

As in Transformers, `--do_train`, `--do_eval` and `--do_predict` choose the phases (at least one). Training prunes
with PrunerTrainer and ends with an export (`<output_dir>/export`) that loads with plain Transformers;
`--push_to_hub` uploads that export only. Without `--do_train` the model is used as it is, with a plain `Trainer`.
`--do_eval` writes eval_results.json (MNLI: mismatched metrics end in `_mm`); `--do_predict` writes
`predict_results_{task}.txt` (MNLI: also `predict_results_mnli-mm.txt`) for the test set(s). A training run in an
output_dir with checkpoints resumes from the last one; a non-empty one without checkpoints needs
`--overwrite_output_dir`.

Data comes from the Hub (`load_dataset("nyu-mll/glue", task)`) or from a local GLUE folder in the original TSV
layout (`--glue_dir`). Metrics are the official GLUE metric of each task through `evaluate`, from a module bundled
with pdp_hf (works offline). `--teacher_model_name_or_path` adds knowledge distillation.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from dataclasses import dataclass, field

import numpy as np
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)

from pdp_hf import PDPConfig, PrunerTrainer
from pdp_hf.args import ExportArguments, parse_script_args
from pdp_hf.checkpoint import STATE_NAME
from pdp_hf.glue import GLUE_TASKS, is_regression, label_list, load_glue, num_labels, split_names
from pdp_hf.hub import take_over_push
from pdp_hf.metrics import load_glue_metric
from pdp_hf.report import model_sparsity
from pdp_hf.scripting import (
    checkpoint_to_resume,
    detect_last_checkpoint,
    ensure_output_dir,
    finish_training_run,
    log_summary,
    record_train_result,
    require_phase,
    setup_logging,
)

logger = logging.getLogger("run_glue")


@dataclass
class ModelArguments(ExportArguments):
    model_name_or_path: str = field(metadata={"help": "Hub id or local folder of the model to prune (or evaluate)."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Dense fine-tuned teacher for knowledge distillation (same task head)."}
    )
    distill_alpha: float = field(default=0.95, metadata={"help": "Weight of the distillation loss (task: 1 - alpha)."})
    distill_temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of the distillation loss."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialize a task head whose size differs from the task's labels."}
    )
    base_model_id: str | None = field(
        default=None, metadata={"help": "Hub id of the base model for the model card (default: model_name_or_path)."}
    )


@dataclass
class DataTrainingArguments:
    task_name: str = field(metadata={"help": f"GLUE task: {', '.join(sorted(GLUE_TASKS))}."})
    glue_dir: str | None = field(default=None, metadata={"help": "Local GLUE folder (TSV layout); None: the Hub."})
    max_seq_length: int = field(default=128, metadata={"help": "Longest tokenized input; longer ones are truncated."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many rows of each dev set."})
    max_predict_samples: int | None = field(
        default=None, metadata={"help": "Predict only this many rows of each test set."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train in a non-empty output_dir without checkpoints, and never resume from its checkpoints."},
    )

    def __post_init__(self):
        self.task_name = self.task_name.lower().replace("-", "")
        if self.task_name not in GLUE_TASKS:
            raise ValueError(f"--task_name {self.task_name!r} is not a GLUE task; choose one of {sorted(GLUE_TASKS)}.")


def parse_args(argv: list[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments, PDPConfig))
    return parse_script_args(parser, sys.argv[1:] if argv is None else argv)


def compute_metrics_fn(task: str):
    metric = load_glue_metric(task)

    def compute(p):
        preds = np.squeeze(p.predictions) if is_regression(task) else np.argmax(p.predictions, axis=-1)
        return metric.compute(predictions=preds, references=p.label_ids)

    return compute


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    model_args, data_args, training_args, pdp_config = parse_args(argv)
    require_phase(training_args)
    setup_logging(training_args, logger)
    task = data_args.task_name

    # Pushing happens once, from the finished export of a training run: never a checkpoint with dense weights.
    hub_model_id = take_over_push(training_args)
    if hub_model_id and not training_args.do_train:
        raise ValueError("--push_to_hub uploads the export that --do_train writes; add --do_train, or upload with "
                         "`huggingface-cli upload` instead.")
    last_checkpoint = detect_last_checkpoint(training_args, data_args.overwrite_output_dir, logger)
    set_seed(training_args.seed)

    # 1. Data: the splits the phases need, tokenized (dynamic padding in the collator).
    splits = (
        (["train"] if training_args.do_train else [])
        + (split_names(task, "dev") if training_args.do_eval else [])
        + (split_names(task, "test") if training_args.do_predict else [])
    )
    raw = load_glue(task, data_args.glue_dir, splits=splits)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    text_columns = GLUE_TASKS[task].text_columns

    def tokenize(batch):
        texts = [batch[c] for c in text_columns]
        return tokenizer(*texts, truncation=True, max_length=data_args.max_seq_length)

    limits = {"train": data_args.max_train_samples}
    limits.update({s: data_args.max_eval_samples for s in split_names(task, "dev")})
    limits.update({s: data_args.max_predict_samples for s in split_names(task, "test")})
    data = {}
    with training_args.main_process_first(desc="dataset map pre-processing"):
        for split, ds in raw.items():
            if limits[split] is not None:
                ds = ds.select(range(min(limits[split], len(ds))))
            data[split] = ds.map(tokenize, batched=True, remove_columns=list(text_columns), desc=f"Tokenizing {split}")
    dev_splits = [s for s in split_names(task, "dev") if s in data]

    # 2. Model (and optional teacher) with the task's head.
    if not training_args.do_train and os.path.isfile(os.path.join(model_args.model_name_or_path, STATE_NAME)):
        # a PrunerTrainer checkpoint holds the dense weights (and learned scores) beside its masks' state; plain
        # from_pretrained would evaluate the dense model
        raise ValueError(
            f"{model_args.model_name_or_path} is a PrunerTrainer checkpoint, whose masks are not in its weights. Export "
            f"it first (pdp-hf export {model_args.model_name_or_path} OUT), then evaluate OUT; or resume training "
            "with --do_train --resume_from_checkpoint."
        )
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path,
        num_labels=num_labels(task),
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    common = dict(
        model=model,
        args=training_args,
        eval_dataset=data[dev_splits[0]] if dev_splits else None,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics_fn(task),
    )
    if training_args.do_train:
        teacher = None
        if model_args.teacher_model_name_or_path:
            teacher = AutoModelForSequenceClassification.from_pretrained(
                model_args.teacher_model_name_or_path, num_labels=num_labels(task)
            )
        trainer = PrunerTrainer(
            train_dataset=data["train"],
            pdp_config=pdp_config,
            teacher_model=teacher,
            distill_alpha=model_args.distill_alpha,
            distill_temperature=model_args.distill_temperature,
            **common,
        )
    else:
        trainer = Trainer(**common)  # the model as it is (e.g. an export): no masks to apply

    # 3. Train with pruning; the trainer finalizes the masks at the end of train().
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=checkpoint_to_resume(training_args, last_checkpoint))
        record_train_result(trainer, train_result, train_samples=len(data["train"]))

    # 4. Evaluate on every dev set. MNLI, as in Transformers: matched as eval_*, mismatched as eval_*_mm.
    metrics = {}
    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        ensure_output_dir(trainer)
        for split in dev_splits:
            result = trainer.evaluate(eval_dataset=data[split])
            result["eval_samples"] = len(data[split])
            if split == "validation_mismatched":
                result = {k + "_mm": v for k, v in result.items()}
            trainer.log_metrics("eval", result)
            metrics.update(result)
        trainer.save_metrics("eval", metrics)

    # 5. Predict the test set(s) in GLUE's submission layout.
    predictions = []
    if training_args.do_predict:
        logger.info("*** Predict ***")
        predictions = predict(trainer, task, {s: data[s] for s in split_names(task, "test")})

    # 6. After training: export (and push) the pruned model with its card.
    summary = {"task": task, **{k: round(v, 4) for k, v in metrics.items() if _is_score(k)}}
    if predictions:
        summary["predictions"] = predictions
    if training_args.do_train:
        return finish_training_run(
            trainer,
            "run_glue",
            summary,
            command="python scripts/run_glue.py " + shlex.join(argv),
            base_model=model_args.base_model_id or _hub_id(model_args.model_name_or_path),
            dataset="nyu-mll/glue",
            eval_results=eval_results(task, metrics),
            hub_model_id=hub_model_id,
            hub_token=training_args.hub_token,
            logger=logger,
            shrink=model_args.export_shrink,
            onnx=model_args.export_onnx,
        )
    # An export shrunk to fewer FFN neurons holds no zeros for them; its own report counts them on the original shapes.
    summary["sparsity"] = round(model_sparsity(model, model_args.model_name_or_path, config=pdp_config), 4)
    return log_summary(logger, "run_glue", summary)


def predict(trainer, task: str, test_sets: dict) -> list[str]:
    """Write `predict_results_{task}.txt` (MNLI: also `predict_results_mnli-mm.txt`): a header `index\tprediction`,
    then one row per example, its id and the predicted label name (STS-B: the score, `%3.3f`). Returns the paths."""
    output_dir = ensure_output_dir(trainer)
    names = label_list(task)
    paths = []
    for split, ds in test_sets.items():
        name = "mnli-mm" if split == "test_mismatched" else task
        ids = ds["idx"] if "idx" in ds.column_names else list(range(len(ds)))
        # The labels are -1 (not public); Trainer would compute metrics against them.
        ds = ds.remove_columns([c for c in ("label", "idx") if c in ds.column_names])
        logits = trainer.predict(ds, metric_key_prefix="predict").predictions
        preds = logits.reshape(-1) if names is None else np.argmax(logits, axis=-1)
        path = os.path.join(output_dir, f"predict_results_{name}.txt")
        if trainer.is_world_process_zero():
            logger.info(f"***** Predict results {name} *****")
            with open(path, "w", encoding="utf-8") as writer:
                writer.write("index\tprediction\n")
                for index, item in zip(ids, preds):
                    writer.write(f"{index}\t{item:3.3f}\n" if names is None else f"{index}\t{names[int(item)]}\n")
        paths.append(path)
    return paths


METRIC_NAMES = ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr")


def _is_score(key: str) -> bool:
    return key.startswith("eval_") and key.removesuffix("_mm").endswith(METRIC_NAMES)


def _hub_id(name_or_path: str) -> str | None:
    return None if os.path.isdir(name_or_path) else name_or_path


def eval_results(task: str, metrics: dict) -> list:
    """`model-index` entries for the card, one per dev set and metric. Keys as this script writes them:
    `eval_<metric>` (MNLI: validation_matched) and, for MNLI, `eval_<metric>_mm` (validation_mismatched)."""
    from huggingface_hub import EvalResult

    results = []
    for key, value in metrics.items():
        if not _is_score(key):
            continue
        mismatched = key.endswith("_mm")
        name = key.removesuffix("_mm").removeprefix("eval_")
        subset = ("mismatched" if mismatched else "matched") if task == "mnli" else None
        results.append(
            EvalResult(
                task_type="text-regression" if is_regression(task) else "text-classification",
                dataset_type="nyu-mll/glue",
                dataset_name=f"GLUE {task.upper()}" + (f" ({subset})" if subset else ""),
                dataset_config=task,
                dataset_split="validation" + (f"_{subset}" if subset else ""),
                metric_type=name,
                metric_value=float(value),
            )
        )
    return results


if __name__ == "__main__":
    main()
