"""Pruning units: what one mask entry covers, and which weights (and biases) it spans.

A *granularity* turns the targeted Linear layers into `UnitGroup`s. A group is a set of units that share one budget
under `sparsity_distribution="uniform"`, and each unit lives or dies as a whole:

| granularity    | one group                                  | one unit                                                   |
|----------------|--------------------------------------------|------------------------------------------------------------|
| `unstructured` | one targeted matrix                        | one weight                                                 |
| `block`        | one targeted matrix                        | a `block_size` x `block_size` tile                         |
| `n:m`          | one targeted matrix                        | a group of M consecutive weights along the input dimension, of which N stay |
| `neuron`       | the FFN of one layer (FFN-in + FFN-out)    | FFN-in row i + its bias entry + FFN-out column i           |
| `head`         | the attention of one layer (Q, K, V, out)  | the head's rows of Q, K, V + their bias entries, and its columns of the output projection |

Every unit has one score, its L2 norm over all the weights it spans (|w| for a single weight); methods rank and
mask units by it. Biases follow their unit's mask but are not part of the score (they are not counted as pruned
weights either: sparsity is counted on weight matrices). `expand` broadcasts a unit-level mask onto each member
weight and bias, so the masked forward, hardening, finalize and reports all read the same mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .kernels import mask_gradient
from .layers import head_count, layer_index, layer_match, role_map
from .roles import ROLE_GROUPS, parse_role_map
from .targets import HEAD_LAYOUTS, NEURON_LAYOUTS, closest_layout, parts_of, role_of

__all__ = ["Member", "UnitGroup", "build_unit_groups", "multiplier", "multiplier_dtype", "ROLE_GROUPS", "STRUCTURED",
           "parse_role_map"]

STRUCTURED = ("neuron", "head")


@dataclass
class Member:
    """One Linear layer of a group; for neurons/heads, `axis` 0 means units are row blocks (output features, with
    their bias entries) and 1 column blocks (input features) of `width` each. With `parts` > 1 the rows are that
    many equal chunks (a fused Q|K|V matrix, a gated FFN-in), each holding every unit's block in order."""

    name: str
    module: nn.Linear
    axis: int = 0
    width: int = 1
    parts: int = 1


@dataclass(eq=False)
class UnitGroup:
    """Units that share one budget (uniform) and one set of method state.

    `zeros` is the number of units pruned in force now, `hard_mask` the fixed boolean keep-mask over units after
    hardening (None before). With `keeps_zeros` (hardened in a training loop that also zeroed the optimizer's
    state, see `Pruner.set_optimizer`) the pruned weights are zero in place and only their gradients are masked.
    Methods keep their per-group tensors in `state`: plain attributes, not module buffers, so DDP never broadcasts
    them (every rank computes them from the same weights). Learnable scores (`score`) are parameters of the model's
    `pdp_scores` submodule instead: trained, all-reduced and checkpointed like any weight.
    """

    name: str
    kind: str
    members: list[Member]
    pool: str
    block_size: int = 0
    n: int = 0
    m: int = 0
    zeros: int = 0
    hard_mask: torch.Tensor | None = None
    keeps_zeros: bool = False
    state: dict = field(default_factory=dict)
    score: nn.Parameter | None = None  # learnable unit scores (methods with learnable_scores), shape unit_shape
    _forward_cache: tuple | None = field(default=None, repr=False, compare=False)
    _keep_factors: dict | None = field(default=None, repr=False, compare=False)
    # member name -> (weight, bias, weight version) of this training forward, from `Pruner.fuse_masks`
    _fused: dict | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        # deepcopy / pickle: a value shared within one forward pass (with its autograd graph) is never copied
        return {**self.__dict__, "_forward_cache": None, "_keep_factors": None, "_fused": None}

    def once_per_forward(self, compute) -> torch.Tensor:
        """`compute()` once for the consecutive forward calls of the group's members (a neuron mask is used by
        FFN-in, then FFN-out): the first member computes it, the others reuse it, the last one drops it, so nothing
        holding an autograd graph outlives the forward pass. A weight update in between (a new `_version`) or a
        repeated call (gradient checkpointing, gradient accumulation) computes afresh."""
        versions = tuple(member.module.weight._version for member in self.members)
        if self.score is not None:  # learned scores change at optimizer steps too (even with frozen weights)
            versions += (self.score._version,)
        cached = self._forward_cache
        if cached is not None and cached[2] == versions:
            value, left, _ = cached
            self._forward_cache = (value, left - 1, versions) if left > 1 else None
            return value
        value = compute()
        self._forward_cache = (value, len(self.members) - 1, versions) if len(self.members) > 1 else None
        return value

    # -- shape ----------------------------------------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        """The weight of the first member (the only one for per-matrix granularities)."""
        return self.members[0].module.weight

    @property
    def unit_shape(self) -> tuple[int, ...]:
        rows, cols = self.weight.shape
        if self.kind == "unstructured":
            return (rows, cols)
        if self.kind == "block":
            return (rows // self.block_size, cols // self.block_size)
        if self.kind == "n:m":
            return (rows, cols // self.m, self.m)
        first = self.members[0]
        return (first.module.weight.shape[first.axis] // (first.width * first.parts),)

    @property
    def num_units(self) -> int:
        """Units that a budget counts: weights, tiles, N:M groups (each pruning M - N weights), neurons or heads."""
        shape = self.unit_shape
        return shape[0] * shape[1] if self.kind == "n:m" else int(torch.Size(shape).numel())

    @property
    def numel(self) -> int:
        """Weights spanned by the group (biases not counted)."""
        return sum(member.module.weight.numel() for member in self.members)

    def pruned_weights(self, units: int) -> int:
        """Weights zeroed when `units` units are pruned."""
        if self.kind == "n:m":
            return units * (self.m - self.n)
        return units * (self.numel // self.num_units)

    # -- scores ---------------------------------------------------------------------------------------------------
    def squared_norms(self, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Squared L2 norm of each unit in float32, differentiable, shaped `unit_shape` (w^2 for single weights).

        `weights` (member name -> tensor) replaces the members' current weights, e.g. to count pruned units of
        masked weights."""
        def weight_of(member: Member) -> torch.Tensor:
            return member.module.weight if weights is None else weights[member.name]

        if self.kind in ("unstructured", "n:m"):
            return weight_of(self.members[0]).float().square().view(self.unit_shape)
        if self.kind == "block":
            b = self.block_size
            rows, cols = self.unit_shape
            return weight_of(self.members[0]).float().square().view(rows, b, cols, b).sum(dim=(1, 3))
        total = None
        for member in self.members:
            w2 = weight_of(member).float().square()
            if member.axis == 0 and member.parts > 1:  # each chunk's rows first, then the chunks
                w2 = w2.view(member.parts, -1, w2.shape[1]).sum(dim=0)
            part = w2.view(-1, member.width, w2.shape[1]).sum(dim=(1, 2)) if member.axis == 0 else (
                w2.view(w2.shape[0], -1, member.width).sum(dim=(0, 2))
            )
            total = part if total is None else total + part
        return total

    @torch.no_grad()
    def scores(self) -> torch.Tensor:
        """Importance of each unit: its L2 norm (|w| for single weights), detached, float32."""
        if self.kind in ("unstructured", "n:m"):
            return self.weight.detach().abs().float().view(self.unit_shape)
        return self.squared_norms().sqrt()

    # -- masks ----------------------------------------------------------------------------------------------------
    def expand(self, mask: torch.Tensor, member: Member) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A unit-level mask (bool or float) as (weight mask, bias mask or None) of one member."""
        shape = member.module.weight.shape
        if self.kind in ("unstructured", "n:m"):
            return mask.reshape(shape), None
        if self.kind == "block":
            b = self.block_size
            return mask.repeat_interleave(b, 0).repeat_interleave(b, 1), None
        per_feature = mask.repeat_interleave(member.width)
        if member.axis == 0:
            per_feature = per_feature.repeat(member.parts) if member.parts > 1 else per_feature
            return per_feature[:, None], per_feature
        return per_feature[None, :], None

    def masked(self, mask: torch.Tensor, member: Member, module: nn.Linear | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of `member` with a unit-level mask applied (the bias as it is when the mask does not
        touch it). `module` is the module that runs (a DataParallel replica of `member.module`, say)."""
        module = member.module if module is None else module
        weight_mask, bias_mask = self.expand(mask.to(module.weight.device), member)
        return _apply_masks(module, weight_mask, bias_mask)

    def hard_masked(self, member: Member, module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) times the hardened mask (for loops that do not keep the zeros, see `keeps_zeros`)."""
        return _apply_masks(module, *self.keep_factors(member, module.weight.device))

    def pruned_entries(self, member: Member, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias or None) boolean masks of the entries `hard_mask` prunes in `member`, True = pruned, on
        `device` (default: the member's)."""
        device = member.module.weight.device if device is None else device
        weight_mask, bias_mask = self.expand(self.hard_mask.to(device), member)
        return ~weight_mask, None if bias_mask is None else ~bias_mask

    def keep_factors(self, member: Member, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`hard_mask` of `member` as 0/1 multipliers (weight, bias or None), built once per device: multiplying by
        a floating mask is several times faster on CPU than by a bool one (see `multiplier`)."""
        if self._keep_factors is None:
            self._keep_factors = {}
        if device not in self._keep_factors:
            factors = {}
            for m in self.members:
                weight_mask, bias_mask = self.expand(self.hard_mask.to(device), m)
                dtype = m.module.weight.dtype
                factors[m.name] = (multiplier(weight_mask, dtype), None if bias_mask is None else multiplier(bias_mask, dtype))
            self._keep_factors[device] = factors
        return self._keep_factors[device][member.name]

    @torch.no_grad()
    def zero_pruned_(self) -> None:
        """Write +0.0 into every pruned weight (and bias entry) of the group, in place."""
        for member in self.members:
            weight_pruned, bias_pruned = self.pruned_entries(member)
            member.module.weight.masked_fill_(weight_pruned, 0.0)
            if bias_pruned is not None and member.module.bias is not None:
                member.module.bias.masked_fill_(bias_pruned, 0.0)

    def zeros_kept(self, member: Member, module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of a `keeps_zeros` group: the weights as they are (their pruned entries are zero), with
        the gradient of the pruned entries masked."""
        weight_keep, bias_keep = self.keep_factors(member, module.weight.device)
        bias = module.bias
        if bias_keep is not None and bias is not None:
            bias = mask_gradient(bias, bias_keep)
        return mask_gradient(module.weight, weight_keep), bias

    def to_device(self, device: torch.device) -> None:
        """Move the hard mask and the method state to `device` (dtypes unchanged: thresholds stay float32)."""
        if self.hard_mask is not None and self.hard_mask.device != device:
            self.hard_mask = self.hard_mask.to(device)
            self._keep_factors = None
        for key, value in self.state.items():
            if isinstance(value, torch.Tensor) and value.device != device:
                self.state[key] = value.to(device)

    def describe(self) -> str:
        if self.kind == "block":
            return f"block {self.block_size}x{self.block_size}"
        if self.kind == "n:m":
            return f"{self.n}:{self.m}"
        return self.kind


def _apply_masks(module: nn.Linear, weight_mask: torch.Tensor, bias_mask: torch.Tensor | None):
    weight, bias = module.weight * weight_mask, module.bias
    if bias_mask is not None and bias is not None:
        bias = bias * bias_mask
    if weight.dtype != module.weight.dtype:  # a mask made for another dtype (the model was cast since)
        weight, bias = weight.to(module.weight.dtype), None if bias is None else bias.to(module.weight.dtype)
    return weight, bias


def multiplier(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A keep-mask as 0/1 values to multiply a tensor of `dtype` by. bfloat16 for float32 tensors (exact for 0 and
    1, half the memory of float32, and the product stays float32), else `dtype` itself. On CPU, `w * bool_mask`
    converts the mask on every call and costs about 3x a multiply by a floating mask."""
    if mask.dtype != torch.bool:
        return mask
    return mask.to(multiplier_dtype(dtype))


def multiplier_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype `multiplier` gives a mask for tensors of `dtype`."""
    return torch.bfloat16 if dtype == torch.float32 else dtype


def _granularity_of(name: str, role: str, mapping: dict[str, str]) -> str | None:
    if "*" in mapping:
        return mapping["*"]
    for group, roles in ROLE_GROUPS.items():
        if role in roles:
            return mapping.get(group)
    return None


def build_unit_groups(model: nn.Module, names: list[str], config, explicit: bool | None = None) -> list[UnitGroup]:
    """Unit groups for the targeted modules `names` under `config.granularity` (one name, or a role-group map).

    Per-matrix granularities make one group per matrix, in model order; `neuron` one group per layer's FFN and
    `head` one per layer's attention. A default target that the granularity does not cover (the attention layers
    under `granularity="neuron"`, the FFN under `"head"` or a map without `ffn=`) stays dense and is not a target;
    an explicitly listed one (`target_modules`) is an error, as is a granularity that covers nothing.
    """
    explicit = config.target_modules is not None if explicit is None else explicit
    mapping = parse_role_map(config.granularity, "granularity")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    roles = {name: role_of(model_type, name) for name in names}
    layers = role_map(model, names)
    n, m = config.nm_pair()
    groups: list[UnitGroup] = []
    done: set[str] = set()
    for name in names:
        if name in done:
            continue
        kind = _granularity_of(name, roles[name], mapping)
        covered = kind is not None and (kind not in STRUCTURED or roles[name] in _roles_of(kind))
        if not covered:
            if explicit:
                raise ValueError(_not_covered(config.granularity, name, roles[name], kind))
            continue
        module = model.get_submodule(name)
        if kind in STRUCTURED:
            group = _structured_group(model, name, kind, layers)
            groups.append(group)
            done.update(member.name for member in group.members)
            continue
        _check_divisible(name, module, kind, config.block_size, m)
        pool = "element" if kind == "unstructured" else kind
        groups.append(UnitGroup(name, kind, [Member(name, module)], pool, block_size=config.block_size, n=n, m=m))
        done.add(name)
    if not groups:
        raise ValueError(
            f"PDPConfig.granularity={config.granularity!r} covers none of the targets ({', '.join(names[:6])}"
            f"{', ...' if len(names) > 6 else ''}); 'neuron' needs FFN in/out layers, 'head' attention Q/K/V/output."
        )
    return groups


def _roles_of(kind: str) -> tuple[str, ...]:
    return ROLE_GROUPS["ffn" if kind == "neuron" else "attention"]


def _not_covered(granularity: str, name: str, role: str, kind: str | None) -> str:
    if kind is None:
        return (
            f"PDPConfig.granularity={granularity!r} covers no granularity for {name!r} (role {role!r}); give one "
            "granularity for all targets, or narrow target_modules."
        )
    return f"Granularity {kind!r} covers roles {list(_roles_of(kind))}; {name!r} has role {role!r}: narrow target_modules."


def _structured_group(model, name: str, kind: str, layers) -> UnitGroup:
    index = layer_index(name)
    present = layers.get(index, {})
    needed = closest_layout(NEURON_LAYOUTS if kind == "neuron" else HEAD_LAYOUTS, present, model)
    missing = [r for r in needed if r not in present]
    if missing:
        raise ValueError(
            f"Granularity {kind!r} prunes whole {kind}s, which span {list(needed)} of a layer; layer {index} targets "
            f"lack {missing}. Target all of them (the default targets do) or use a per-weight granularity."
        )
    modules = {r: model.get_submodule(present[r]) for r in needed}
    parts = {r: parts_of(model, present[r]) for r in needed}
    if kind == "neuron":
        units = modules["ffn_out"].in_features
        width = 1
    else:
        units = head_count(model, present[needed[0]], parts[needed[0]])
        width = modules["attn_out"].in_features // units
    # rows of each row-member, columns of the output projection: units x width (x parts)
    sizes = {r: (modules[r].in_features if r in ("attn_out", "ffn_out") else modules[r].out_features) for r in needed}
    expected = {r: parts[r] * units * width for r in needed}
    if sizes != expected:
        raise ValueError(f"Layer {index}: the {kind} matrices have sizes {sizes}, which do not split into {units} "
                         f"{kind}s of {width} ({expected} expected; the role table's parts: {parts}).")
    members = [Member(present[r], modules[r], 1 if r in ("attn_out", "ffn_out") else 0, width, parts[r]) for r in needed]
    prefix = name[: layer_match(name).end(1)]  # e.g. "bert.encoder.layer.3"
    return UnitGroup(f"{prefix}:{kind}s", kind, members, pool=kind)


def _check_divisible(name: str, module: nn.Linear, kind: str, block_size: int, m: int) -> None:
    rows, cols = module.weight.shape
    if kind == "block" and (rows % block_size or cols % block_size):
        raise ValueError(
            f"{name} has a {rows}x{cols} weight, which {block_size}x{block_size} blocks do not tile; choose a "
            f"block_size that divides both sides, or exclude the layer with target_modules."
        )
    if kind == "n:m" and cols % m:
        raise ValueError(
            f"{name} has {cols} input features, not a multiple of M={m}: N:M groups run along the input dimension. "
            "Choose another n_m or exclude the layer with target_modules."
        )
