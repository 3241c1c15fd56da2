"""Compressed exports: each pruned matrix as a bitmask of its nonzeros plus their values, in safetensors.

At 90% sparsity a float32 matrix of n entries takes n/8 bytes of bitmask + 0.1 n * 4 bytes of values, about 0.13x
the dense size. Loading rebuilds the dense tensors bit for bit. Nothing is pickled, on write or on read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write, recover_folder

COMPRESSED_WEIGHTS_NAME = "model.pdp-compressed.safetensors"
_MASK, _VALUES = ".__pdp_bitmask", ".__pdp_values"
logger = logging.getLogger(__name__)


FORMAT = "bitmask-v2"  # v2 adds a SHA-256 per stored tensor; v1 (pdp_hf 0.3) files load with the other checks


def _sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def compress_state_dict(state_dict: dict[str, torch.Tensor], sparse_keys: list[str]) -> tuple[dict, dict]:
    """Tensors and metadata for safetensors: `sparse_keys` become bitmask + values, the rest stay as they are. The
    metadata holds each sparse tensor's shape and a SHA-256 of every stored tensor's bytes."""
    tensors, shapes = {}, {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach().cpu().contiguous()
        if key not in sparse_keys:
            tensors[key] = tensor
            continue
        nonzero = tensor != 0
        tensors[key + _MASK] = torch.from_numpy(np.packbits(nonzero.reshape(-1).numpy()))
        tensors[key + _VALUES] = tensor[nonzero].contiguous()
        shapes[key] = list(tensor.shape)
    checksums = {key: _sha256(tensor) for key, tensor in tensors.items()}
    return tensors, {"pdp_hf_format": FORMAT, "shapes": json.dumps(shapes), "sha256": json.dumps(checksums)}


def _read_metadata(metadata: dict[str, str], where: str) -> tuple[dict, dict | None]:
    """(shapes, checksums or None for a v1 file), refused unless well formed."""
    fmt = metadata.get("pdp_hf_format")
    if fmt not in ("bitmask-v1", FORMAT):
        raise ValueError(f"{where}: unknown compressed format {fmt!r}; this pdp_hf reads 'bitmask-v1' and {FORMAT!r}.")
    try:
        shapes = json.loads(metadata["shapes"])
        checksums = json.loads(metadata["sha256"]) if fmt == FORMAT else None
    except (KeyError, ValueError) as err:
        raise ValueError(f"{where}: its metadata is damaged ({err!r}). Export it again.") from None
    ok = isinstance(shapes, dict) and all(
        isinstance(v, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v)
        for v in shapes.values())
    if not ok or (checksums is not None and not isinstance(checksums, dict)):
        raise ValueError(f"{where}: its metadata is damaged (shapes {str(shapes)[:80]}). Export it again.")
    return shapes, checksums


def check_compressed(tensors: dict[str, torch.Tensor], metadata: dict[str, str], expected: dict[str, torch.Tensor],
                     where: str) -> dict:
    """Refuse, naming the file and the tensor, a compressed file that does not describe `expected` (the model's
    state_dict: keys, shapes, dtypes) or whose bytes changed since export (SHA-256 per tensor, bitmask-v2), before
    any dense tensor is allocated. Returns the shapes of the sparse tensors."""
    shapes, checksums = _read_metadata(metadata, where)
    if checksums is None:
        logger.warning("pdp_hf: %s is a bitmask-v1 file (pdp_hf 0.3) without checksums: a changed byte cannot be "
                       "seen. Export it again to store them.", where)
    else:
        if sorted(checksums) != sorted(tensors):
            raise ValueError(f"{where}: it holds other tensors than its checksums list "
                             f"({sorted(set(tensors) ^ set(checksums))[:3]}). Export it again.")
        for key, tensor in tensors.items():
            if _sha256(tensor) != checksums[key]:
                raise ValueError(f"{where}: the bytes of {key} changed since export (SHA-256 differs). Export it again, "
                                 "or download it again.")
    for key, shape in shapes.items():
        if key + _MASK not in tensors or key + _VALUES not in tensors:
            raise ValueError(f"{where}: {key} has no {'bitmask' if key + _MASK not in tensors else 'values'}.")
        want = expected.get(key)
        if want is None or list(want.shape) != shape:
            raise ValueError(f"{where}: {key} is stored with shape {shape}, but the model "
                             f"{'has no such weight' if want is None else f'has {list(want.shape)}'}.")
        mask, values = tensors[key + _MASK], tensors[key + _VALUES]
        n = int(np.prod(shape))
        if mask.dtype != torch.uint8 or mask.dim() != 1 or mask.numel() != (n + 7) // 8:
            raise ValueError(f"{where}: the bitmask of {key} has {mask.numel()} bytes of {mask.dtype}; {n} weights "
                             f"need {(n + 7) // 8} bytes of torch.uint8.")
        kept = int(np.unpackbits(mask.numpy(), count=n).sum())
        if values.dim() != 1 or values.numel() != kept or not values.dtype.is_floating_point:
            raise ValueError(f"{where}: {key} has {values.numel()} values of {values.dtype}, its bitmask marks {kept}.")
    orphans = [k for k in tensors if k.endswith((_MASK, _VALUES)) and k.rsplit(".__pdp_", 1)[0] not in shapes]
    if orphans:
        raise ValueError(f"{where}: {orphans[0]} belongs to no weight in its metadata. Export it again.")
    return shapes


def decompress_state_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """The dense tensors back, bit for bit (check the file first with `check_compressed`)."""
    shapes, _ = _read_metadata(metadata, "compressed state")
    state = {k: v for k, v in tensors.items() if not k.endswith((_MASK, _VALUES))}
    for key, shape in shapes.items():
        values = tensors[key + _VALUES]
        n = int(np.prod(shape))
        mask = torch.from_numpy(np.unpackbits(tensors[key + _MASK].numpy(), count=n).astype(bool))
        dense = torch.zeros(n, dtype=values.dtype)
        dense[mask] = values
        state[key] = dense.view(shape)
    return state


def save_compressed(model: nn.Module, directory: str, sparse_modules: list[str]) -> str:
    from safetensors.torch import save_file

    state = {}
    seen = set()
    for key, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen and tensor.numel():  # tied weights are stored once
            continue
        seen.add(tensor.data_ptr())
        state[key] = tensor
    tensors, metadata = compress_state_dict(state, [f"{m}.weight" for m in sparse_modules])
    path = os.path.join(directory, COMPRESSED_WEIGHTS_NAME)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(directory)
    return path


def check_model_folder(directory) -> None:
    """A local path that is missing, or a folder without `config.json`, is refused here with its name, instead of
    ending in a Hub request for it. Anything else (a Hub id such as "org/model") is left to `from_pretrained`."""
    path = os.fspath(directory)
    recover_folder(path)  # an export over this one that was interrupted: the previous export back at its path
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{path} is a folder without config.json: not a model export or checkpoint. Give "
                                    "the folder that export_pruned (or a Trainer checkpoint) wrote.")
        for name in sorted(os.listdir(path)):
            if name.endswith(".safetensors"):
                check_safetensors(os.path.join(path, name))
        return
    looks_local = os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path) or path.count("/") != 1
    if looks_local:
        raise FileNotFoundError(f"{path} does not exist{' (it is a file, not a folder)' if os.path.isfile(path) else ''}; "
                                "give the folder of an export or checkpoint, or a Hub id 'org/name'.")


def _header_shapes(path: str) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors header (no tensor is read); `check_safetensors` has checked it."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def check_shrunk_shapes(directory: str, spec: dict) -> None:
    """A per-layer shrunk export: every layer's kept sizes in `config.json` (`pdp_shrunk`) must be the shapes its
    weights file holds. A config changed by hand otherwise ends in Transformers' generic size-mismatch error after a
    table of reinitialized weights."""
    shapes: dict[str, list[int]] = {}
    files = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
    for name in files:
        shapes.update(_header_shapes(os.path.join(directory, name)))
    linear = spec.get("linear", {}) if isinstance(spec, dict) else None
    if not isinstance(linear, dict) or not files:
        raise ValueError(f"{directory}/config.json: its pdp_shrunk entry is damaged, or the folder has no weights.")
    for layer, sizes in linear.items():
        stored = shapes.get(f"{layer}.weight")
        well_formed = isinstance(sizes, list) and len(sizes) == 2 and all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes)
        if well_formed and stored is None:
            continue  # stored under a legacy name: Transformers renames ViT's and DINOv2's keys on save
        if not well_formed or stored != [sizes[1], sizes[0]]:
            raise ValueError(
                f"{directory}: config.json (pdp_shrunk) gives {layer} {sizes} (in, out) features, but its weights file "
                f"holds {'no such weight' if stored is None else f'a {stored} (out, in) weight'}. The config was "
                "changed or belongs to another export: export it again."
            )


def check_safetensors(path: str) -> None:
    """Refuse, with the file's name, a safetensors file that is truncated, padded or not safetensors at all (its
    header is read, not its tensors): the loader's own error names neither the file nor the cause."""
    size = os.path.getsize(path)
    fix = "Export it again, or download it again."
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else None
        if length is None or length > size - 8:
            raise ValueError(f"{path} is truncated or not a safetensors file: {size} bytes, too few for its header. {fix}")
        try:
            header = json.loads(f.read(length))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
            raise ValueError(f"{path} is not a safetensors file: its header does not parse ({err}). {fix}") from None
    if 8 + length + end != size:
        state = "truncated" if 8 + length + end > size else "longer than its header says"
        raise ValueError(f"{path} is {state}: its header describes {end} bytes of tensors, the file holds "
                         f"{size - 8 - length}. {fix}")


def load_pruned(directory: str, model_class=None, optimize: bool | str = False, **kwargs) -> nn.Module:
    """Load an export: a compressed folder is rebuilt bit-exactly; a plain one goes through `from_pretrained`.

    `optimize=True` (or a backend name) then runs `pdp_hf.optimize_for_inference` on it ("auto" for True): pruned
    neurons and heads are cut out per layer and sparse kernels are used where they win, with equal outputs.

    Example:

    ```python
    >>> from pdp_hf import load_pruned
    >>> model = load_pruned("outputs/demo-compressed")  # doctest: +SKIP
    >>> type(model).__name__  # doctest: +SKIP
    'BertForSequenceClassification'

    ```
    """
    import transformers
    from transformers import AutoConfig, AutoModel

    check_model_folder(directory)
    config = AutoConfig.from_pretrained(directory)
    if model_class is None:
        arch = (getattr(config, "architectures", None) or [None])[0]
        model_class = getattr(transformers, arch, None) if arch else None
        model_class = model_class or AutoModel
    if getattr(config, "pdp_shrunk", None):  # a per-layer shrunk export: build each layer at its kept sizes
        from .shrink import shrunk_class

        if not isinstance(model_class, type) or not issubclass(model_class, nn.Module):  # an Auto class
            model_class = model_class._model_mapping[type(config)]
        model_class = shrunk_class(config, model_class)
        check_shrunk_shapes(os.fspath(directory), config.pdp_shrunk)
    path = os.path.join(directory, COMPRESSED_WEIGHTS_NAME)
    if not os.path.isfile(path):
        try:
            model, info = model_class.from_pretrained(directory, **{**kwargs, "output_loading_info": True})
        except RuntimeError as err:
            if "mismatch" not in str(err):
                raise
            sizes = "the per-layer sizes config.json (pdp_shrunk) gives" if getattr(config, "pdp_shrunk", None) else (
                "the sizes its config.json gives")
            raise ValueError(f"{directory}: its weights do not have {sizes} them (the table above names the layers). "
                             "The config was changed or belongs to another export: export it again.") from None
        _check_loaded(directory, info, kwargs)
    else:
        model = _load_compressed(path, config, model_class, **kwargs)
    if optimize:
        from .inference import optimize_for_inference

        optimize_for_inference(model, "auto" if optimize is True else optimize)
    return model.eval()


def _check_loaded(directory: str, info: dict, kwargs: dict) -> None:
    """Refuse an export whose weights file lacks weights the model has: Transformers would start them from random
    values and only print a table. (Extra weights, e.g. a task head loaded as a base model, only warn.)"""
    missing = list(info.get("missing_keys") or [])
    mismatched = [] if kwargs.get("ignore_mismatched_sizes") else list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        names = [str(k) for k in (missing + mismatched)[:5]]
        raise ValueError(f"{directory}: its weights file lacks {len(missing)} weights of the model"
                         f"{f' and holds {len(mismatched)} of another size' if mismatched else ''} "
                         f"({', '.join(names)}{', ...' if len(missing) + len(mismatched) > 5 else ''}); loading it "
                         "would start them from random values. The weights belong to another model or were changed: "
                         "export it again.")
    if info.get("unexpected_keys"):
        logger.warning("%s: its weights file holds %d weights the model does not use (%s).", directory,
                       len(info["unexpected_keys"]), ", ".join(list(info["unexpected_keys"])[:5]))


def _load_compressed(path: str, config, model_class, **kwargs) -> nn.Module:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    build = getattr(model_class, "from_config", None) or model_class._from_config  # Auto* or a model class
    model = build(config, **kwargs)
    expected = model.state_dict()
    check_compressed(tensors, metadata, expected, path)
    state = decompress_state_dict(tensors, metadata)
    for key, tensor in state.items():
        want = expected.get(key)
        if want is not None and (want.shape != tensor.shape or want.is_floating_point() != tensor.is_floating_point()):
            raise ValueError(f"{path}: {key} is stored as {list(tensor.shape)} {tensor.dtype}, but the model has "
                             f"{list(want.shape)} {want.dtype}.")
    _load_exact(model, state, path)
    return model


def _load_exact(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """load_state_dict that keeps the stored dtypes (an fp16 export loads as fp16) and allows a missing key only
    when it is tied to a loaded one."""
    groups: dict[int, set[str]] = {}
    for key, tensor in model.state_dict().items():
        groups.setdefault(tensor.data_ptr(), set()).add(key)
    tied = {key: group for group in groups.values() for key in group if len(group) > 1}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    untied = [k for k in missing if not (tied.get(k, set()) & state.keys())]
    if unexpected or untied:
        raise ValueError(f"{path} does not fit {type(model).__name__}: missing {untied}, unexpected {unexpected}.")
    if tied and hasattr(model, "tie_weights"):
        model.tie_weights()  # assign=True replaced one side of each tie
