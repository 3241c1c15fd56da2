"""GLUE loading from local TSV files in GLUE's original layout (written here, one small file per task)."""

import pytest

from pdp_hf.glue import GLUE_TASKS, is_regression, load_glue, num_labels

ROWS = {
    "CoLA": (None, [["gj04", "1", "", "The boy ran."], ["gj04", "0", "*", "Ran boy the."]]),
    "SST-2": (["sentence", "label"], [["a fine film", "1"], ["dull", "0"]]),
    "MRPC": (["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], [["1", "1", "2", "He came.", "He arrived."]]),
    "STS-B": (
        ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"],
        [["0", "main", "f", "2012", "0", "none", "none", "A man sings.", "A man is singing.", "4.750"]],
    ),
    "QQP": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], [["0", "1", "2", "Why?", "How?", "0"]]),
    "MNLI": (
        ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
         "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"],
        [["0", "1", "1e", "gov", "(", "(", "(", "(", "It rains.", "It is wet.", "entailment", "entailment"],
         ["1", "2", "2c", "gov", "(", "(", "(", "(", "It rains.", "It is dry.", "contradiction", "contradiction"]],
    ),
    "QNLI": (["index", "question", "sentence", "label"], [["0", "Who?", "Him.", "not_entailment"]]),
    "RTE": (["index", "sentence1", "sentence2", "label"], [["0", "A b.", "B a.", "entailment"]]),
    "WNLI": (["index", "sentence1", "sentence2", "label"], [["0", "A b.", "B a.", "1"]]),
}


def write_task(root, folder):
    header, rows = ROWS[folder]
    files = ["train.tsv"] + (["dev_matched.tsv", "dev_mismatched.tsv"] if folder == "MNLI" else ["dev.tsv"])
    (root / folder).mkdir(parents=True)
    for name in files:
        lines = ([header] if header else []) + rows
        (root / folder / name).write_text("".join("\t".join(r) + "\n" for r in lines))


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_every_task_loads_with_hub_columns(task, tmp_path):
    spec = GLUE_TASKS[task]
    write_task(tmp_path, spec.folder)
    data = load_glue(task, str(tmp_path))
    expected_splits = {"train", "validation_matched", "validation_mismatched"} if task == "mnli" else {"train", "validation"}
    assert set(data) == expected_splits
    assert data["train"].column_names == [*spec.text_columns, "label"]
    label = data["train"][0]["label"]
    assert isinstance(label, float) if is_regression(task) else label in range(num_labels(task))


def test_label_mapping_follows_the_hub(tmp_path):
    write_task(tmp_path, "MNLI")
    write_task(tmp_path, "STS-B")
    assert load_glue("mnli", str(tmp_path))["train"]["label"] == [0, 2]  # entailment, contradiction
    assert load_glue("stsb", str(tmp_path))["train"]["label"] == [4.75]


def test_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="Unknown GLUE task 'mnli-m'"):
        load_glue("mnli-m", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train.tsv"):
        load_glue("rte", str(tmp_path))
    (tmp_path / "RTE").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "RTE" / name).write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ValueError, match="train.tsv:2: label 'maybe'"):
        load_glue("rte", str(tmp_path))


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_files_as_glue_ships_them(task, tmp_path):
    """A byte-order mark (GLUE's MRPC files have one), Windows line ends and quotes inside sentences (MNLI, QNLI)."""
    spec = GLUE_TASKS[task]
    header, rows = ROWS[spec.folder]
    text = spec.tsv_columns[0] if header else spec.tsv_columns[0]
    quoted = [list(r) for r in rows]
    position = header.index(text) if header else text
    quoted[0][position] = 'He said "no" and left, "twice".'
    files = ["train.tsv"] + (["dev_matched.tsv", "dev_mismatched.tsv"] if task == "mnli" else ["dev.tsv"])
    (tmp_path / spec.folder).mkdir()
    for name in files:
        lines = ([header] if header else []) + quoted
        body = "\ufeff" + "".join("\t".join(r) + "\r\n" for r in lines)
        (tmp_path / spec.folder / name).write_bytes(body.encode("utf-8"))
    data = load_glue(task, str(tmp_path))
    first = data["train"][0]
    assert first[spec.text_columns[0]] == 'He said "no" and left, "twice".'
    assert all("\r" not in str(v) for v in first.values()) and len(data["train"]) == len(rows)
