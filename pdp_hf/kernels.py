"""PDP's soft-mask kernels: forward w * m(w), backward g * m (1 + (2 w^2 / tau)(1 - m)), m = sigmoid((w^2 - t^2) / tau).

The cost of PDP during the ramp is memory traffic over every targeted weight, in every forward and backward. The
floor is one pass per direction: forward reads W and writes the masked weight; backward reads W and the incoming
gradient and writes the weight gradient. Eager PyTorch runs each elementwise operation as its own pass (about 11
passes in forward and 20 in backward here). `torch.compile` fuses each direction into one kernel (inductor: C++
with OpenMP on CPU, Triton on GPU).

`mask_kernel` (PDPConfig) chooses: "compiled" (fail loudly if compilation fails), "eager" (never compile), "auto"
(compile, and on any failure to compile log the reason once and use eager from then on). Both paths evaluate the
same operations in the same order: on CPU in float32 they give bit-identical values (tested); elsewhere expect
agreement to float rounding. Compiling costs about 20 s once per process on the 2-core CPU here (inductor caches
its kernels on disk, so later processes start faster); one dynamic-shape kernel serves every matrix shape.

Inside a model that is itself being compiled (`TrainingArguments(torch_compile=True)`), the plain formulas are
traced instead, so the outer graph fuses them.
"""

from __future__ import annotations

import logging
import threading
import types

import torch
import torch.nn.functional as F

from .topk import MASK_FLOOR

logger = logging.getLogger(__name__)

# sigmoid(x) in float32 is exactly 1 for x >= 17 and below MASK_FLOOR for x <= -70: clamping x to [-80, 80] changes
# no value that `pdp_sigmoid` returns, and keeps exp(-x) out of the subnormal range it enters for x in [87, 104]
# (kept weights far above the threshold). On x86 CPUs every vector op that meets a subnormal runs through microcode
# assists: with 3% of the weights of a BERT layer in that band the mask kernels ran 1.4x slower, and the backward
# up to 6x.
_SIGMOID_CLAMP = 80.0

# -- the formulas, written once (pure functions: what torch.compile fuses and what the reference tests check) -------
def pdp_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """sigmoid(x) with the values below MASK_FLOOR (2^-100) as exact zeros, computed without subnormal floats.

    The floor is SMART's (`pdp_hf.topk.MASK_FLOOR`): a unit masked by less contributes nothing a float32 sum beside
    kept units can hold. With PDP's default relative temperature (0.05) x >= -20, so the floor never applies there.
    """
    m = torch.sigmoid(x.clamp(-_SIGMOID_CLAMP, _SIGMOID_CLAMP))
    return torch.where(m < MASK_FLOOR, 0.0, m)


def masked_weight_formula(w: torch.Tensor, t2: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    wf = w.float()
    return (wf * pdp_sigmoid((wf * wf - t2) / tau)).to(w.dtype)


def masked_weight_grad_formula(w: torch.Tensor, grad: torch.Tensor, t2: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    wf = w.float()
    w2 = wf * wf
    m = pdp_sigmoid((w2 - t2) / tau)
    # Where m saturates to exactly 1 the second term is 0 (its limit); computing it there could give inf * 0 = NaN
    # when tau is tiny.
    boost = torch.where(m == 1.0, torch.zeros_like(w2), w2 * (2.0 / tau) * (1.0 - m))
    # The same order of operations as the eager version, so both round alike.
    return ((boost + 1.0) * m * grad.float()).to(w.dtype)


def keep_above_formula(w: torch.Tensor, cut: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Magnitude's keep mask as 0/1 multipliers: 1 where |w| > cut."""
    return torch.where(w.abs() > cut, 1.0, 0.0).to(dtype)


def _eager_keep_above(w: torch.Tensor, cut: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (w.abs() > cut).to(dtype)


# -- eager versions with few temporaries (in place on one fresh float32 tensor) -------------------------------------
def _eager_forward(w: torch.Tensor, t2: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    wf = w.float()
    mask = (wf * wf).sub_(t2).div_(tau).clamp_(-_SIGMOID_CLAMP, _SIGMOID_CLAMP).sigmoid_()
    return mask.masked_fill_(mask < MASK_FLOOR, 0.0).mul_(wf).to(w.dtype)


def _eager_backward(w: torch.Tensor, grad: torch.Tensor, t2: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    wf = w.float()
    w2 = wf * wf
    mask = (w2 - t2).div_(tau).clamp_(-_SIGMOID_CLAMP, _SIGMOID_CLAMP).sigmoid_()
    mask.masked_fill_(mask < MASK_FLOOR, 0.0)
    boost = w2.mul_(2.0 / tau).mul_(1.0 - mask).masked_fill_(mask == 1.0, 0.0)
    return boost.add_(1.0).mul_(mask).mul_(grad.float()).to(w.dtype)


class _Kernels:
    """The compiled kernels, built on first use; fall back to eager for good after a failure to compile (mode
    "auto"). A (device type, dtype, rank) that has run compiled once is trusted: later errors there are real errors
    and propagate."""

    def __init__(self):
        self._lock = threading.Lock()
        self._compiled: dict[tuple, object] = {}
        self._failed: str | None = None
        self._working: set[tuple] = set()

    def reset(self) -> None:
        with self._lock:
            self._compiled, self._failed, self._working = {}, None, set()

    @property
    def failure(self) -> str | None:
        """Why compilation is unavailable (None when it works or has not been tried)."""
        return self._failed

    def _compiled_fn(self, key: tuple):
        """The compiled formula for one kind of call (formula, devices, dtypes, ranks, constants). Each kind gets
        its own copy of the formula's code object: dynamo caps the compiled variants per code object (8 by
        default), and one process may meet many kinds (fp32 and bf16 models, matrices and N:M groups); within a
        kind, `dynamic=True` serves every shape."""
        with self._lock:
            fn = self._compiled.get(key)
            if fn is None:
                base = _FORMULAS[key[0]]
                code = base.__code__.replace(co_name=f"{base.__name__}_{len(self._compiled)}")
                variant = types.FunctionType(code, base.__globals__, code.co_name, base.__defaults__)
                fn = self._compiled[key] = torch.compile(variant, dynamic=True, fullgraph=True)
            return fn

    def _run(self, index: int, eager, mode: str, args: tuple) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return _FORMULAS[index](*args)
        if mode == "eager" or (mode == "auto" and self._failed is not None):
            return eager(*args)
        key = (index,) + tuple((a.device.type, a.dtype, a.dim()) if isinstance(a, torch.Tensor) else a for a in args)
        try:
            out = self._compiled_fn(key)(*args)
        except Exception as err:  # noqa: BLE001 - any failure to build the kernel; see the re-raise below
            if mode == "compiled" or key in self._working:
                raise
            self._failed = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            logger.warning(
                "pdp_hf: the fused mask kernels could not be compiled (%s); using the eager masks instead "
                "(same values, more memory passes per step). Set PDPConfig.mask_kernel='eager' to skip the attempt.",
                self._failed,
            )
            return eager(*args)
        self._working.add(key)
        return out

    def forward(self, w, t2, tau, mode: str = "auto") -> torch.Tensor:
        return self._run(0, _eager_forward, mode, (w, t2, tau))

    def backward(self, w, grad, t2, tau, mode: str = "auto") -> torch.Tensor:
        return self._run(1, _eager_backward, mode, (w, grad, t2, tau))

    def keep_above(self, w, cut, dtype, mode: str = "auto") -> torch.Tensor:
        """1 where |w| > cut, else 0, in `dtype` (one pass; the eager version is several times slower on CPU)."""
        return self._run(2, _eager_keep_above, mode, (w, cut, dtype))


_FORMULAS = (masked_weight_formula, masked_weight_grad_formula, keep_above_formula)
KERNELS = _Kernels()


class _MaskGradient(torch.autograd.Function):
    """Identity in forward (no pass over the tensor); backward multiplies the gradient by a 0/1 keep mask (one
    pass).

    After hardening, pruned weights are zero in place: the forward needs no mask, and this keeps their gradient
    (and so the optimizer's update and moments) at zero."""

    @staticmethod
    def forward(ctx, tensor, keep):
        ctx.save_for_backward(keep)
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return (grad * keep).to(grad.dtype), None


def mask_gradient(tensor: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`tensor` itself in forward; in backward its gradient times `keep` (0/1 values broadcastable to it, in a
    dtype whose product with the gradient keeps the gradient's dtype, see `pdp_hf.units.multiplier`)."""
    if not torch.is_grad_enabled() or not tensor.requires_grad:
        return tensor
    return _MaskGradient.apply(tensor, keep)


def _times(tensor: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    product = tensor * keep
    return product if product.dtype == tensor.dtype else product.to(tensor.dtype)


class _MaskedLinear(torch.autograd.Function):
    """`F.linear(input, weight * weight_keep, bias * bias_keep)` for fixed 0/1 keeps, holding no masked weight from
    forward to backward: backward multiplies again (one pass over the weight) where autograd through the product
    keeps a weight-sized tensor per matrix alive for the whole step. The same values and gradients."""

    @staticmethod
    def forward(ctx, input, weight, bias, weight_keep, bias_keep):
        ctx.save_for_backward(input, weight, weight_keep, bias_keep)
        masked_bias = bias if bias is None or bias_keep is None else _times(bias, bias_keep)
        return F.linear(input, _times(weight, weight_keep), masked_bias)

    @staticmethod
    def backward(ctx, grad):
        input, weight, weight_keep, bias_keep = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        flat = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_input = grad.matmul(_times(weight, weight_keep))
        if ctx.needs_input_grad[1]:
            grad_weight = _times(flat.t().mm(input.reshape(-1, input.shape[-1])), weight_keep)
        if ctx.needs_input_grad[2]:
            grad_bias = flat.sum(0) if bias_keep is None else _times(flat.sum(0), bias_keep)
        return grad_input, grad_weight, grad_bias, None, None


def masked_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, weight_keep: torch.Tensor,
                  bias_keep: torch.Tensor | None) -> torch.Tensor:
    """A linear layer through weights masked by fixed 0/1 keeps (see `_MaskedLinear`). Under autocast, and where no
    gradient is needed, the product itself (autocast casts inside the linear, and nothing is kept anyway)."""
    needs_grad = torch.is_grad_enabled() and (weight.requires_grad or input.requires_grad)
    if not needs_grad or torch.is_autocast_enabled(input.device.type):
        masked_bias = bias if bias is None or bias_keep is None else _times(bias, bias_keep)
        return F.linear(input, _times(weight, weight_keep), masked_bias)
    return _MaskedLinear.apply(input, weight, bias, weight_keep, bias_keep)

