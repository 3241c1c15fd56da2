"""How fast an export runs where users run it: PyTorch (as stored, and with `load_pruned(dir, optimize=True)`) and
ONNX Runtime, each against the dense model in the same runtime: for a `shrink=True` export, the same weights in the
original shapes with zeros where heads and neurons were cut out. `pdp-hf speed DIR --update_card` writes the table
into the model card."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time

import torch

from .atomic import atomic_write_text
from .dummy_inputs import dummy_inputs

CARD_SECTION = "## Measured speed"


@torch.no_grad()
def dense_shaped(model, directory: str):
    """`model` (loaded from a `shrink=True` export) rebuilt in the shapes before shrinking, with zeros in the cut-out
    heads and neurons: the zero-weight model a speedup is measured against. None when nothing was cut out (the stored
    model has the original shapes). The kept units come first: neither an FFN's output nor attention's depends on
    the order of its neurons or heads, as long as Q, K, V and the output projection agree."""
    import copy

    from .inference import _FFN_SIZE_ATTRS
    from .report import export_report
    from .shrink import SPEC_KEY
    from .targets import parts_of

    config = copy.deepcopy(model.config)
    if getattr(config, SPEC_KEY, None):  # per-layer: the config itself holds the original sizes
        delattr(config, SPEC_KEY)
        config.auto_map = None
        base = next(c for c in type(model).__mro__[1:] if c.__module__.startswith("transformers.models."))
    else:
        report = export_report(directory)
        rows = {name: row for name, row in (report or {}).get("modules", {}).items() if row.get("role") == "ffn_out"}
        if not rows:
            return None
        name, row = next(iter(rows.items()))  # FFN-out's inputs are the neurons (a gated FFN-in has 2 rows each)
        original, now = row["shape"][1], model.get_submodule(name).weight.shape[1]
        attr = next((a for a in _FFN_SIZE_ATTRS if getattr(model.config, a, None) == now), None)
        if original == now or attr is None:
            return None
        setattr(config, attr, original)
        base = type(model)
    padded = base(config)
    state = model.state_dict()
    full = {}
    for key, value in padded.state_dict().items():
        source = state[key]
        if source.shape != value.shape:  # each row chunk of a fused matrix (Q|K|V, value|gate) padded on its own
            parts = parts_of(model, key.rpartition(".")[0])
            value, step = torch.zeros_like(value), value.shape[0] // parts
            for i, chunk in enumerate(source.chunk(parts, dim=0)):
                value[(slice(i * step, i * step + chunk.shape[0]), *(slice(0, n) for n in chunk.shape[1:]))] = chunk
            source = value
        full[key] = source
    padded.load_state_dict(full)
    return padded.eval()


def _ort_session(path: str):
    """An ONNX Runtime CPU session with torch's thread count and no spinning: a spinning pool slows the PyTorch call
    timed after it 2-3x on a small machine."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _ort_runner(session, inputs: dict[str, torch.Tensor]):
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    return lambda: session.run(["logits"], feed)[0]


def _onnx_ways(directory: str, dense, scratch: str) -> dict:
    """'onnxruntime dense' and 'onnxruntime stored' sessions, or {} when onnxruntime is not installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return {}
    from .compressed import load_pruned
    from .shrink import ONNX_FILE, export_onnx

    stored = os.path.join(directory, ONNX_FILE)
    if not os.path.isfile(stored):
        stored = export_onnx(load_pruned(directory), os.path.join(scratch, "stored.onnx"))
    return {"onnxruntime dense": _ort_session(export_onnx(dense, os.path.join(scratch, "dense.onnx"))),
            "onnxruntime stored": _ort_session(stored)}


def measure_load_speeds(directory: str, batches=(1, 32), seq: int = 128, rounds: int = 5) -> list[dict]:
    """Median CPU latency, per batch size, of the export in PyTorch (as stored, and with `optimize=True`) and in ONNX
    Runtime (its `model.onnx`, when onnxruntime is installed), each against the dense model in the same runtime:
    for a shrunk export the same weights in the original shapes with zeros where heads and neurons were cut out.
    All ways run side by side (interleaved rounds), and every way's outputs are checked against the stored model's
    (atol 1e-4)."""
    import tempfile

    from .compressed import load_pruned

    stored = load_pruned(directory)
    dense = dense_shaped(stored, directory)
    models = {"pytorch dense": dense if dense is not None else stored, "pytorch stored": stored,
              "pytorch optimized": load_pruned(directory, optimize=True)}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        sessions = _onnx_ways(directory, models["pytorch dense"], scratch)
        for batch in batches:
            inputs = dummy_inputs(stored.config, batch, seq)
            runners = {way: (lambda m=model, x=inputs: m(**x).logits) for way, model in models.items()}
            runners.update({way: _ort_runner(session, inputs) for way, session in sessions.items()})
            with torch.inference_mode():
                reference = stored(**inputs).logits
                for way, run in runners.items():
                    diff = (torch.as_tensor(run()) - reference).abs().max().item()
                    if diff > 1e-4:
                        raise RuntimeError(f"The {way} model's logits differ from the stored model's by {diff}.")
                samples = {way: [] for way in runners}
                for _ in range(rounds):
                    for way, run in runners.items():
                        start = time.perf_counter()
                        run()
                        samples[way].append(time.perf_counter() - start)
            for way, values in samples.items():
                base = statistics.median(samples[("onnxruntime" if way.startswith("onnx") else "pytorch") + " dense"])
                ms = 1000 * statistics.median(values)
                rows.append({"batch": batch, "seq": seq, "way": way, "ms": ms, "speedup": base / statistics.median(values)})
    return rows


def format_speed(rows: list[dict], directory: str) -> str:
    ways = {
        "pytorch dense": "PyTorch, dense shapes (zeros in place of what was cut out; the baseline)",
        "pytorch stored": "PyTorch, `from_pretrained` (as stored)",
        "pytorch optimized": f'PyTorch, `load_pruned("{directory}", optimize=True)`',
        "onnxruntime dense": "ONNX Runtime, dense shapes (the baseline)",
        "onnxruntime stored": "ONNX Runtime, `model.onnx` (as stored)",
    }
    lines = [
        f"Measured with `pdp-hf speed {directory}` on {platform.processor() or platform.machine()} "
        f"({torch.get_num_threads()} threads, torch {torch.__version__}), fp32, median of interleaved runs; each "
        "speedup is against the dense model in the same runtime:",
        "",
        "| batch x seq | runtime and how it is loaded | ms / forward | speedup |",
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
    atomic_write_text(path, card)
    return path
