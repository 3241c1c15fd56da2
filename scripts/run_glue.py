#!/usr/bin/env python
"""Fine-tune and prune a model on a GLUE task: Transformers' run_glue.py workflow with PrunerTrainer.

    python scripts/run_glue.py --model_name_or_path bert-base-uncased --task_name mnli --target_sparsity 0.9 \\
        --output_dir out/mnli --max_steps 20000 --learning_rate 1e-4
    python scripts/run_glue.py scripts/configs/minilm_sst2_90.json     # everything from one JSON file

Data comes from the Hub (`load_dataset("nyu-mll/glue", task)`) or from a local GLUE folder in the original TSV
layout (`--glue_dir`). Metrics are the official GLUE metric of each task through `evaluate`, from a module bundled
with pdp_hf (works offline). `--teacher_model_name_or_path` adds knowledge distillation. The end of the run is an
export (`<output_dir>/export`) that loads with plain Transformers; `--push_to_hub` uploads that export only.
"""

from __future__ import annotations

import json
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
    TrainingArguments,
    set_seed,
)

from pdp_hf import PDPConfig, PrunerTrainer, sparsity_report
from pdp_hf.args import parse_script_args
from pdp_hf.glue import GLUE_TASKS, is_regression, load_glue, num_labels
from pdp_hf.hub import push_export, take_over_push
from pdp_hf.metrics import load_glue_metric

logger = logging.getLogger("run_glue")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Hub id or local folder of the model to prune."})
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
    model_args, data_args, training_args, pdp_config = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)
    task = data_args.task_name

    # Pushing happens once, from the finished export: never a checkpoint with dense weights.
    hub_model_id = take_over_push(training_args)

    # 1. Data: the task's splits, tokenized (dynamic padding in the collator).
    raw = load_glue(task, data_args.glue_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    text_columns = GLUE_TASKS[task].text_columns

    def tokenize(batch):
        texts = [batch[c] for c in text_columns]
        return tokenizer(*texts, truncation=True, max_length=data_args.max_seq_length)

    def prepare(split, limit):
        ds = raw[split]
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        return ds.map(tokenize, batched=True, remove_columns=list(text_columns), desc=f"Tokenizing {split}")

    train = prepare("train", data_args.max_train_samples)
    dev_splits = [s for s in raw if s.startswith("validation")]
    devs = {s: prepare(s, data_args.max_eval_samples) for s in dev_splits}

    # 2. Model (and optional teacher) with the task's head.
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path,
        num_labels=num_labels(task),
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    teacher = None
    if model_args.teacher_model_name_or_path:
        teacher = AutoModelForSequenceClassification.from_pretrained(
            model_args.teacher_model_name_or_path, num_labels=num_labels(task)
        )

    # 3. Train with pruning; the trainer finalizes the masks at the end of train().
    trainer = PrunerTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=devs[dev_splits[0]],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics_fn(task),
        pdp_config=pdp_config,
        teacher_model=teacher,
        distill_alpha=model_args.distill_alpha,
        distill_temperature=model_args.distill_temperature,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    # 4. Evaluate the pruned model on every dev set (MNLI: matched and mismatched).
    metrics = {}
    for split, ds in devs.items():
        prefix = "eval" if split == "validation" else f"eval_{split.removeprefix('validation_')}"
        metrics.update(trainer.evaluate(eval_dataset=ds, metric_key_prefix=prefix))
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)

    # 5. Export (and push) the pruned model with its card.
    report = sparsity_report(model, config=pdp_config)
    export_dir = os.path.join(training_args.output_dir, "export")
    command = "python scripts/run_glue.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    trainer.export_pruned(
        export_dir,
        overwrite=True,
        base_model=model_args.base_model_id or _hub_id(model_args.model_name_or_path),
        dataset="nyu-mll/glue",
        eval_results=eval_results(task, metrics),
        command=command,
    )
    summary = {
        "task": task,
        **{k: round(v, 4) for k, v in metrics.items() if _is_score(k)},
        "sparsity": round(report["total"]["sparsity"], 4),
        "export": export_dir,
    }
    print("run_glue: " + json.dumps(summary))
    if hub_model_id:
        print(f"run_glue: pushed {push_export(export_dir, hub_model_id, training_args.hub_token)}")
    return summary


METRIC_NAMES = ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr")


def _is_score(key: str) -> bool:
    return key.endswith(METRIC_NAMES)


def _hub_id(name_or_path: str) -> str | None:
    return None if os.path.isdir(name_or_path) else name_or_path


def eval_results(task: str, metrics: dict) -> list:
    """`model-index` entries for the card, one per dev set and metric."""
    from huggingface_hub import EvalResult

    results = []
    for key, value in metrics.items():
        if not _is_score(key):
            continue
        name = next(m for m in METRIC_NAMES if key.endswith(m))
        subset = key[len("eval_") : -len(name)].strip("_")
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
