"""The masks of a whole model in a constant number of operators per training step, whatever its depth.

Each method works per matrix; on a GPU each of its operators is a kernel launch, and a step that masks 72 matrices of
BERT-base one by one waits on launches, not on arithmetic. Here the targeted matrices of one shape, dtype and device
(a *shape class*: BERT's attention matrices, its FFN-in and its FFN-out matrices) are stacked and handled as one
tensor: the thresholds of all of them from one selection along the rows, their soft masks from one kernel in forward
and one in backward, the hardened gradient masks from one multiply. The number of classes depends on the
architecture, not on the number of layers.

How a step runs:
- `Pruner.step` calls `MaskMethod.update_many`, which methods override to select the thresholds of a class at once
  (`kth_pairs`, `select_pairs`; the same values as the per-matrix selection, so results stay bit-identical);
- a forward pre-hook on the model (`before_forward`) computes every fused masked weight of the step before the
  first layer runs, outside any layer (so no checkpointed region and no replica sees it), and hangs each on its
  group; `PrunedLinear` takes its own; a forward hook (`after_forward`) drops them, so only autograd holds them;
- gradient checkpointing, `nn.DataParallel` replicas, a forward under `torch.compile`, eval mode and no-grad
  forwards keep the per-matrix path: same values, more operators.

A fused backward runs once every masked weight's gradient exists, at the end of the model's backward; under DDP the
targeted weights' gradients are therefore all-reduced together at the end instead of overlapping the backward.
"""

from __future__ import annotations

import functools

import torch

from .kernels import KERNELS
from .selection import SAMPLE_SIZE, _sample_index


def classes_by(items: list, key) -> list[list]:
    """`items` split by `key(item)`, each class in the items' order."""
    classes: dict[tuple, list] = {}
    for item in items:
        classes.setdefault(key(item), []).append(item)
    return list(classes.values())


def tensor_class(tensor: torch.Tensor) -> tuple:
    return tuple(tensor.shape), tensor.dtype, tensor.device


# N:M and block groups keep the per-group path (block's fused form summed its tiles' mask gradients in another
# order: not bit-identical)
FUSED_KINDS = ("unstructured", "neuron", "head")


@torch.no_grad()
def unit_scores(groups: list) -> torch.Tensor:
    """`UnitGroup.scores()` of same-signature groups at once: |w| of unstructured matrices (M, rows, cols), the
    unit norms of neurons and heads (M, units)."""
    if groups[0].kind == "unstructured":
        return member_stacks(groups, detach=True)[0]
    return stacked_squared_norms(groups, member_stacks(groups, detach=True)).sqrt()


def signature(group) -> tuple:
    """Groups that fuse together: the same kind, member shapes and roles, dtype and device (a layer's FFN is one
    group per layer for `neuron`, so the FFNs of all layers form one class)."""
    members = tuple((tuple(m.module.weight.shape), m.axis, m.width, m.parts, m.module.bias is not None)
                    for m in group.members)
    return group.kind, group.block_size, members, group.weight.dtype, group.weight.device


def fusable_classes(items: list, fits) -> tuple[list[tuple[list, list[int]]], list]:
    """Split one step's (group, zeros) updates: (groups, their zeros) per signature class of at least two groups
    that `fits(group, zeros)`, and the (group, zeros) left to update group by group."""
    batched, single = {}, []
    for group, zeros in items:
        if fits(group, zeros):
            batched[group] = zeros
        else:
            single.append((group, zeros))
    classes = []
    for same in classes_by(list(batched), signature):
        zeros = [batched[g] for g in same]
        if len(same) < 2:
            single.extend(zip(same, zeros))
        else:
            classes.append((same, zeros))
    return classes, single


def masked_stack(weights: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Stacked weights times their masks, in the weights' dtype, one tensor per group."""
    masked = weights * mask
    return list((masked if masked.dtype == weights.dtype else masked.to(weights.dtype)).unbind(0))


def member_stacks(groups: list, detach: bool = False) -> list[torch.Tensor]:
    """For each member position of same-signature groups, the members' weights stacked (M, rows, cols)."""
    return [torch.stack([g.members[j].module.weight.detach() if detach else g.members[j].module.weight for g in groups])
            for j in range(len(groups[0].members))]


def stacked_squared_norms(groups: list, stacks: list[torch.Tensor]) -> torch.Tensor:
    """`UnitGroup.squared_norms` of same-signature neuron/head groups at once, (M, units), float32, differentiable
    through `stacks` (from `member_stacks`): the same sums in the same order."""
    total = None
    for member, stacked in zip(groups[0].members, stacks):
        w2 = _float(stacked).square()
        count, rows, cols = w2.shape
        if member.axis == 0 and member.parts > 1:  # as UnitGroup.squared_norms: the chunks summed first
            w2 = w2.view(count, member.parts, -1, cols).sum(dim=1)
        part = w2.view(count, -1, member.width, cols).sum(dim=(2, 3)) if member.axis == 0 else (
            w2.view(count, rows, -1, member.width).sum(dim=(1, 3)))
        total = part if total is None else total + part
    return total


def apply_unit_masks(groups: list, stacks: list[torch.Tensor], mask: torch.Tensor) -> list[dict]:
    """`UnitGroup.masked` for every member of same-signature neuron/head groups: unit masks (M, units) broadcast
    onto the stacked weights (and biases); per group, member name -> (weight, bias)."""
    first = groups[0]
    out: list[dict] = [{} for _ in groups]
    for j, (member, stacked) in enumerate(zip(first.members, stacks)):
        per_feature = mask.repeat_interleave(member.width, dim=1)
        if member.axis == 0 and member.parts > 1:
            per_feature = per_feature.repeat(1, member.parts)
        weight_mask, bias_mask = (per_feature[:, :, None], per_feature) if member.axis == 0 else (
            per_feature[:, None, :], None)
        weights = stacked * weight_mask
        biases = None
        if bias_mask is not None and member.module.bias is not None:
            biases = torch.stack([g.members[j].module.bias for g in groups]) * bias_mask
        if weights.dtype != stacked.dtype:  # a mask made for another dtype (the model was cast since)
            weights, biases = weights.to(stacked.dtype), None if biases is None else biases.to(stacked.dtype)
        weights = weights.unbind(0)
        biases = [None] * len(groups) if biases is None else biases.unbind(0)
        for i, group in enumerate(groups):
            own = group.members[j]
            out[i][own.name] = (weights[i], own.module.bias if bias_mask is None else biases[i])
    return out


def _float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype == torch.float32 else tensor.float()


def restack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """`torch.stack(tensors)`, or without a copy the tensor they were unbound from (the common case: per-group
    state set from one class-wide tensor by `update_many`)."""
    first = tensors[0]
    base = first._base
    if (base is not None and base.dim() == first.dim() + 1 and base.shape[0] == len(tensors)
            and base.shape[1:] == first.shape and base.is_contiguous()):
        step = base.stride(0)
        if all(t._base is base and t.shape == first.shape and t.is_contiguous()
               and t.storage_offset() == base.storage_offset() + i * step for i, t in enumerate(tensors)):
            return base
    return torch.stack(tensors)


def kth_pairs(rows: torch.Tensor, ks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The k-th and (k+1)-th smallest entry of each row of `rows` (M, n), with `ks[i]` (1-based, < n) for row i:
    the values `pdp_hf.selection._direct` gives row by row, NaN rules included.

    >>> [v.tolist() for v in kth_pairs(torch.tensor([[0.5, 0.125, 0.375, 0.25], [3.0, 1.0, 2.0, 2.0]]), [2, 2])]
    [[0.25, 2.0], [0.375, 2.0]]
    """
    if all(k == ks[0] for k in ks):
        kth = torch.kthvalue(rows, ks[0], dim=1, keepdim=True).values
        k = ks[0]
    else:  # one sort serves rows of different ranks
        k = torch.tensor(ks, device=rows.device).view(-1, 1)
        kth = torch.sort(rows, dim=1).values.gather(1, k - 1)
    above = torch.where((rows > kth) | rows.isnan(), rows, float("inf")).amin(dim=1, keepdim=True)
    second = torch.where((rows <= kth).sum(dim=1, keepdim=True) > k, kth, above)
    return kth.view(-1), second.view(-1)


@torch.no_grad()
def select_pairs(stacked: torch.Tensor, ks: list[int], exact: bool, absolute: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For a stack of same-shape tensors: the k-th and (k+1)-th smallest |entry| (`absolute`; else entry) of each
    (`ks[i]` in [1, n - 1]), as `kth_smallest_pair` (exact) or `sampled_kth_pair` (not exact) give them tensor by
    tensor; None where only the per-tensor bracketed selection is exact (an exact refresh over 4 x 65,536 entries)."""
    rows = stacked.view(stacked.shape[0], -1)
    n = rows.shape[1]
    small = n <= 4 * SAMPLE_SIZE
    if exact and not small:
        return None
    if small:  # both selections are the direct one
        return kth_pairs(_abs_float(rows) if absolute else rows, ks)
    return _sample_pairs(rows.index_select(1, _sample_index(n, rows.device)), ks, n, absolute)


def _sample_pairs(sample: torch.Tensor, ks: list[int], n: int, absolute: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs of the samples (M, SAMPLE_SIZE) of M tensors of n entries, at the ranks that scale each k to them."""
    ranks = [min(SAMPLE_SIZE - 1, max(1, round(k / n * SAMPLE_SIZE))) for k in ks]
    return kth_pairs(_abs_float(sample) if absolute else sample, ranks)


@torch.no_grad()
def sampled_weight_pairs(groups: list, ks: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`select_pairs(unit_scores(groups), ks, exact=False)` for unstructured matrices sampled (over 4 x 65,536
    entries), gathering each matrix's sample on its own: no stacked copy of the weights, and one selection along
    the rows of the samples (on a CPU its rows run in parallel; matrix by matrix they would not). None elsewhere."""
    n = groups[0].weight.numel()
    if groups[0].kind != "unstructured" or n <= 4 * SAMPLE_SIZE:
        return None
    index = _sample_index(n, groups[0].weight.device)
    return _sample_pairs(torch.stack([g.weight.detach().reshape(-1).index_select(0, index) for g in groups]), ks, n, True)


def _abs_float(values: torch.Tensor) -> torch.Tensor:
    values = values.abs()
    return values if values.dtype == torch.float32 else values.float()


def broadcast_shape(stacked: torch.Tensor) -> tuple[int, ...]:
    """Shape of a per-matrix vector that broadcasts over a stack of matrices."""
    return (stacked.shape[0],) + (1,) * (stacked.dim() - 1)


def stack_gradients(grads: tuple, like: list[torch.Tensor]) -> torch.Tensor:
    """The incoming gradients of a fused function's outputs as one stack (zeros for outputs the loss did not use)."""
    return torch.stack([torch.zeros_like(t) if g is None else g for g, t in zip(grads, like)])


class FusedPDPMask(torch.autograd.Function):
    """PDP's masked weights w * sigmoid((w^2 - t^2)/tau) of same-shape matrices (one t, tau per matrix), as one
    stack: the same kernels and values as `pdp_hf.methods.pdp._PDPMaskedWeight` matrix by matrix. Saves only the
    weights themselves (no stacked copy is held between forward and backward: backward stacks them again)."""

    @staticmethod
    def forward(ctx, t2, tau, kernel, *weights):
        ctx.save_for_backward(t2, tau, *weights)
        ctx.kernel = kernel
        stacked = torch.stack(weights)
        shape = broadcast_shape(stacked)
        return KERNELS.forward(stacked, t2.view(shape), tau.view(shape), kernel).unbind(0)

    @staticmethod
    def backward(ctx, *grads):
        t2, tau, *weights = ctx.saved_tensors
        stacked = torch.stack(weights)
        shape = broadcast_shape(stacked)
        grad = KERNELS.backward(stacked, stack_gradients(grads, weights), t2.view(shape), tau.view(shape), ctx.kernel)
        return (None, None, None, *grad.unbind(0))


class MaskGradients(torch.autograd.Function):
    """Identity in forward for many tensors; in backward each class's gradients times its stacked 0/1 keep mask,
    one multiply per shape class: the hardened masks of `UnitGroup.zeros_kept` for the whole model at once."""

    @staticmethod
    def forward(ctx, keeps, sizes, *tensors):
        ctx.keeps, ctx.sizes = keeps, sizes
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        out, start = [], 0
        for keep, size in zip(ctx.keeps, ctx.sizes):
            part = grads[start : start + size]
            stacked = stack_gradients(part, [keep[0]] * size) if any(g is None for g in part) else torch.stack(part)
            out.extend((stacked * keep).to(stacked.dtype).unbind(0))
            start += size
        return (None, None, *out)


def owns(pruner, model: torch.nn.Module) -> bool:
    """Whether `model` runs this pruner's own modules (not an nn.DataParallel replica of them)."""
    if not pruner.modules:
        return False
    name, module = next(iter(pruner.modules.items()))
    try:
        return model.get_submodule(name) is module
    except AttributeError:
        return False


def fuse_masks(pruner) -> None:
    """The masked weights of this training forward for every group the method fuses (same-shape matrices at
    once) and every hardened group (one gradient mask per shape class), hung on the groups for `PrunedLinear`."""
    soft, hardened = [], []
    for group in pruner.groups:
        group._fused = None
        if group.hard_mask is not None:
            if group.keeps_zeros:
                hardened.append(group)
        elif (group.zeros or pruner.method.masks_before_pruning) and pruner.method.fuses(group):
            soft.append(group)
    for same in classes_by(soft, signature):
        if len(same) < 2:
            continue  # the per-group path is as cheap
        if same[0].kind == "unstructured":
            for group, weight in zip(same, pruner.method.train_weights(same)):
                member = group.members[0]
                group._fused = {member.name: (weight, member.module.bias, member.module.weight._version)}
            continue
        stacks = member_stacks(same)
        mask = pruner.method.train_unit_masks(same, functools.partial(stacked_squared_norms, same, stacks))
        for group, masked in zip(same, apply_unit_masks(same, stacks, mask)):
            group._fused = {m.name: (*masked[m.name], m.module.weight._version) for m in group.members}
    if hardened:
        _fuse_hardened(pruner, hardened)


def _fuse_hardened(pruner, groups: list) -> None:
    entries = []  # (group, member, index 0 weight / 1 bias, tensor, keep factor)
    for group in groups:
        for member in group.members:
            module = member.module
            weight_keep, bias_keep = group.keep_factors(member, module.weight.device)
            entries.append((group, member, 0, module.weight, weight_keep.expand_as(module.weight)))
            if bias_keep is not None and module.bias is not None:
                entries.append((group, member, 1, module.bias, bias_keep.expand_as(module.bias)))
    classes = classes_by([e for e in entries if e[3].requires_grad], lambda e: tensor_class(e[3]))
    if not classes:
        return
    keeps = []
    for same_shape in classes:
        key = tuple((e[1].name, e[2]) for e in same_shape) + (same_shape[0][4].device, same_shape[0][4].dtype)
        if key not in pruner._fused_keeps:
            pruner._fused_keeps[key] = torch.stack([e[4] for e in same_shape])
        keeps.append(pruner._fused_keeps[key])
    flat = [e for same_shape in classes for e in same_shape]
    outputs = MaskGradients.apply(tuple(keeps), [len(c) for c in classes], *[e[3] for e in flat])
    masked = {(e[1].name, e[2]): out for e, out in zip(flat, outputs)}
    for group in groups:
        group._fused = {}
        for member in group.members:
            module = member.module
            weight = masked.get((member.name, 0), module.weight)
            bias = masked.get((member.name, 1), module.bias)
            group._fused[member.name] = (weight, bias, module.weight._version)


def drop_fused(pruner) -> None:
    """At the end of the model's forward: drop what this forward computed for its groups. The fused masked weights,
    and what `UnitGroup.once_per_forward` still holds when a member ran more often than once (DeBERTa runs its Q and
    K projections again on the relative positions), so no later forward reuses a mask whose graph is spent."""
    for group in pruner.groups:
        group._fused = None
        group._forward_cache = None


def fusing_enabled(pruner) -> bool:
    """`PDPConfig.fused_masks` for the device the targeted weights are on ('auto': not on the CPU). It decides both
    halves of a step: the selection (`Pruner.step`) and the masks (`before_forward`)."""
    setting = pruner.config.fused_masks
    if setting == "off" or not pruner.modules:
        return False
    return setting == "on" or next(iter(pruner.modules.values())).weight.device.type != "cpu"


def fusing_allowed(model: torch.nn.Module, pruner) -> bool:
    """Whether this forward of `model` uses the fused masks: `fusing_enabled`, and a training forward with
    gradients, outside torch.compile and gradient checkpointing, by the pruner's own model (see the module
    docstring)."""
    return (fusing_enabled(pruner) and model.training and torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and not _checkpointing(model) and owns(pruner, model))


def _checkpointing(model: torch.nn.Module) -> bool:
    for attr in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # Transformers 5 renamed it
        if isinstance(getattr(type(model), attr, None), property):
            return bool(getattr(model, attr))
    return False


def before_forward(model: torch.nn.Module, args) -> None:
    """Forward pre-hook `apply_pruning` registers on the model: the step's fused masked weights."""
    from .attached import get_pruner

    pruner = get_pruner(model)
    if pruner is not None and fusing_allowed(model, pruner):
        fuse_masks(pruner)


def after_forward(model: torch.nn.Module, args, output) -> None:
    """Forward hook: the fused masked weights are autograd's from now on."""
    from .attached import get_pruner

    pruner = get_pruner(model)
    if pruner is not None:
        drop_fused(pruner)
