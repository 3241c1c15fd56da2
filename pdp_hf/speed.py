"""How fast an export runs, loaded each way it can be: as stored (plain Transformers) and with
`load_pruned(dir, optimize=True)`, against the model it came from: for a `shrink=True` export, the same weights in
the original (dense) shapes with zeros where neurons were cut out. `pdp-hf speed DIR --update_card` writes the
table into the model card."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time

import torch

CARD_SECTION = "## Measured speed"


def _inputs(config, batch: int, seq: int) -> dict[str, torch.Tensor]:
    if getattr(config, "vocab_size", None):
        ids = torch.randint(0, config.vocab_size, (batch, seq))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    size = config.image_size
    return {"pixel_values": torch.randn(batch, config.num_channels, size, size)}


def _median_seconds(model, inputs, rounds: int) -> float:
    with torch.inference_mode():
        model(**inputs)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def dense_shaped(model, directory: str):
    """`model` (loaded from a `shrink=True` export) rebuilt in the shapes before shrinking, with zeros in the cut-out
    neurons: the zero-weight model a speedup is measured against. None when nothing was cut out (the stored model
    has the original shapes). The kept neurons come first: an FFN's output does not depend on its neurons' order."""
    import copy

    from .inference import _FFN_SIZE_ATTRS
    from .report import export_report

    report = export_report(directory)
    if report is None:
        return None
    rows = {name: row for name, row in report["modules"].items() if row.get("role") == "ffn_in"}
    if not rows:
        return None
    name, row = next(iter(rows.items()))
    original, now = row["shape"][0], model.get_submodule(name).weight.shape[0]
    attr = next((a for a in _FFN_SIZE_ATTRS if getattr(model.config, a, None) == now), None)
    if original == now or attr is None:
        return None
    config = copy.deepcopy(model.config)
    setattr(config, attr, original)
    padded = type(model)(config)
    state = model.state_dict()
    full = {}
    for key, value in padded.state_dict().items():
        source = state[key]
        if source.shape != value.shape:
            value = torch.zeros_like(value)
            value[tuple(slice(0, n) for n in source.shape)] = source
            source = value
        full[key] = source
    padded.load_state_dict(full)
    return padded.eval()


def measure_load_speeds(directory: str, batches=(1, 32), seq: int = 128, rounds: int = 5) -> list[dict]:
    """Median CPU latency of the export loaded as stored and loaded with `optimize=True` (and, for a shrunk export,
    of the dense-shaped zero-weight model it came from, the baseline of the speedups), per batch size, measured side
    by side (interleaved); every way's outputs are checked against the stored model's (atol 1e-4)."""
    from .compressed import load_pruned

    stored = load_pruned(directory)
    models = {"stored": stored, "optimized": load_pruned(directory, optimize=True)}
    dense = dense_shaped(stored, directory)
    if dense is not None:
        models = {"dense-shaped": dense, **models}
    rows = []
    for batch in batches:
        inputs = _inputs(stored.config, batch, seq)
        with torch.inference_mode():
            reference = stored(**inputs).logits
            for way, model in models.items():
                diff = (model(**inputs).logits - reference).abs().max().item()
                if diff > 1e-4:
                    raise RuntimeError(f"The {way} model's logits differ from the stored model's by {diff}.")
        samples = {way: [] for way in models}
        for _ in range(rounds):
            for way, model in models.items():
                samples[way].append(_median_seconds(model, inputs, 1))
        base = statistics.median(samples[next(iter(models))])
        for way, values in samples.items():
            ms = 1000 * statistics.median(values)
            rows.append({"batch": batch, "seq": seq, "way": way, "ms": ms, "speedup": base / statistics.median(values)})
    return rows


def format_speed(rows: list[dict], directory: str) -> str:
    ways = {
        "dense-shaped": "the original shapes, zeros in the cut-out neurons (baseline)",
        "stored": "`from_pretrained` (as stored)",
        "optimized": f'`load_pruned("{directory}", optimize=True)`',
    }
    lines = [
        f"Measured with `pdp-hf speed {directory}` on {platform.processor() or platform.machine()} "
        f"({torch.get_num_threads()} threads, torch {torch.__version__}), fp32, median of interleaved runs:",
        "",
        "| batch x seq | how it is loaded | ms / forward | speedup |",
        "|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['batch']} x {r['seq']} | {ways[r['way']]} | {r['ms']:.1f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def update_card(directory: str, text: str) -> str:
    """Replace (or append) the card's measured-speed section."""
    path = os.path.join(directory, "README.md")
    with open(path, encoding="utf-8") as f:
        card = f.read()
    section = f"{CARD_SECTION}\n\n{text}\n"
    pattern = re.compile(rf"^{re.escape(CARD_SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    card = pattern.sub(lambda _: section + "\n", card) if pattern.search(card) else card.rstrip("\n") + "\n\n" + section
    with open(path, "w", encoding="utf-8") as f:
        f.write(card)
    return path
