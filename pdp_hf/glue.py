"""GLUE data from the Hub (`datasets.load_dataset("glue", task)`) or from a local folder in GLUE's original TSV layout.

Local files give the same columns and integer labels as the Hub's `glue` dataset, so scripts work the same
either way. Only train and dev (validation) splits are read: GLUE's test labels are not public.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

from datasets import Dataset, DatasetDict


@dataclass(frozen=True)
class GlueTask:
    folder: str
    text_columns: tuple[str, ...]  # column names in the Hub dataset
    tsv_columns: tuple[object, ...]  # header names (or positions for headerless files) in the TSV
    label_column: object
    label_names: tuple[str, ...] | None  # None: regression; else TSV label strings in Hub label order
    header: bool = True
    dev_files: tuple[tuple[str, str], ...] = (("validation", "dev.tsv"),)


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("CoLA", ("sentence",), (3,), 1, ("0", "1"), header=False),
    "sst2": GlueTask("SST-2", ("sentence",), ("sentence",), "label", ("0", "1")),
    "mrpc": GlueTask("MRPC", ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality", ("0", "1")),
    "stsb": GlueTask("STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score", None),
    "qqp": GlueTask("QQP", ("question1", "question2"), ("question1", "question2"), "is_duplicate", ("0", "1")),
    "mnli": GlueTask(
        "MNLI",
        ("premise", "hypothesis"),
        ("sentence1", "sentence2"),
        "gold_label",
        ("entailment", "neutral", "contradiction"),
        dev_files=(("validation_matched", "dev_matched.tsv"), ("validation_mismatched", "dev_mismatched.tsv")),
    ),
    "qnli": GlueTask("QNLI", ("question", "sentence"), ("question", "sentence"), "label", ("entailment", "not_entailment")),
    "rte": GlueTask("RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", ("entailment", "not_entailment")),
    "wnli": GlueTask("WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", ("0", "1")),
}


def _read_tsv(path: str, task: GlueTask) -> Dataset:
    # utf-8-sig: GLUE's own MRPC files start with a byte-order mark; newline="" lets csv take \r\n line ends.
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = (rows[0], rows[1:]) if task.header else (None, rows)

    def col(key) -> int:
        if isinstance(key, int):
            return key
        if header is None or key not in header:
            raise ValueError(f"{path}: column {key!r} not found in header {header}.")
        return header.index(key)

    text_idx = [col(c) for c in task.tsv_columns]
    label_idx = col(task.label_column)
    data: dict[str, list] = {name: [] for name in (*task.text_columns, "label")}
    for line, row in enumerate(body, start=2 if task.header else 1):
        if not row:
            continue
        if len(row) <= max(*text_idx, label_idx):
            raise ValueError(f"{path}:{line}: expected at least {max(*text_idx, label_idx) + 1} tab-separated fields.")
        for name, i in zip(task.text_columns, text_idx):
            data[name].append(row[i])
        raw = row[label_idx]
        if task.label_names is None:
            data["label"].append(float(raw))
        elif raw in task.label_names:
            data["label"].append(task.label_names.index(raw))
        else:
            raise ValueError(f"{path}:{line}: label {raw!r} is not one of {list(task.label_names)}.")
    return Dataset.from_dict(data)


def load_glue(task: str, glue_dir: str | None = None) -> DatasetDict:
    """Train and validation split(s) of a GLUE task (MNLI: validation_matched and validation_mismatched).

    `glue_dir=None` loads from the Hugging Face Hub; otherwise `glue_dir/<TASK>/{train,dev}.tsv` are read.
    """
    if task not in GLUE_TASKS:
        raise ValueError(f"Unknown GLUE task {task!r}; choose one of {sorted(GLUE_TASKS)}.")
    spec = GLUE_TASKS[task]
    if glue_dir is None:
        from datasets import load_dataset

        hub = load_dataset("nyu-mll/glue", task)
        return DatasetDict({k: v for k, v in hub.items() if k != "test" and not k.startswith("test_")})
    folder = os.path.join(glue_dir, spec.folder)
    splits = {"train": "train.tsv", **dict(spec.dev_files)}
    missing = [f for f in splits.values() if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(f"GLUE task {task!r}: {missing} not found in {folder}.")
    return DatasetDict({split: _read_tsv(os.path.join(folder, f), spec) for split, f in splits.items()})


def is_regression(task: str) -> bool:
    return GLUE_TASKS[task].label_names is None


def num_labels(task: str) -> int:
    names = GLUE_TASKS[task].label_names
    return 1 if names is None else len(names)
