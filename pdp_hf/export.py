"""`export_pruned`: a finalized, plain Transformers checkpoint with its pruning config, report and model card."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile

from torch import nn

from .compressed import save_compressed
from .config import PDPConfig
from .inference import shrink_neurons_for_config
from .injection import _unwrap, finalize_pruning, get_pruner
from .model_card import render_model_card
from .report import REPORT_NAME, sparsity_report


def _check_destination(output_dir: str, overwrite: bool) -> None:
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"Export destination {output_dir} exists and is not a folder.")
    if os.path.isdir(output_dir) and any(e.startswith("checkpoint-") or e == "trainer_state.json" for e in os.listdir(output_dir)):
        raise FileExistsError(
            f"Export destination {output_dir} holds training checkpoints; exporting there would delete them. "
            "Export into a folder of its own, e.g. os.path.join(output_dir, 'export')."
        )
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise FileExistsError(
            f"Export destination {output_dir} is not empty. Pass overwrite=True to replace it, or choose another folder."
        )


def _move_into_place(staging: str, output_dir: str) -> None:
    """Swap the finished staging folder in; a previous export stays intact until the new one is complete."""
    if os.path.isdir(output_dir):
        old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(output_dir))
        os.rename(output_dir, os.path.join(old, "export"))
        os.rename(staging, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, output_dir)


def export_pruned(
    model: nn.Module,
    output_dir: str,
    tokenizer=None,
    *,
    pdp_config: PDPConfig | None = None,
    overwrite: bool = False,
    base_model: str | None = None,
    dataset: str | None = None,
    eval_results: list | None = None,
    command: str | None = None,
    compressed: bool = False,
    shrink: bool = False,
) -> str:
    """Write a pruned model that loads with plain `AutoModelFor*.from_pretrained(output_dir)`.

    The folder holds safetensors weights (zeros baked in), `config.json`, the tokenizer or processor if given,
    `pruning_config.json`, `sparsity_report.json` and a model card (`README.md`). With `compressed=True` each
    pruned matrix is stored as a bitmask plus its nonzero values (`model.pdp-compressed.safetensors`, about 0.13x
    the dense size at 90% sparsity); such a folder loads with `pdp_hf.load_pruned(dir)`, bit-exactly, and needs
    pdp_hf. The default (zeros stored) loads anywhere. With `shrink=True`, pruned FFN neurons are cut out of the
    matrices and the config's FFN size shrinks (every layer must have lost the same number of neurons): the folder
    is smaller, runs faster and still loads with plain `from_pretrained`; pruned heads stay as zeros there (a
    Transformers config cannot express fewer heads), `pdp_hf.load_pruned(dir, optimize=True)` slices them at load.
    A model that still carries
    masks is finalized on a copy; the model passed in is left as it is. The export is written to a staging folder
    next to `output_dir` and renamed into place, so an interrupted export never damages a previous one.

    Example:

    ```python
    >>> export_pruned(model, "outputs/sparse-minilm", tokenizer, base_model="sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
    'outputs/sparse-minilm'

    ```
    """
    output_dir = os.path.abspath(output_dir)
    _check_destination(output_dir, overwrite)
    model = _unwrap(model)
    pruner = get_pruner(model)
    if pruner is not None:
        pdp_config = pdp_config or pruner.config
        model = finalize_pruning(copy.deepcopy(model))
    report = sparsity_report(model, config=pdp_config)
    shrunk_to = None
    if shrink:
        if pruner is None:
            model = copy.deepcopy(model)  # the caller's model keeps its shapes
        shrunk_to = shrink_neurons_for_config(model)

    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.staging-", dir=parent)
    try:
        if compressed:
            save_compressed(model, staging, list(report["modules"]))
        else:
            model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if pdp_config is not None:
            pdp_config.save_pretrained(staging)
        with open(os.path.join(staging, REPORT_NAME), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        card = render_model_card(
            config=pdp_config,
            report=report,
            architectures=[type(model).__name__],
            base_model=base_model,
            dataset=dataset,
            eval_results=eval_results,
            load_path=output_dir,
            command=command,
            compressed=compressed,
            shrunk_to=shrunk_to,
        )
        card.save(os.path.join(staging, "README.md"))
        _move_into_place(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir
