"""Put masks on Linear weights (`apply_pruning`) and take them off with the zeros baked in (`finalize_pruning`).

Why a class swap and not `torch.nn.utils.parametrize`: a parametrization renames `weight` to
`parametrizations.weight.original` in the state_dict. Swapping the module's class to `PrunedLinear` (a subclass
of `nn.Linear` that only changes `forward`) keeps every state_dict key as in plain Transformers, so Trainer
checkpoints hold the dense weights under their usual names, resume loads them strictly, DDP sees the same
parameters, and `finalize_pruning` only has to set the class back.
"""

from __future__ import annotations

import json
import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

from .config import PDPConfig
from .methods import MaskMethod, get_method
from .methods.base import remove_buffer
from .schedules import ramp_fraction, resolve_step, zeros_at
from .targets import find_targets

logger = logging.getLogger(__name__)

PRUNER_ATTR = "_pdp_pruner"
STATE_NAME = "pruning_state.safetensors"


class PrunedLinear(nn.Linear):
    """An `nn.Linear` whose forward uses the masked weight. Never constructed: `apply_pruning` swaps the class."""

    pdp_method: MaskMethod
    pdp_zeros: int
    pdp_hard_mask: torch.Tensor | None

    def pruned_weight(self) -> torch.Tensor:
        if self.pdp_hard_mask is not None:
            return self.weight * self.pdp_hard_mask
        if self.pdp_zeros == 0:
            return self.weight
        if self.training:
            return self.pdp_method.soft_weight(self)
        return self.pdp_method.eval_weight(self)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.pruned_weight(), self.bias)


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def get_pruner(model: nn.Module) -> "Pruner | None":
    """The `Pruner` attached by `apply_pruning`, or None (also through DDP-style `.module` wrappers)."""
    return getattr(_unwrap(model), PRUNER_ATTR, None)


class Pruner:
    """Owns the targeted layers of one model and moves them through the schedule.

    Custom training loops drive it directly:

    ```python
    pruner = get_pruner(apply_pruning(model, config))
    pruner.set_total_steps(num_optimizer_steps)
    for step in range(num_optimizer_steps):
        pruner.step(step)          # before the forward passes of optimizer step `step`
        ...                        # forward, backward, optimizer.step()
    finalize_pruning(model)
    ```
    """

    def __init__(self, config: PDPConfig, modules: dict[str, PrunedLinear], method: MaskMethod):
        self.config = config
        self.modules = modules
        self.method = method
        self.total_steps: int | None = None
        self.budgets: dict[str, int] | None = None  # final zeros per layer, fixed at pruning start
        self.hardened = False

    # -- schedule -------------------------------------------------------------------------------------------------
    def set_total_steps(self, total_steps: int) -> None:
        """Resolve fractional schedule points against the number of optimizer steps, and check they fit."""
        if total_steps <= 0:
            raise ValueError(f"Training has {total_steps} optimizer steps; pruning needs at least one.")
        c = self.config
        points = {"pruning_start": c.pruning_start, "pruning_end": c.pruning_end, "harden_at": c.harden_at}
        steps = {k: resolve_step(v, total_steps) for k, v in points.items() if v is not None}
        for name, step in steps.items():
            if step > total_steps:
                raise ValueError(
                    f"PDPConfig.{name}={points[name]!r} is step {step}, after the end of training "
                    f"({total_steps} optimizer steps). Shorten the schedule, use fractions (< 1) or train longer."
                )
        if steps["pruning_end"] < steps["pruning_start"]:
            raise ValueError(
                f"PDPConfig.pruning_end={c.pruning_end!r} (step {steps['pruning_end']}) comes before "
                f"pruning_start={c.pruning_start!r} (step {steps['pruning_start']})."
            )
        if "harden_at" in steps and steps["harden_at"] < steps["pruning_end"]:
            raise ValueError(
                f"PDPConfig.harden_at={c.harden_at!r} (step {steps['harden_at']}) comes before "
                f"pruning_end={c.pruning_end!r} (step {steps['pruning_end']}); masks can only harden at full sparsity."
            )
        self.total_steps = total_steps
        self.start, self.end = steps["pruning_start"], steps["pruning_end"]
        self.harden_step = steps.get("harden_at")

    def fraction(self, step: int) -> float:
        return ramp_fraction(step, self.start, self.end, self.config.sparsity_schedule)

    def step(self, step: int) -> None:
        """Bring every layer to the sparsity of optimizer step `step` (0-based, the step about to run)."""
        if self.total_steps is None:
            raise RuntimeError("Call Pruner.set_total_steps(n) before Pruner.step(); PrunerTrainer does it for you.")
        if self.hardened:
            return
        if step >= self.start and self.budgets is None:
            self.budgets = self._compute_budgets()
        if self.harden_step is not None and step >= self.harden_step:
            self.harden()
            return
        frac = self.fraction(step)
        # Between exact refreshes the threshold is a fresh sampled estimate (it never depends on an earlier step,
        # so a resumed run computes the same values as an uninterrupted one).
        exact = (step - self.start) % self.config.threshold_refresh_steps == 0
        if exact:
            self.check_finite(f"optimizer step {step}")
        for name, module in self.modules.items():
            zeros = zeros_at(frac, self.budgets[name]) if self.budgets else 0
            module.pdp_zeros = zeros
            if zeros:
                self.method.update(module, zeros, exact)

    def _compute_budgets(self) -> dict[str, int]:
        target = self.config.target_sparsity
        if self.config.sparsity_distribution == "uniform":
            return {n: int(round(target * m.weight.numel())) for n, m in self.modules.items()}
        return global_budgets({n: self.method.scores(m.weight) for n, m in self.modules.items()}, target)

    @torch.no_grad()
    def non_finite_modules(self) -> list[str]:
        return [name for name, m in self.modules.items() if not bool(torch.isfinite(m.weight).all())]

    def check_finite(self, when: str) -> None:
        """Raise FloatingPointError naming every targeted module whose weight holds NaN or Inf."""
        bad = self.non_finite_modules()
        if bad:
            raise FloatingPointError(
                f"NaN/Inf in the weight of {bad} at {when}; pruning cannot rank such weights. Lower the learning "
                "rate, enable gradient clipping (max_grad_norm), or use bf16 instead of fp16."
            )

    @torch.no_grad()
    def harden(self) -> None:
        """Fix every mask to exactly its final budget of zeros; training may continue with fixed masks."""
        self.check_finite("hardening")
        if self.budgets is None:
            self.budgets = self._compute_budgets()
        for name, module in self.modules.items():
            module.pdp_zeros = self.budgets[name]
            module.pdp_hard_mask = self.method.hard_mask(module, self.budgets[name])
        self.hardened = True

    # -- logging --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """`sparsity` (hard-mask view over all targets), `temperature`, `mask_gap` (mean |soft - hard| mask)."""
        numel = sum(m.weight.numel() for m in self.modules.values())
        zeros = sum(m.pdp_zeros for m in self.modules.values())
        active = [m for m in self.modules.values() if m.pdp_zeros and m.pdp_hard_mask is None]
        gap = sum(float(self.method.mask_gap(m)) for m in active)
        return {
            "sparsity": zeros / numel,
            "temperature": float(getattr(self.method, "temperature", 0.0)),
            "mask_gap": gap / numel,
        }

    # -- checkpoint state -----------------------------------------------------------------------------------------
    def save_state(self, directory: str) -> None:
        """Write `pruning_state.safetensors` (budgets, hardened masks) and `pruning_config.json` into a checkpoint."""
        from safetensors.torch import save_file

        from . import __version__

        tensors = {}
        if self.hardened:
            tensors = {f"mask.{n}": m.pdp_hard_mask.contiguous().cpu() for n, m in self.modules.items()}
        metadata = {
            "pdp_hf_version": __version__,
            "budgets": json.dumps(self.budgets),
            "hardened": json.dumps(self.hardened),
            "modules": json.dumps(list(self.modules)),
        }
        os.makedirs(directory, exist_ok=True)
        save_file(tensors, os.path.join(directory, STATE_NAME), metadata=metadata)
        self.config.save_pretrained(directory)

    def load_state(self, directory: str) -> None:
        """Restore budgets and hardened masks from a checkpoint written by `save_state` with the same config."""
        from safetensors import safe_open

        path = os.path.join(directory, STATE_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{directory} has no {STATE_NAME}: it was not written by PrunerTrainer, so its pruning state is unknown."
            )
        saved = PDPConfig.from_pretrained(directory)
        if saved != self.config:
            diff = {k: (v, getattr(self.config, k)) for k, v in saved.to_dict().items() if getattr(self.config, k) != v}
            raise ValueError(
                f"Checkpoint {directory} was made with another PDPConfig; differing fields (checkpoint, now): {diff}. "
                "Resume with the checkpoint's config (PDPConfig.from_pretrained(checkpoint_dir))."
            )
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            if json.loads(meta.get("modules", "[]")) != list(self.modules):
                raise ValueError(f"Checkpoint {directory} prunes other modules than this model's targets.")
            budgets = json.loads(meta.get("budgets", "null"))
            self.budgets = None if budgets is None else {k: int(v) for k, v in budgets.items()}
            self.hardened = json.loads(meta.get("hardened", "false"))
            for name, module in self.modules.items():
                if self.hardened:
                    module.pdp_hard_mask = f.get_tensor(f"mask.{name}").to(module.weight.device)
                    module.pdp_zeros = self.budgets[name]
                else:  # nothing from an earlier run in this process may survive
                    module.pdp_hard_mask, module.pdp_zeros = None, 0


def global_budgets(scores: dict[str, torch.Tensor], target: float) -> dict[str, int]:
    """Per-layer zero counts from one magnitude ranking over all layers: the round(target * N) smallest scores
    overall are pruned, and each layer's budget is how many of them it holds (ties at the cut go in layer order)."""
    flat = {n: s.detach().reshape(-1).float() for n, s in scores.items()}
    total = sum(s.numel() for s in flat.values())
    k = int(round(target * total))
    if k == 0:
        return {n: 0 for n in flat}
    cut = torch.kthvalue(torch.cat([s.cpu() for s in flat.values()]), k).values
    budgets = {n: int((s < cut).sum()) for n, s in flat.items()}
    left = k - sum(budgets.values())
    for n, s in flat.items():
        take = min(left, int((s == cut).sum()))
        budgets[n] += take
        left -= take
    return budgets


def apply_pruning(model: nn.Module, config: PDPConfig) -> nn.Module:
    """Put masks on the matched Linear weights of `model` in place and return it.

    Example:

    ```python
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from pdp_hf import PDPConfig, apply_pruning, finalize_pruning, get_pruner
    >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    >>> model = apply_pruning(model, PDPConfig(target_sparsity=0.5))
    >>> len(get_pruner(model).modules)
    12
    ```
    """
    if not isinstance(config, PDPConfig):
        raise TypeError(f"apply_pruning needs a PDPConfig, got {type(config).__name__}.")
    if get_pruner(model) is not None:
        raise ValueError("Pruning is already applied to this model; call finalize_pruning(model) first.")
    names = find_targets(model, config.target_modules)
    method = get_method(config.method).from_config(config)
    modules: dict[str, PrunedLinear] = {}
    for name in names:
        module = model.get_submodule(name)
        module.__class__ = PrunedLinear
        module.pdp_method, module.pdp_zeros = method, 0
        # Non-persistent buffer: follows .to(device), never enters the state_dict.
        module.register_buffer("pdp_hard_mask", None, persistent=False)
        method.init_module(module)
        modules[name] = module
    setattr(model, PRUNER_ATTR, Pruner(config, modules, method))
    logger.info("pdp_hf: %s masks on %d Linear layers (target sparsity %s).", config.method, len(names), config.target_sparsity)
    return model


@torch.no_grad()
def finalize_pruning(model: nn.Module) -> nn.Module:
    """Harden the masks, bake the zeros into the weights and remove every trace of `apply_pruning`.

    Afterwards each targeted weight holds exactly its budget of zeros (round(target * n) per layer with the uniform
    distribution) and the model and its state_dict are plain Transformers again.
    """
    model = _unwrap(model)
    pruner = get_pruner(model)
    if pruner is None:
        raise ValueError("This model has no pruning applied (or it was already finalized); nothing to finalize.")
    if not pruner.hardened:
        pruner.harden()
    for module in pruner.modules.values():
        module.weight.masked_fill_(~module.pdp_hard_mask, 0.0)  # +0.0, not the -0.0 a multiply gives
        pruner.method.remove_module(module)
        remove_buffer(module, "pdp_hard_mask")
        for attr in ("pdp_method", "pdp_zeros"):
            module.__dict__.pop(attr, None)
        module.__class__ = nn.Linear
    delattr(model, PRUNER_ATTR)
    return model
