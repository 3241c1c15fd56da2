"""Pruned models that run faster: cut out pruned structure, multiply sparse weights with sparse kernels.

Zeros alone give no speedup. `optimize_for_inference` turns a finalized (or exported) pruned model into one whose
outputs equal the zero-weight model's and that does less work:

- `"slice"`: FFN neurons and attention heads whose weights are all zero are removed from the matrices (per layer;
  layers may keep different numbers). Works on every device and dtype.
- `"csr"`: on CPU, each targeted Linear whose density makes it worth it multiplies with a `torch.sparse_csr`
  weight, for calls small enough that the sparse kernel wins (measured on this machine at optimize time, per
  layer shape and density; larger calls take the dense path).
- `"semi-structured"`: 2:4-sparse weights become `torch.sparse.to_sparse_semi_structured` tensors (CUDA, compute
  capability >= 8.0, fp16/bf16).
- `"auto"`: slice whatever structure is removable, then on CPU `csr` for the layers where the measurement says it
  wins, on a capable GPU `semi-structured` for the 2:4 layers whose shapes measured faster there; nothing that
  loses. (On an H200 with torch 2.11, 2:4 lost to dense at every BERT shape measured, so `auto` keeps them dense.)
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .attached import get_pruner
from .layers import role_map
from .slicing import (  # noqa: F401  (removable_*, slice_structure: part of this module's face)
    _keep_at_least_one,
    _replace,
    removable_heads,
    removable_neurons,
    slice_structure,
)
from .targets import find_targets

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "slice", "csr", "semi-structured")


# -- CSR (CPU, unstructured sparsity) -------------------------------------------------------------------------------
TOKEN_GRID = (1, 8, 32, 128, 256, 512, 1024, 2048, 4096)
_CALIBRATION_MARGIN = 0.9  # CSR must take at most 90% of the dense time to be used (noise margin: never slower)


class CSRLinear(nn.Module):
    """A Linear that multiplies with a `torch.sparse_csr` copy of its weight for calls of at most `max_tokens`
    rows, and with the dense weight above (where the sparse kernel loses). `weight` and `bias` stay the module's
    parameters under their usual names, so the state_dict is unchanged."""

    def __init__(self, linear: nn.Linear, max_tokens: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.requires_grad_(False)  # inference only: the CSR copy would not follow weight updates
        self.max_tokens = int(max_tokens)
        self.register_buffer("weight_csr", _to_csr(linear.weight), persistent=False)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows = input.numel() // self.in_features
        if rows > self.max_tokens or input.device.type != "cpu":
            return nn.functional.linear(input, self.weight, self.bias)
        flat = input.reshape(rows, self.in_features).to(self.weight_csr.dtype)
        # (W x^T)^T with the bias folded into addmm: the form MKL's CSR kernel runs fastest here.
        bias = self.bias[:, None] if self.bias is not None else torch.zeros((), dtype=flat.dtype)
        out = torch.addmm(bias, self.weight_csr, flat.t()).t()
        return out.reshape(*input.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        density = self.weight_csr.values().numel() / max(self.weight.numel(), 1)
        return f"in_features={self.in_features}, out_features={self.out_features}, density={density:.3f}, max_tokens={self.max_tokens}"


def _to_csr(weight: torch.Tensor) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return weight.detach().to_sparse_csr()


def _time(fn, repeats: int = 5) -> float:
    import time

    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def csr_crossover(weight: torch.Tensor, tokens: tuple[int, ...] = TOKEN_GRID) -> int:
    """Measured here and now: the largest token count up to which the CSR product of `weight` beats the dense one
    (every smaller count in `tokens` winning too, by the margin `_CALIBRATION_MARGIN`); 0 when it never does."""
    csr = _to_csr(weight)
    bias = torch.zeros(weight.shape[0], 1, dtype=weight.dtype)
    best = 0
    for count in tokens:
        x = torch.randn(count, weight.shape[1], dtype=weight.dtype)
        dense = _time(lambda x=x: nn.functional.linear(x, weight))
        sparse = _time(lambda x=x: torch.addmm(bias, csr, x.t()))
        if sparse > _CALIBRATION_MARGIN * dense:
            break
        best = count
    return best


def _csr_candidates(model: nn.Module) -> list[str]:
    names = find_targets(model, None)
    return [n for n in names if type(model.get_submodule(n)) is nn.Linear]


@torch.no_grad()
def apply_csr(model: nn.Module, max_density: float = 0.35, calibrate: bool = True) -> dict[str, int]:
    """Turn each targeted CPU Linear of density <= `max_density` into a `CSRLinear`, where measured worth it.

    The crossover (largest tokens per call at which CSR wins) is measured once per (shape, density to 0.05) on this
    machine with the model's own weights; layers where CSR never wins stay dense. With `calibrate=False` every
    such layer uses CSR for calls of up to 128 tokens (no measurement). Returns {module name: max_tokens}.
    """
    decided: dict[tuple, int] = {}
    chosen: dict[str, int] = {}
    for name in _csr_candidates(model):
        linear = model.get_submodule(name)
        if linear.weight.device.type != "cpu" or linear.weight.dtype not in (torch.float32, torch.float64):
            continue
        density = float((linear.weight != 0).float().mean())
        if density > max_density:
            continue
        key = (tuple(linear.weight.shape), round(density * 20))
        if key not in decided:
            decided[key] = csr_crossover(linear.weight.detach()) if calibrate else 128
            logger.info("pdp_hf: CSR for %s at density %.2f wins up to %d tokens per call.", key[0], density, decided[key])
        if decided[key] > 0:
            _replace(model, name, CSRLinear(linear, decided[key]))
            chosen[name] = decided[key]
    return chosen


# -- 2:4 semi-structured (CUDA) ---------------------------------------------------------------------------------------
def _check_semi_structured_device(model: nn.Module) -> None:
    device = next(model.parameters()).device
    capable = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    if not capable:
        raise RuntimeError(
            "2:4 acceleration needs an NVIDIA GPU of compute capability 8.0 or newer (the model is on "
            f"{device}); move the model there in fp16/bf16, or use backend='slice' / 'csr' / 'auto'."
        )


def _is_two_four(weight: torch.Tensor) -> bool:
    if weight.shape[1] % 4:
        return False
    return bool(((weight != 0).view(weight.shape[0], -1, 4).sum(-1) <= 2).all())


SEMI_STRUCTURED_TOKENS = (128, 4096)  # tokens per call measured by the 2:4 calibration: one sequence, a batch


def _time_cuda(fn, repeats: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    return _time(lambda: (fn(), torch.cuda.synchronize()), repeats)


@torch.no_grad()
def semi_structured_wins(weight: torch.Tensor, tokens: tuple[int, ...] = SEMI_STRUCTURED_TOKENS) -> bool:
    """Measured here and now: whether the 2:4 product of `weight` (CUDA, fp16/bf16) beats the dense one, by the
    margin `_CALIBRATION_MARGIN`, at every token count in `tokens`. On an H200 with torch 2.11's cuSPARSELt path it
    lost about 30x per call at BERT-base shapes (benchmarks/inference_gpu.txt), so `auto` must ask."""
    from torch.sparse import to_sparse_semi_structured

    sparse = to_sparse_semi_structured(weight)
    for count in tokens:
        x = torch.randn(count, weight.shape[1], dtype=weight.dtype, device=weight.device)
        dense_time = _time_cuda(lambda x=x: nn.functional.linear(x, weight))
        sparse_time = _time_cuda(lambda x=x: nn.functional.linear(x, sparse))
        if sparse_time > _CALIBRATION_MARGIN * dense_time:
            return False
    return True


@torch.no_grad()
def apply_semi_structured(model: nn.Module, calibrate: bool = False) -> list[str]:
    """Targeted Linear weights that are 2:4 sparse become `to_sparse_semi_structured` tensors (CUDA, fp16/bf16).

    With `calibrate=True` (what `auto` does) only weight shapes whose 2:4 product measured faster than the dense
    one here are converted."""
    from torch.sparse import to_sparse_semi_structured

    _check_semi_structured_device(model)
    converted, decided = [], {}
    for name in _csr_candidates(model):
        linear = model.get_submodule(name)
        if linear.weight.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError(f"2:4 acceleration needs fp16/bf16 weights; {name} is {linear.weight.dtype}. Call model.half() or .to(torch.bfloat16).")
        if not _is_two_four(linear.weight):
            continue
        if calibrate:
            key = tuple(linear.weight.shape)
            if key not in decided:
                decided[key] = semi_structured_wins(linear.weight.detach())
                logger.info("pdp_hf: 2:4 kernels for %s %s the dense product here.", key, "beat" if decided[key] else "lose to")
            if not decided[key]:
                continue
        linear.weight = nn.Parameter(to_sparse_semi_structured(linear.weight), requires_grad=False)
        converted.append(name)
    return converted


def optimize_for_inference(model: nn.Module, backend: str = "auto", *, calibrate: bool = True) -> nn.Module:
    """Make a finalized pruned model run faster, in place, with outputs equal to the zero-weight model's.

    Args:
        model: a finalized model (after `PrunerTrainer.train()`, `finalize_pruning`, or loaded from an export).
        backend: `"slice"`, `"csr"`, `"semi-structured"` or `"auto"` (see the module docstring).
        calibrate: `csr`/`auto` measure where CSR wins on this machine (a few seconds); False uses a fixed rule.
            `auto` on a GPU measures whether 2:4 kernels win; False converts every 2:4 layer.

    Returns the model (in eval mode). `model.pdp_inference` records what was done.

    Example:

    ```python
    >>> from pdp_hf import load_pruned, optimize_for_inference
    >>> model = optimize_for_inference(load_pruned("outputs/minilm-neurons-50"), backend="slice")  # doctest: +SKIP
    >>> model.pdp_inference["slice"]["neurons"][0]  # doctest: +SKIP
    [768, 1536]

    ```
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is invalid: choose one of {list(BACKENDS)}.")
    if get_pruner(model) is not None:
        raise ValueError("This model still carries pruning masks; call finalize_pruning(model) (or export) first.")
    model.eval()
    done: dict = {}
    device = next(model.parameters()).device
    if backend in ("slice", "auto"):
        done["slice"] = slice_structure(model)
    if backend == "csr" or (backend == "auto" and device.type == "cpu"):
        if device.type != "cpu":
            raise RuntimeError(f"backend='csr' runs on CPU (MKL sparse kernels); the model is on {device}.")
        done["csr"] = apply_csr(model, calibrate=calibrate)
    if backend == "semi-structured":
        done["semi-structured"] = apply_semi_structured(model)
    elif backend == "auto" and device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        if next(model.parameters()).dtype in (torch.float16, torch.bfloat16):
            done["semi-structured"] = apply_semi_structured(model, calibrate=calibrate)
    model.pdp_inference = done
    return model


# -- shrunk exports -------------------------------------------------------------------------------------------------
_FFN_SIZE_ATTRS = ("intermediate_size", "hidden_dim", "ffn_dim")


@torch.no_grad()
def shrink_neurons_for_config(model: nn.Module) -> int | None:
    """Cut all-zero FFN neurons out of every layer and write the smaller FFN size into `model.config`, so that a
    plain `from_pretrained` builds the same model. Needs the same number of removable neurons in every layer;
    returns the new size (None when no neuron is removable). Heads are left as zeros: a Transformers v5 config
    derives the head size from hidden_size / num_attention_heads, so fewer heads cannot be expressed."""
    names = find_targets(model, None)
    layers = {i: r for i, r in sorted(role_map(model, names).items()) if {"ffn_in", "ffn_out"} <= r.keys()}
    kept = {}
    for index, roles in layers.items():
        keep = _keep_at_least_one(~removable_neurons(model.get_submodule(roles["ffn_in"]), model.get_submodule(roles["ffn_out"])))
        kept[index] = int(keep.sum())
    if not kept:
        raise ValueError("shrink=True found no FFN layers with known roles in this model.")
    width = model.get_submodule(next(iter(layers.values()))["ffn_out"]).in_features  # a gated FFN-in has 2x rows
    if all(k == width for k in kept.values()):
        return None
    if len(set(kept.values())) > 1:
        listing = ", ".join(f"layer {i}: {k}" for i, k in kept.items())
        raise ValueError(
            f"shrink=True needs the same number of FFN neurons in every layer (a Transformers config holds one "
            f"intermediate size), but the kept neurons differ ({listing} of {width}). Prune with "
            "granularity='neuron' and sparsity_distribution='uniform', or export with zeros (shrink=False) and load "
            "with pdp_hf.load_pruned(dir, optimize=True), which slices each layer to its own size."
        )
    attr = next((a for a in _FFN_SIZE_ATTRS if getattr(model.config, a, None) == width), None)
    if attr is None:
        raise ValueError(f"Cannot find the FFN size ({width}) in this model's config; shrink=True is not supported for it.")
    slice_structure(model, heads=False)
    new_size = next(iter(kept.values()))
    setattr(model.config, attr, new_size)
    return new_size
