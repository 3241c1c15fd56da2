"""PDP's training-cost machinery: the fused (compiled) mask kernels equal the eager ones and the formula, the eager
fallback is taken with a logged reason where compilation fails, and after hardening the pruned weights are zero in
place (optimizer state too) and stay zero through masked gradients, training exactly as the masked forward did."""

import contextlib
import logging
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from pdp_hf import PDPConfig, PrunerTrainer, apply_pruning, finalize_pruning, get_pruner
from pdp_hf.injection import Pruner
from pdp_hf.kernels import KERNELS, mask_gradient, masked_linear, masked_weight_formula, masked_weight_grad_formula
from pdp_hf.units import multiplier_dtype
from tests.conftest import text_dataset, tiny_bert, training_args


@pytest.fixture
def fresh_kernels():
    KERNELS.reset()
    yield KERNELS
    KERNELS.reset()


def _operands(shape, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(*shape, generator=g) * 0.1).to(dtype)
    grad = torch.randn(*shape, generator=g).to(dtype)
    if len(shape) == 3:  # n:m: one threshold per group of M, shaped (rows, G, 1)
        t2 = w.float().abs().sort(-1).values[..., 1:2].square()
    else:
        t2 = w.float().abs().flatten().kthvalue(w.numel() // 2).values.square()
    tau = (0.05 * t2).clamp_min(1e-12)
    return w, grad, t2, tau


@pytest.mark.parametrize("shape", [(48, 32), (6, 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_eager_and_formula_agree(shape, dtype):
    w, grad, t2, tau = _operands(shape, dtype)
    forward = {mode: KERNELS.forward(w, t2, tau, mode) for mode in ("eager", "compiled")}
    backward = {mode: KERNELS.backward(w, grad, t2, tau, mode) for mode in ("eager", "compiled")}
    tol = dict(rtol=0, atol=0) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)  # fp32 CPU: bit-identical
    for values, reference in ((forward, masked_weight_formula(w, t2, tau)),
                              (backward, masked_weight_grad_formula(w, grad, t2, tau))):
        for mode, value in values.items():
            assert value.dtype == dtype, mode
            torch.testing.assert_close(value, reference, **tol)
    # The backward formula is the derivative of the forward one (autograd through the plain formula).
    wf = w.float().requires_grad_()
    (masked_weight_formula(wf, t2, tau) * grad.float()).sum().backward()
    derivative_tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else tol  # bf16: rounded output
    torch.testing.assert_close(backward["compiled"].float(), wf.grad, **derivative_tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_magnitude_keep_kernel_agrees(dtype):
    w, _, _, _ = _operands((48, 32), dtype)
    cut = w.float().abs().flatten().kthvalue(700).values
    expected = w.float().abs() > cut
    for mode in ("eager", "compiled"):
        keep = KERNELS.keep_above(w, cut, multiplier_dtype(dtype), mode)
        assert keep.dtype == multiplier_dtype(dtype) and torch.equal(keep.bool(), expected), mode
        assert int((keep == 0).sum()) == 700


def test_saturated_mask_gives_no_nan(fresh_kernels):
    w = torch.tensor([[1.0, 1e-3, 0.0, -2.0]])
    t2, tau = torch.tensor(1e-4), torch.tensor(1e-30)  # m is exactly 0 or 1 everywhere
    for mode in ("eager", "compiled"):
        grad = KERNELS.backward(w, torch.ones_like(w), t2, tau, mode)
        assert torch.equal(grad, torch.tensor([[1.0, 0.0, 0.0, 1.0]])), mode


def _unclamped_forward(w, t2, tau):
    return w * torch.sigmoid((w * w - t2) / tau)


def _unclamped_backward(w, grad, t2, tau):
    w2 = w * w
    m = torch.sigmoid((w2 - t2) / tau)
    boost = torch.where(m == 1.0, torch.zeros_like(w2), w2 * (2.0 / tau) * (1.0 - m))
    return (boost + 1.0) * m * grad


def test_mask_kernels_meet_no_subnormal_float_and_change_no_value_above_the_floor():
    """x = (w^2 - t^2) / tau across [-100, 400]: the kernels equal the plain formula bit for bit wherever its mask is
    at least 2^-100 (every x >= -69, the whole range at the default temperature), write exact zeros below, and never
    evaluate the sigmoid where exp(-x) or the mask itself is a float32 subnormal (|x| > 80): on a CPU each vector
    operation meeting a subnormal runs through microcode assists."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from pdp_hf.topk import MASK_FLOOR

    t2, tau = torch.tensor(1.0), torch.tensor(0.01)
    x = torch.linspace(-100.0, 400.0, 20_001)  # x >= -t^2 / tau = -100
    w = (x * tau + t2).sqrt().view(1, -1)
    w = torch.cat([w, -w])
    grad = torch.full_like(w, 0.5)

    class SigmoidInputs(TorchDispatchMode):
        widest = 0.0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.sigmoid.default, torch.ops.aten.sigmoid_.default):
                SigmoidInputs.widest = max(SigmoidInputs.widest, float(args[0].abs().max()))
            return func(*args, **(kwargs or {}))

    plain_mask = torch.sigmoid((w * w - t2) / tau)
    above = plain_mask >= MASK_FLOOR
    assert int((~above).sum()) > 0 and int((plain_mask[~above] > 0).sum()) > 0  # the band the floor clears
    tiny = torch.finfo(torch.float32).tiny
    for mode in ("eager", "compiled"):
        with SigmoidInputs() if mode == "eager" else contextlib.nullcontext():  # compile refuses a dispatch mode
            forward = KERNELS.forward(w, t2, tau, mode)
            backward = KERNELS.backward(w, grad, t2, tau, mode)
        for value, plain in ((forward, _unclamped_forward(w, t2, tau)), (backward, _unclamped_backward(w, grad, t2, tau))):
            assert torch.equal(value[above], plain[above]), mode
            assert bool((value[~above] == 0).all()), mode
            assert int(((value != 0) & (value.abs() < tiny)).sum()) == 0, mode
    assert 0 < SigmoidInputs.widest <= 80.0  # the eager kernels' sigmoid saw only |x| <= 80


@pytest.mark.parametrize("where", ["compile", "call"])
def test_fallback_to_eager_is_logged_once(fresh_kernels, monkeypatch, caplog, where):
    def broken_compile(fn, **kwargs):
        if where == "compile":
            raise RuntimeError("no C++ compiler found\nmore details")

        def run(*args):
            raise OSError("inductor failed to build the kernel")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    w, grad, t2, tau = _operands((8, 8))
    with caplog.at_level(logging.WARNING, logger="pdp_hf.kernels"):
        out = KERNELS.forward(w, t2, tau, "auto")
        KERNELS.backward(w, grad, t2, tau, "auto")
    assert torch.equal(out, KERNELS.forward(w, t2, tau, "eager"))
    warnings = [r.getMessage() for r in caplog.records if "could not be compiled" in r.getMessage()]
    assert len(warnings) == 1 and ("no C++ compiler found" if where == "compile" else "inductor failed") in warnings[0]
    assert "mask_kernel='eager'" in warnings[0] and KERNELS.failure is not None
    KERNELS.reset()
    with pytest.raises((RuntimeError, OSError)):
        KERNELS.forward(w, t2, tau, "compiled")  # asked for explicitly: no silent fallback


@pytest.mark.parametrize("autocast", [False, True])
def test_model_training_compiled_equals_eager(autocast):
    """A whole tiny BERT in the ramp: logits and every gradient agree between the two kernels (fp32, and bf16
    autocast on CPU)."""
    batch = {"input_ids": torch.tensor(text_dataset(8)["input_ids"]), "labels": torch.tensor(text_dataset(8)["labels"])}
    results = {}
    for kernel in ("eager", "compiled"):
        model = apply_pruning(tiny_bert(seed=1), PDPConfig(target_sparsity=0.7, pruning_start=0, pruning_end=4,
                                                           mask_kernel=kernel))
        pruner = get_pruner(model)
        pruner.set_total_steps(8)
        pruner.step(2)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(**batch)
        out.loss.backward()
        results[kernel] = (out.logits.float(), {n: p.grad.clone() for n, p in model.named_parameters()})
    tol = dict(rtol=1e-5, atol=1e-6) if not autocast else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(results["compiled"][0], results["eager"][0], **tol)
    for name, grad in results["eager"][1].items():
        torch.testing.assert_close(results["compiled"][1][name], grad, **tol, msg=lambda m, n=name: f"{n}: {m}")


def test_mask_gradient_is_free_in_forward_and_masks_backward():
    w = torch.randn(4, 3, requires_grad=True)
    keep = torch.tensor([[0.0], [1.0], [0.0], [1.0]], dtype=torch.bfloat16)  # broadcast, as for neurons
    out = mask_gradient(w, keep)
    assert out.data_ptr() == w.data_ptr()  # no copy of the weight
    (out * 2).sum().backward()
    assert torch.equal(w.grad, torch.tensor([[0.0] * 3, [2.0] * 3, [0.0] * 3, [2.0] * 3]))
    with torch.no_grad():
        assert mask_gradient(w, keep) is w


@pytest.mark.parametrize("input_shape, out, bias_mask", [((4, 16, 32), 32, False), ((2, 8, 32), 64, True),
                                                         ((5, 32), 48, True), ((32,), 16, False)])
def test_masked_linear_equals_autograd_through_the_product_bit_for_bit(input_shape, out, bias_mask):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*input_shape, generator=g, requires_grad=True)
    w = torch.randn(out, input_shape[-1], generator=g, requires_grad=True)
    b = torch.randn(out, generator=g, requires_grad=True)
    rows = torch.rand(out, 1, generator=g) > 0.5
    weight_keep = (rows if bias_mask else torch.rand(out, input_shape[-1], generator=g) > 0.5).to(torch.bfloat16)
    bias_keep = rows[:, 0].to(torch.bfloat16) if bias_mask else None
    grad = torch.randn(*input_shape[:-1], out, generator=g)
    reference = torch.nn.functional.linear(x, w * weight_keep, b if bias_keep is None else b * bias_keep)
    ours = masked_linear(x, w, b, weight_keep, bias_keep)
    assert torch.equal(ours, reference)
    for a, c in zip(torch.autograd.grad(reference, (x, w, b), grad), torch.autograd.grad(ours, (x, w, b), grad)):
        assert torch.equal(a, c)


@pytest.mark.parametrize("config", [dict(method="magnitude"), dict(method="magnitude", granularity="neuron"),
                                    dict(pruning_start=0, pruning_end=0, harden_at=0)])
def test_a_fixed_mask_keeps_no_masked_weight_for_backward(config):
    """Magnitude's ramp and a hardened mask without kept zeros (no optimizer handed over): autograd holds the
    weights, the inputs and the masks, never a weight-sized masked copy, and the gradients are those of the
    product."""
    model = tiny_bert()
    apply_pruning(model, PDPConfig(target_sparsity=0.5, **{"pruning_start": 0, "pruning_end": 4, **config}))
    pruner = get_pruner(model)
    pruner.set_total_steps(10)
    pruner.step(2)
    weights = {p.data_ptr() for p in model.parameters()}
    shapes = {tuple(m.weight.shape) for m in pruner.modules.values()}
    copies = []

    def pack(tensor):
        if tensor.dtype == torch.float32 and tuple(tensor.shape) in shapes and tensor.data_ptr() not in weights:
            copies.append(tuple(tensor.shape))
        return tensor

    batch = dict(input_ids=torch.randint(1, 60, (4, 8)), labels=torch.randint(0, 2, (4,)))
    torch.manual_seed(1)  # the same dropout in both forwards
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    assert copies == [] and len(pruner.modules) == (4 if config.get("granularity") == "neuron" else 12)
    loss.backward()
    ours = {n: m.weight.grad.clone() for n, m in pruner.modules.items()}
    model.zero_grad()
    for module in pruner.modules.values():  # the same step through autograd of the masked products
        module.fixed_keeps = lambda: None
    torch.manual_seed(1)
    model(**batch).loss.backward()
    assert all(torch.equal(ours[n], m.weight.grad) for n, m in pruner.modules.items())


class _Watch(TrainerCallback):
    """After hardening, at every optimizer step: pruned weights (and bias entries) are exactly zero, so are the
    optimizer's moments for them, and the forward uses the weight tensor itself (no masked copy)."""

    def __init__(self, model):
        self.model, self.checked = model, 0

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        pruner = get_pruner(self.model)
        if pruner is None or not pruner.hardened:
            return
        opt_state = optimizer.state
        for group in pruner.groups:
            assert group.keeps_zeros
            for member in group.members:
                module = member.module
                weight_pruned, bias_pruned = group.pruned_entries(member)
                assert not module.weight[weight_pruned.expand_as(module.weight)].any(), member.name
                for key in ("exp_avg", "exp_avg_sq"):
                    moment = opt_state[module.weight][key]
                    assert not moment[weight_pruned.expand_as(moment)].any(), (member.name, key)
                if bias_pruned is not None:
                    assert not module.bias[bias_pruned].any(), member.name
                    assert not opt_state[module.bias]["exp_avg"][bias_pruned].any(), member.name
                weight, _ = module.pruned_weight_and_bias()
                assert weight.data_ptr() == module.weight.data_ptr()
        self.checked += 1


@pytest.mark.parametrize("granularity", ["unstructured", "attention=head,ffn=neuron", "block"])
def test_hardened_zeros_stay_zero_and_train_as_the_masked_forward(granularity, monkeypatch, tmp_path):
    config = PDPConfig(target_sparsity=0.5, granularity=granularity, block_size=8, pruning_start=2, pruning_end=6,
                       harden_at=8)
    args = dict(max_steps=16, weight_decay=0.1, max_grad_norm=0.5, save_strategy="steps", save_steps=12)
    finals = {}
    for mode in ("masked forward", "zeros kept"):
        if mode == "masked forward":  # the pre-0.3 path: the trainer hands no optimizer to the pruner
            monkeypatch.setattr(Pruner, "set_optimizer", lambda self, optimizer: None)
        else:
            monkeypatch.undo()
        model = tiny_bert(seed=2)
        watch = _Watch(model)
        out = tmp_path / mode.replace(" ", "_")
        trainer = PrunerTrainer(model=model, args=training_args(out, **args), train_dataset=text_dataset(),
                                pdp_config=config, callbacks=[watch] if mode == "zeros kept" else [])
        targets = [name + ".weight" for name in trainer.pruner.modules]
        trainer.train()
        finals[mode] = {k: v.clone() for k, v in model.state_dict().items()}
        if mode == "zeros kept":
            assert watch.checked == 8  # steps 8..15
            # The checkpoint taken after hardening already is the sparse model: its zeros are the final ones.
            saved = load_file(os.path.join(out, "checkpoint-12", "model.safetensors"))
            for name in targets:
                assert torch.equal(saved[name] == 0, finals[mode][name] == 0), name
    for name, value in finals["zeros kept"].items():
        assert torch.equal(value, finals["masked forward"][name]), name


def test_custom_loop_with_sgd_momentum_keeps_zeros():
    """Without the Trainer: `set_optimizer` with SGD (momentum, weight decay) zeroes the momentum buffers at
    hardening; without it the hardened mask is multiplied in (correct for any optimizer)."""
    batch = {"input_ids": torch.tensor(text_dataset(8)["input_ids"]), "labels": torch.tensor(text_dataset(8)["labels"])}
    model = apply_pruning(tiny_bert(seed=3), PDPConfig(target_sparsity=0.6, pruning_start=0, pruning_end=2, harden_at=3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    pruner = get_pruner(model)
    pruner.set_total_steps(8)
    pruner.set_optimizer(optimizer)
    for step in range(8):
        pruner.step(step)
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    layer = model.bert.encoder.layer[0].output.dense
    zeros = int((layer.weight == 0).sum())
    assert zeros == round(0.6 * layer.weight.numel())
    assert int((optimizer.state[layer.weight]["momentum_buffer"] == 0).sum()) >= zeros
    finalize_pruning(model)
    assert int((layer.weight == 0).sum()) == zeros


def test_many_kinds_of_calls_do_not_hit_the_recompile_limit(fresh_kernels):
    """One process meets many kinds of calls (fp32 and bf16 models, matrices and N:M groups): each kind gets its own
    compiled copy, so dynamo's per-code-object limit on compiled variants is never reached (here lowered to 2)."""
    import torch._dynamo

    # dynamo's own patch: monkeypatch's undo left the option unreadable for the tests after this one
    with torch._dynamo.config.patch(recompile_limit=2):
        for dtype in (torch.float32, torch.bfloat16):
            for shape in ((8, 8), (2, 4, 4), (64,)):
                w, _, t2, tau = _operands(shape, dtype) if len(shape) > 1 else (torch.randn(64).to(dtype), None,
                                                                                torch.tensor(0.5), torch.tensor(0.1))
                torch.testing.assert_close(KERNELS.forward(w, t2, tau, "compiled"), KERNELS.forward(w, t2, tau, "eager"))
    assert torch._dynamo.config.recompile_limit > 2


class CodedMomentumSGD(torch.optim.Optimizer):
    """SGD with momentum kept as uint8 codes (as 8-bit optimizers keep theirs): code c means (c - 128) / 128 * scale,
    so the code 0 is a momentum of -scale, not zero."""

    def __init__(self, params, lr=0.05, scale=0.5):
        super().__init__(params, dict(lr=lr, scale=scale))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                code = state.setdefault("momentum_code", torch.full_like(p, 128, dtype=torch.uint8))
                momentum = (code.float() - 128) / 128 * group["scale"] * 0.9 + p.grad
                state["momentum_code"] = (momentum / group["scale"] * 128 + 128).round().clamp(0, 255).to(torch.uint8)
                p.sub_(group["lr"] * (state["momentum_code"].float() - 128) / 128 * group["scale"])


def test_a_quantized_optimizer_state_keeps_the_mask_in_the_forward_instead_of_zeroing_codes(caplog):
    """Silently wrong before: hardening wrote the code 0 into the pruned weights' momentum, which decodes to -scale, and
    the forward used the weights as they were: the pruned weights trained again. Now the hard mask stays in the
    forward, and finalize gives the exact zeros."""
    batch = {"input_ids": torch.tensor(text_dataset(8)["input_ids"]), "labels": torch.tensor(text_dataset(8)["labels"])}
    model = apply_pruning(tiny_bert(seed=3), PDPConfig(target_sparsity=0.6, pruning_start=0, pruning_end=2, harden_at=3))
    optimizer = CodedMomentumSGD(model.parameters())
    pruner = get_pruner(model)
    pruner.set_total_steps(8)
    pruner.set_optimizer(optimizer)
    layer = model.bert.encoder.layer[0].output.dense
    with caplog.at_level(logging.INFO, logger="pdp_hf.pruner"):
        for step in range(8):
            pruner.step(step)
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    assert "the optimizer keeps torch.uint8 state ('momentum_code')" in caplog.text
    weight, _ = layer.pruned_weight_and_bias()
    zeros = round(0.6 * layer.weight.numel())
    assert int((weight == 0).sum()) == zeros  # what the forward uses
    finalize_pruning(model)
    assert int((layer.weight == 0).sum()) == zeros
