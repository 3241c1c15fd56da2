"""How fast an export runs, loaded each way it can be: as stored (plain Transformers) and with
`load_pruned(dir, optimize=True)`. `pdp-hf speed DIR --update_card` writes the table into the model card."""

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


def measure_load_speeds(directory: str, batches=(1, 32), seq: int = 128, rounds: int = 5) -> list[dict]:
    """Median CPU latency of the export loaded as stored and loaded with `optimize=True`, per batch size, measured
    side by side (interleaved); the optimized outputs are checked against the stored model's (atol 1e-4)."""
    from .compressed import load_pruned

    stored = load_pruned(directory)
    optimized = load_pruned(directory, optimize=True)
    rows = []
    for batch in batches:
        inputs = _inputs(stored.config, batch, seq)
        with torch.inference_mode():
            diff = (stored(**inputs).logits - optimized(**inputs).logits).abs().max().item()
        if diff > 1e-4:
            raise RuntimeError(f"The optimized model's logits differ from the stored model's by {diff}.")
        samples = {"stored": [], "optimized": []}
        for _ in range(rounds):
            samples["stored"].append(_median_seconds(stored, inputs, 1))
            samples["optimized"].append(_median_seconds(optimized, inputs, 1))
        base = statistics.median(samples["stored"])
        for way, values in samples.items():
            ms = 1000 * statistics.median(values)
            rows.append({"batch": batch, "seq": seq, "way": way, "ms": ms, "speedup": base / statistics.median(values)})
    return rows


def format_speed(rows: list[dict], directory: str) -> str:
    ways = {
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
