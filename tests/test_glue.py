"""GLUE loading from local TSV files in GLUE's original layout (written here, one small file per task)."""

import pytest

from pdp_hf.glue import GLUE_TASKS, is_regression, label_list, load_glue, load_glue_test, num_labels, split_names

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


# GLUE's test files: always a header (CoLA's too, unlike its train/dev), an example id (QQP: `id`), no labels.
TEST_ROWS = {
    "CoLA": (["index", "sentence"], ["The boy ran."]),
    "SST-2": (["index", "sentence"], ["a fine film"]),
    "MRPC": (["index", "#1 ID", "#2 ID", "#1 String", "#2 String"], ["1", "2", "He came.", "He arrived."]),
    "STS-B": (
        ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"],
        ["main", "f", "2012", "0", "none", "none", "A man sings.", "A man is singing."],
    ),
    "QQP": (["id", "question1", "question2"], ["Why?", "How?"]),
    "MNLI": (
        ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
         "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"],
        ["1", "1e", "gov", "(", "(", "(", "(", "It rains.", "It is wet."],
    ),
    "QNLI": (["index", "question", "sentence"], ["Who?", "Him."]),
    "RTE": (["index", "sentence1", "sentence2"], ["A b.", "B a."]),
    "WNLI": (["index", "sentence1", "sentence2"], ["A b.", "B a."]),
}
TEST_FILES = {"MNLI": {"test_matched.tsv": 5, "test_mismatched.tsv": 7}}  # rows per file; others: test.tsv


def write_test_files(root, folder, rows=3) -> dict:
    """GLUE-layout test file(s) as GLUE ships some files (byte-order mark, \\r\\n); returns {file name: rows}."""
    header, fields = TEST_ROWS[folder]
    counts = TEST_FILES.get(folder, {"test.tsv": rows})
    (root / folder).mkdir(parents=True, exist_ok=True)
    for name, n in counts.items():
        lines = [header] + [[str(i), *fields] for i in range(n)]
        body = "\ufeff" + "".join("\t".join(r) + "\r\n" for r in lines)
        (root / folder / name).write_bytes(body.encode("utf-8"))
    return counts


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


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_test_splits_load_unlabeled_with_ids(task, tmp_path):
    spec = GLUE_TASKS[task]
    counts = write_test_files(tmp_path, spec.folder, rows=4)
    data = load_glue_test(task, str(tmp_path))
    assert list(data) == split_names(task, "test") == (["test_matched", "test_mismatched"] if task == "mnli" else ["test"])
    for split, n in zip(data, counts.values()):
        assert data[split].column_names == [*spec.text_columns, "label", "idx"]
        assert data[split]["idx"] == list(range(n)) and set(data[split]["label"]) == {-1}
        first = data[split][0][spec.text_columns[0]]
        assert first == TEST_ROWS[spec.folder][1][-len(spec.text_columns)] and "\r" not in data[split][0][spec.text_columns[-1]]
    # the same through `splits`, and the default is still train + dev
    assert list(load_glue(task, str(tmp_path), splits=split_names(task, "test"))) == list(data)
    assert (label_list(task) is None) == is_regression(task)


def test_test_split_errors_are_clear(tmp_path):
    write_task(tmp_path, "RTE")
    assert set(load_glue("rte", str(tmp_path))) == {"train", "validation"}  # test.tsv not needed by default
    with pytest.raises(FileNotFoundError, match="test.tsv"):
        load_glue_test("rte", str(tmp_path))
    with pytest.raises(ValueError, match="no split"):
        load_glue("rte", str(tmp_path), splits=["test_matched"])
    (tmp_path / "RTE" / "test.tsv").write_text("index\tsentence1\tsentence2\nx\ta\tb\n")
    with pytest.raises(ValueError, match="test.tsv:2: index 'x'"):
        load_glue_test("rte", str(tmp_path))


def test_offline_without_local_folder_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="offline mode is on, no cached copy and no local GLUE folder.*Point --glue_dir \\(or GLUE_DIR"):
        load_glue("sst2", None)
