"""GLUE data from the Hub (`datasets.load_dataset("glue", task)`) or from a local folder in GLUE's original TSV layout.

Local files give the same columns and integer labels as the Hub's `glue` dataset, so scripts work the same
either way. `load_glue` reads train and dev (validation) splits by default; the test splits (labels not public:
-1, as on the Hub) come from `load_glue(task, glue_dir, splits=split_names(task, "test"))` or `load_glue_test`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass

from datasets import Dataset, DatasetDict


@dataclass(frozen=True)
class GlueTask:
    folder: str
    text_columns: tuple[str, ...]  # column names in the Hub dataset
    tsv_columns: tuple[object, ...]  # header names (or positions for headerless files) in the TSV
    label_column: object
    label_names: tuple[str, ...] | None  # None: regression; else TSV label strings in Hub label order
    class_names: tuple[str, ...] | None = None  # the Hub's ClassLabel names (what prediction files write)
    header: bool = True
    dev_files: tuple[tuple[str, str], ...] = (("validation", "dev.tsv"),)
    test_files: tuple[tuple[str, str], ...] = (("test", "test.tsv"),)
    test_tsv_columns: tuple[str, ...] | None = None  # header names in test.tsv when not those of train/dev
    index_column: str = "index"  # test.tsv's example id column (becomes `idx`, as on the Hub)


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        "CoLA", ("sentence",), (3,), 1, ("0", "1"), ("unacceptable", "acceptable"), header=False,
        test_tsv_columns=("sentence",),  # CoLA's train/dev have no header; its test.tsv has `index\tsentence`
    ),
    "sst2": GlueTask("SST-2", ("sentence",), ("sentence",), "label", ("0", "1"), ("negative", "positive")),
    "mrpc": GlueTask(
        "MRPC", ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality", ("0", "1"),
        ("not_equivalent", "equivalent"),
    ),
    "stsb": GlueTask("STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score", None),
    "qqp": GlueTask(
        "QQP", ("question1", "question2"), ("question1", "question2"), "is_duplicate", ("0", "1"),
        ("not_duplicate", "duplicate"), index_column="id",
    ),
    "mnli": GlueTask(
        "MNLI",
        ("premise", "hypothesis"),
        ("sentence1", "sentence2"),
        "gold_label",
        ("entailment", "neutral", "contradiction"),
        ("entailment", "neutral", "contradiction"),
        dev_files=(("validation_matched", "dev_matched.tsv"), ("validation_mismatched", "dev_mismatched.tsv")),
        test_files=(("test_matched", "test_matched.tsv"), ("test_mismatched", "test_mismatched.tsv")),
    ),
    "qnli": GlueTask(
        "QNLI", ("question", "sentence"), ("question", "sentence"), "label", ("entailment", "not_entailment"),
        ("entailment", "not_entailment"),
    ),
    "rte": GlueTask(
        "RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"),
        ("entailment", "not_entailment"),
    ),
    "wnli": GlueTask(
        "WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", ("0", "1"),
        ("not_entailment", "entailment"),
    ),
}


def _read_tsv(path: str, task: GlueTask, test: bool = False) -> Dataset:
    """Rows of one GLUE TSV file with the Hub's columns. Test files (always with a header) have no labels: the
    label is -1 as on the Hub, and their `index` (QQP: `id`) column becomes `idx`."""
    # utf-8-sig: GLUE's own MRPC files start with a byte-order mark; newline="" lets csv take \r\n line ends.
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    has_header = task.header or test
    header, body = (rows[0], rows[1:]) if has_header and rows else (None, rows)

    def col(key) -> int:
        if isinstance(key, int):
            return key
        if header is None or key not in header:
            raise ValueError(f"{path}: column {key!r} not found in header {header}.")
        return header.index(key)

    text_idx = [col(c) for c in ((test and task.test_tsv_columns) or task.tsv_columns)]
    label_idx = col(task.index_column if test else task.label_column)  # test files: the id takes the label's place
    data: dict[str, list] = {name: [] for name in (*task.text_columns, "label", *(["idx"] if test else []))}
    for line, row in enumerate(body, start=2 if has_header else 1):
        if not row:
            continue
        if len(row) <= max(*text_idx, label_idx):
            raise ValueError(f"{path}:{line}: expected at least {max(*text_idx, label_idx) + 1} tab-separated fields.")
        for name, i in zip(task.text_columns, text_idx):
            data[name].append(row[i])
        raw = row[label_idx]
        if test:
            data["label"].append(-1.0 if task.label_names is None else -1)
            try:
                data["idx"].append(int(raw))
            except ValueError:
                raise ValueError(f"{path}:{line}: {task.index_column} {raw!r} is not an integer.") from None
        elif task.label_names is None:
            data["label"].append(float(raw))
        elif raw in task.label_names:
            data["label"].append(task.label_names.index(raw))
        else:
            raise ValueError(f"{path}:{line}: label {raw!r} is not one of {list(task.label_names)}.")
    return Dataset.from_dict(data)


def split_names(task: str, kind: str) -> list[str]:
    """The task's split names of one kind, as on the Hub: "dev" gives `["validation"]` (MNLI: validation_matched,
    validation_mismatched), "test" gives `["test"]` (MNLI: test_matched, test_mismatched)."""
    spec = _spec(task)
    if kind not in ("dev", "test"):
        raise ValueError(f"kind must be 'dev' or 'test', got {kind!r}.")
    return [split for split, _ in (spec.dev_files if kind == "dev" else spec.test_files)]


def _spec(task: str) -> GlueTask:
    if task not in GLUE_TASKS:
        raise ValueError(f"Unknown GLUE task {task!r}; choose one of {sorted(GLUE_TASKS)}.")
    return GLUE_TASKS[task]


def load_glue(task: str, glue_dir: str | None = None, splits: Iterable[str] | None = None) -> DatasetDict:
    """Splits of a GLUE task; by default train and validation (MNLI: validation_matched and validation_mismatched).

    `splits` picks others by their Hub names, e.g. `splits=split_names(task, "test")` for the unlabeled test set(s)
    (`test`; MNLI: `test_matched`, `test_mismatched`), whose label is -1 and which keep the example id as `idx`.
    `glue_dir=None` loads from the Hugging Face Hub; otherwise `glue_dir/<TASK>/{train,dev,test}.tsv` are read
    (MNLI: `{dev,test}_{matched,mismatched}.tsv`).
    """
    spec = _spec(task)
    files = {"train": "train.tsv", **dict(spec.dev_files), **dict(spec.test_files)}
    wanted = ["train", *split_names(task, "dev")] if splits is None else list(splits)
    unknown = [s for s in wanted if s not in files]
    if unknown:
        raise ValueError(f"GLUE task {task!r} has no split(s) {unknown}; choose from {list(files)}.")
    if glue_dir is None:
        return DatasetDict(_from_hub(task, wanted))
    folder = os.path.join(glue_dir, spec.folder)
    missing = [files[s] for s in wanted if not os.path.isfile(os.path.join(folder, files[s]))]
    if missing:
        raise FileNotFoundError(f"GLUE task {task!r}: {missing} not found in {folder}.")
    tests = set(split_names(task, "test"))
    return DatasetDict({s: _read_tsv(os.path.join(folder, files[s]), spec, test=s in tests) for s in wanted})


def _from_hub(task: str, splits: list[str]) -> dict:
    from datasets import load_dataset

    hint = (
        f"GLUE {task!r} could not be loaded from the Hugging Face Hub ({{}}). Point --glue_dir (or GLUE_DIR for "
        "make demo) at a local copy in GLUE's TSV layout, e.g. ../shared/data/glue with SST-2/train.tsv and dev.tsv."
    )
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    try:
        hub = load_dataset("nyu-mll/glue", task)  # offline, this still finds a copy in the datasets cache
    except (OSError, ConnectionError) as err:  # no network, DNS, timeouts: datasets raises these after its retries
        reason = "offline mode is on, no cached copy and no local GLUE folder" if offline else f"{type(err).__name__}: {err}"
        raise FileNotFoundError(hint.format(reason)) from err
    return {split: hub[split] for split in splits}


def load_glue_test(task: str, glue_dir: str | None = None) -> DatasetDict:
    """The unlabeled test split(s) of a GLUE task: `load_glue(task, glue_dir, splits=split_names(task, "test"))`."""
    return load_glue(task, glue_dir, splits=split_names(task, "test"))


def label_list(task: str) -> list[str] | None:
    """Class names in label order, as the Hub's `glue` features name them (None for STS-B's regression)."""
    names = _spec(task).class_names
    return None if names is None else list(names)


def is_regression(task: str) -> bool:
    return GLUE_TASKS[task].label_names is None


def num_labels(task: str) -> int:
    names = GLUE_TASKS[task].label_names
    return 1 if names is None else len(names)
