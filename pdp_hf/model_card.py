"""Model cards for exported pruned models, rendered with `huggingface_hub.ModelCard` from `templates/model_card.md`."""

from __future__ import annotations

import json
import os
from importlib import metadata

from huggingface_hub import ModelCard, ModelCardData

from .config import PDPConfig

TEMPLATE_PATH = os.path.join(os.path.dirname(__file__), "templates", "model_card.md")

_AUTO_CLASSES = {
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForImageClassification": "AutoModelForImageClassification",
    "ForTokenClassification": "AutoModelForTokenClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
    "ForMaskedLM": "AutoModelForMaskedLM",
}


def auto_class_for(architectures: list[str] | None) -> str:
    for suffix, auto in _AUTO_CLASSES.items():
        if architectures and architectures[0].endswith(suffix):
            return auto
    return "AutoModel"


def _versions() -> str:
    names = ("pdp-hf", "transformers", "torch", "huggingface_hub")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def _eval_text(eval_results: list | None) -> str:
    if not eval_results:
        return "No evaluation results were recorded for this export."
    rows = ["| dataset | split | metric | value |", "|---|---|---|---:|"]
    for r in eval_results:
        rows.append(f"| {r.dataset_name} | {r.dataset_split} | {r.metric_type} | {r.metric_value:.4f} |")
    return "\n".join(rows)


def render_model_card(
    *,
    config: PDPConfig | None,
    report: dict,
    architectures: list[str] | None,
    base_model: str | None = None,
    dataset: str | None = None,
    eval_results: list | None = None,
    model_name: str | None = None,
    load_path: str = "path/to/this/folder",
    command: str | None = None,
    compressed: bool = False,
    shrunk_to: int | None = None,
    per_layer: str | None = None,
    onnx: bool = False,
    predicted_speedup: float | None = None,
    unit_costs: dict | None = None,
    pipeline_tag: str | None = None,
) -> ModelCard:
    """Render the card. `eval_results` are `huggingface_hub.EvalResult`s and become `model-index` metadata."""
    from .methods import get_method
    from .report import format_report

    config = config or PDPConfig()
    method = get_method(config.method)
    if model_name is None:  # "<run>/export" is named after the run
        folder = os.path.normpath(load_path)
        model_name = os.path.basename(folder)
        if model_name == "export":
            model_name = os.path.basename(os.path.dirname(folder)) or model_name
    card_data = ModelCardData(
        base_model=base_model,
        datasets=[dataset] if dataset else None,
        library_name="transformers",
        tags=["pdp-hf", "pruning", "sparse", config.method],
        eval_results=eval_results or None,
        model_name=model_name if eval_results else None,
        pipeline_tag=pipeline_tag,
    )
    total = report["total"]
    return ModelCard.from_template(
        card_data,
        template_path=TEMPLATE_PATH,
        model_name=model_name,
        summary=(
            f"A {100 * total['sparsity']:.0f}% sparse model pruned during fine-tuning with "
            f"[pdp_hf](https://pypi.org/project/pdp-hf/) ({config.method}, {config.granularity})."
        ),
        total_sparsity=total["sparsity"],
        total_zeros=total["zeros"],
        total_numel=total["numel"],
        num_modules=len(report["modules"]),
        model_parameters=report["model"]["parameters"],
        model_zero_fraction=report["model"]["zeros_in_targets_over_all_parameters"],
        compressed=compressed,
        shrunk_to=shrunk_to,
        per_layer=per_layer,
        onnx=onnx,
        predicted_speedup=predicted_speedup,
        unit_costs_text=None if not unit_costs else (
            f"dense forward {1000 * unit_costs['dense']:.2f} ms; saved per head "
            f"{1000 * unit_costs.get('head', 0):.4f} ms, per neuron {1000 * unit_costs.get('neuron', 0):.5f} ms"
            + (f"; timings of the shrunk shapes calibrate them by {unit_costs['calibration']:.3f}"
               if "calibration" in unit_costs else "")),
        ort_class=auto_class_for(architectures).replace("AutoModel", "ORTModel", 1),
        auto_class=auto_class_for(architectures),
        load_path=load_path,
        base_model_text=f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "not recorded",
        dataset_text=dataset or "not recorded",
        method_text=method.description or config.method,
        method_settings=method.settings_text(config) or "none",
        config=config,
        config_json=json.dumps(config.to_dict(), indent=2, sort_keys=True),
        convention=report["convention"],
        eval_text=_eval_text(eval_results),
        sparsity_table=format_report(report),
        command_text=f"```bash\n{command}\n```" if command else "The training command was not recorded.",
        versions=_versions(),
    )
