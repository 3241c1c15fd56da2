"""`export_pruned`: a finalized, plain Transformers checkpoint with its pruning config, report and model card."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile

from torch import nn

from .atomic import atomic_write_text, recover_folder, replace_folder
from .compressed import save_compressed
from .config import PDPConfig
from .config_io import UNIT_COSTS_KEY
from .injection import _unwrap, finalize_pruning, get_pruner
from .model_card import render_model_card
from .report import REPORT_NAME, sparsity_report
from .shrink import ONNX_FILE, export_onnx, shrink_for_export, write_modeling_file


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
    onnx: bool = False,
) -> str:
    """Write a pruned model that loads with plain `AutoModelFor*.from_pretrained(output_dir)`.

    The folder holds safetensors weights (zeros baked in), `config.json`, the tokenizer or processor if given,
    `pruning_config.json`, `sparsity_report.json` and a model card (`README.md`). With `compressed=True` each
    pruned matrix is stored as a bitmask plus its nonzero values (`model.pdp-compressed.safetensors`, about 0.13x
    the dense size at 90% sparsity); such a folder loads with `pdp_hf.load_pruned(dir)`, bit-exactly, and needs
    pdp_hf. The default (zeros stored) loads anywhere. With `shrink=True`, pruned heads and FFN neurons are cut out
    of the matrices, any number per layer: the folder is smaller and runs faster. When only neurons were cut, the
    same number in every layer, the config's FFN size says it all and plain `from_pretrained` loads it; otherwise
    `config.json` records each layer's sizes and the folder carries `modeling_pdp_shrunk.py` (torch and
    transformers only, registered through `auto_map`), so `AutoModelFor*.from_pretrained(dir,
    trust_remote_code=True)` loads it without pdp_hf. With `onnx=True` the stored model is also written as
    `model.onnx` (dynamic batch and sequence axes), the layout ONNX Runtime and Optimum's `ORTModelFor*` read.
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
    recover_folder(output_dir)  # an earlier export over this one that was interrupted
    _check_destination(output_dir, overwrite)
    model = _unwrap(model)
    pruner = get_pruner(model)
    if pruner is not None:
        pdp_config = pdp_config or pruner.config
        model = finalize_pruning(copy.deepcopy(model))
    report = sparsity_report(model, config=pdp_config)
    shrunk = None
    if shrink:
        if pruner is None:
            model = copy.deepcopy(model)  # the caller's model keeps its shapes
        shrunk = shrink_for_export(model)
    if compressed and shrunk and "per_layer" in shrunk:
        raise ValueError("compressed=True with a per-layer shrunk model is not supported: the compressed loader builds "
                         "the model at its config's sizes. Export with shrink=True or compressed=True, not both.")

    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.staging-", dir=parent)
    try:
        if compressed:
            save_compressed(model, staging, list(report["modules"]))
        else:
            model.save_pretrained(staging)
        if shrunk and "per_layer" in shrunk:
            write_modeling_file(model, staging)
        if onnx:
            export_onnx(model, os.path.join(staging, ONNX_FILE))
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if pdp_config is not None:
            pdp_config.save_pretrained(staging)
        atomic_write_text(os.path.join(staging, REPORT_NAME), json.dumps(report, indent=2))
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
            shrunk_to=None if not shrunk or "per_layer" in shrunk else next(iter(shrunk.values())),
            per_layer=_per_layer_text(shrunk["per_layer"]) if shrunk and "per_layer" in shrunk else None,
            onnx=onnx,
            predicted_speedup=getattr(getattr(model, "config", None), "pdp_predicted_speedup", None),
            unit_costs=getattr(getattr(model, "config", None), UNIT_COSTS_KEY, None),
        )
        card.save(os.path.join(staging, "README.md"))
        replace_folder(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def _per_layer_text(sizes: dict) -> str:
    """'heads kept per layer 6/12, 5/12, ...; FFN neurons kept per layer 768/1536, ...'"""
    parts = []
    for key, label in (("heads", "heads"), ("neurons", "FFN neurons")):
        values = [f"{s[key][0]}/{s[key][1]}" for _, s in sorted(sizes.items()) if key in s]
        if values:
            parts.append(f"{label} kept per layer: {', '.join(values)}")
    return "; ".join(parts)
