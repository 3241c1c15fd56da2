"""`Pruner`: the unit groups of one model and their mask state, moved along the schedule.

`apply_pruning` (pdp_hf.injection) builds one and attaches it to the model; `PrunerTrainer` drives it, and custom
loops can too. Budgets (how many units each group prunes) are fixed here: per group (uniform), or by one ranking over
all groups of a kind (global, learned).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .checkpoint import load_state, save_state
from .config import PDPConfig
from .fused import fusing_enabled
from .methods import MaskMethod
from .methods.base import relative_norms
from .optimizers import (
    _from_deepspeed,
    _is_deepspeed,
    _optimizer_chain,
    _quantized_state,
    _unwrap_optimizer,
    optimizer_state,
)
from .schedules import PruningSchedule, zeros_at
from .scores import SCORES_ATTR
from .selection import global_budgets
from .speed_budget import calibrated_speedup, pruned_by_kind, solve_speed_budgets, speed_aim
from .units import UnitGroup

logger = logging.getLogger(__name__)


class Pruner:
    """Holds the unit groups of one model and their mask state, and moves them through the schedule.

    Custom training loops drive it directly:

    ```python
    pruner = get_pruner(apply_pruning(model, config))
    pruner.set_total_steps(num_optimizer_steps)
    pruner.set_optimizer(optimizer)  # optional: hardened zeros stay in place, no mask in the forward
    for step in range(num_optimizer_steps):
        pruner.step(step)          # before the forward passes of optimizer step `step`
        ...                        # forward, backward, optimizer.step()
    finalize_pruning(model)
    ```
    """

    def __init__(self, config: PDPConfig, modules: dict[str, nn.Linear], groups: list[UnitGroup], method: MaskMethod,
                 unit_costs: dict[str, float] | None = None):
        self.config = config
        # target_speedup: seconds per dense forward ("dense") and saved per "head" / "neuron" (pdp_hf.speed_budget)
        self.unit_costs = unit_costs
        self.modules = modules  # targeted module name -> module, in model order
        self.groups = groups
        self.method = method
        self.schedule: PruningSchedule | None = None
        self.budgets: dict[str, int] | None = None  # final pruned units per group, fixed at pruning start
        self.hardened = False
        self.optimizer = None  # set_optimizer: whose per-weight state is zeroed with the pruned weights at hardening
        self._score_grad_hook = None  # set_optimizer: the method's gradient fix-up runs before each optimizer step
        self._warned_no_optimizer = False
        self._fused_keeps: dict[tuple, torch.Tensor] = {}  # stacked hardened keep masks per shape class

    def __getstate__(self) -> dict:
        # deepcopy / pickle of a model copies its pruner, never the training loop's optimizer
        return {**self.__dict__, "optimizer": None, "_score_grad_hook": None, "_fused_keeps": {}}

    # -- schedule -------------------------------------------------------------------------------------------------
    def set_total_steps(self, total_steps: int) -> None:
        """Resolve fractional schedule points against the number of optimizer steps, and check they fit."""
        self.schedule = PruningSchedule.from_config(self.config, total_steps)

    @property
    def total_steps(self) -> int | None:
        return None if self.schedule is None else self.schedule.total_steps

    def fraction(self, step: int) -> float:
        return self.schedule.fraction(step)

    def step(self, step: int) -> None:
        """Bring every group to the sparsity of optimizer step `step` (0-based, the step about to run)."""
        schedule = self.schedule
        if schedule is None:
            raise RuntimeError("Call Pruner.set_total_steps(n) before Pruner.step(); PrunerTrainer does it for you.")
        if self.hardened:
            return
        for group in self.groups:  # a value cached by an interrupted forward must not outlive a mask change
            group._forward_cache = group._fused = None
        fresh = step >= schedule.start and self.budgets is None
        if fresh:
            if schedule.start > 0:  # at step 0 apply_pruning's scores are already those of the weights then
                self._restart_scores()  # before the budgets: the learned distribution ranks by these scores
            self.budgets = self.compute_budgets()
            self._warn_pre_pruned()
        if schedule.hardens_at(step):
            self.harden()
            return
        self.method.begin_step(step, schedule)
        frac = schedule.fraction(step)
        # Between exact refreshes the threshold is a fresh sampled estimate (it never depends on an earlier step,
        # so a resumed run computes the same values as an uninterrupted one).
        exact = schedule.is_exact(step, self.config.threshold_refresh_steps)
        if exact:
            self.check_finite(f"optimizer step {step}")
            if self.budgets is not None and not fresh and self.config.sparsity_distribution == "learned":
                self.budgets = self.compute_budgets()  # the learned scores re-rank the layers (saved with checkpoints)
        updates = []
        for group in self.groups:
            zeros = zeros_at(frac, self.budgets[group.name]) if self.budgets else 0
            group.zeros = zeros
            if zeros or self.method.masks_before_pruning:
                # a method that masks while nothing is pruned must hear of a budget that fell to 0 (the learned
                # distribution re-ranks layers), or its last mask would go on pruning that layer in training
                updates.append((group, zeros))
        # the selections of same-shape groups at once (pdp_hf.fused), or what of them needs no stacked weights
        (self.method.update_many if fusing_enabled(self) else self.method.update_each)(updates, exact)
        pruning = [g for g in self.groups if g.zeros]
        if pruning:
            self.method.end_update(pruning)
            if self.optimizer is None and self.method.adjusts_score_gradients(self.config) and not self._warned_no_optimizer:
                self._warned_no_optimizer = True
                logger.warning(
                    "pdp_hf: method %r with sparsity_distribution=%r corrects the scores' gradients before each "
                    "optimizer step, but no optimizer was handed over: call pruner.set_optimizer(optimizer) (PrunerTrainer "
                    "does). Without it the scores train as if lambda were fixed.", self.config.method,
                    self.config.sparsity_distribution,
                )

    def compute_budgets(self) -> dict[str, int]:
        """Final pruned units per group: `round(target * units)` each (uniform), or one ranking per pool of
        comparable units (all weights of unstructured matrices together, all blocks, all heads, all neurons): of the
        unit norms (global), or of the learned scores as they are now (learned). N:M groups always prune every group
        of M."""
        if self.config.target_speedup is not None:  # the aim the (calibrated) prices must predict
            aim = speed_aim(self.unit_costs, self.groups, self.config.target_speedup)
            return solve_speed_budgets(self.groups, self.unit_costs, aim, self.config.sparsity_distribution)
        target = self.config.target_sparsity
        budgets = {g.name: g.num_units for g in self.groups if g.kind == "n:m"}
        ranked = [g for g in self.groups if g.kind != "n:m"]
        distribution = self.config.sparsity_distribution
        if distribution == "uniform":
            budgets.update({g.name: int(round(target * g.num_units)) for g in ranked})
        else:
            learned = distribution == "learned"
            by_name = {g.name: g for g in ranked}

            def ranking(g: UnitGroup) -> torch.Tensor:
                return g.score.detach() if learned and g.score is not None else g.scores()

            def tie_break(name: str) -> torch.Tensor:  # equal learned scores (movement's start at 0): by magnitude
                return relative_norms(by_name[name])

            for pool in dict.fromkeys(g.pool for g in ranked):
                pooled = {g.name: ranking(g) for g in ranked if g.pool == pool}
                budgets.update(global_budgets(pooled, target, tie_break if learned else None))
        return {g.name: budgets[g.name] for g in self.groups}

    @torch.no_grad()
    def _warn_pre_pruned(self) -> None:
        """A group that already holds more all-zero units than its budget ends with at least that many: zeros are
        the smallest units and stay pruned. Said once, at pruning start."""
        for group in self.groups:
            if group.kind == "n:m":
                continue
            zero_units = int((group.scores() == 0).sum())
            if zero_units > self.budgets[group.name]:
                logger.warning(
                    "pdp_hf: %s already has %d all-zero units, more than its budget of %d: it will end with at least "
                    "%d pruned units (%.1f%% instead of %.1f%%).", group.name, zero_units, self.budgets[group.name],
                    zero_units, 100 * zero_units / group.num_units, 100 * self.budgets[group.name] / group.num_units,
                )

    @torch.no_grad()
    def non_finite_modules(self) -> list[str]:
        bad = _non_finite({name: m.weight for name, m in self.modules.items()})
        return bad + _non_finite({f"{SCORES_ATTR} of {g.name}": g.score for g in self.groups if g.score is not None})

    def check_finite(self, when: str) -> None:
        """Raise FloatingPointError naming every targeted module whose weight holds NaN or Inf."""
        bad = self.non_finite_modules()
        if bad:
            raise FloatingPointError(
                f"NaN/Inf in the weight of {bad} at {when}; pruning cannot rank such weights. Lower the learning "
                "rate, enable gradient clipping (max_grad_norm), or use bf16 instead of fp16."
            )

    def set_optimizer(self, optimizer) -> None:
        """Hand over the training loop's optimizer (PrunerTrainer does it for you).

        At hardening the pruned weights are zeroed in place, and with an optimizer set, so is its per-weight state
        for them (Adam's moments, SGD's momentum): from then on their gradients are masked, they stay exactly zero
        under every optimizer that does not move a weight whose gradient and state are zero (torch.optim's and
        Transformers' own), the forward needs no mask, and checkpoints hold the sparse model. Without an
        optimizer, the hardened mask keeps being multiplied in at every forward (correct for any loop)."""
        self.optimizer = optimizer
        self._check_scores_are_trained(optimizer)
        if self._score_grad_hook is not None:
            self._score_grad_hook.remove()
            self._score_grad_hook = None
        inner = _unwrap_optimizer(optimizer)
        if optimizer is not None and self.method.adjusts_score_gradients(self.config):
            blocker = next((o for o in _optimizer_chain(optimizer) if _from_deepspeed(o)), inner)
            if blocker is not inner or not hasattr(inner, "register_step_pre_hook"):
                # ZeRO keeps gradients in flat partitions (param.grad is None): nothing to correct per score
                logger.warning(
                    "pdp_hf: method %r with sparsity_distribution=%r corrects the scores' gradients before each "
                    "optimizer step, which %s does not allow: the scores will train as if lambda were fixed.",
                    self.config.method, self.config.sparsity_distribution, type(blocker).__name__,
                )
            else:  # after backward, DDP's all-reduce, unscaling and clipping; the fix-up is linear in the gradients
                self._score_grad_hook = inner.register_step_pre_hook(lambda *_: self.adjust_score_gradients())
        if self.hardened:  # resumed after hardening (or hardened before training): the same state as at hardening
            self._keep_zeros()

    # -- learnable scores -----------------------------------------------------------------------------------------
    def adjust_score_gradients(self) -> None:
        """The method's fix-up of the scores' gradients before an optimizer step (SMART with one lambda across
        layers: its implicit-gradient term); registered on the optimizer by `set_optimizer`."""
        if not self.hardened:
            self.method.adjust_score_gradients([g for g in self.groups if g.zeros and g.score is not None])

    @torch.no_grad()
    def _restart_scores(self) -> None:
        """Methods with `restarts_scores` (SMART): at pruning_start the scores start from the weights as they are now,
        the weights the budgets rank, not those of `apply_pruning`; their optimizer state starts again with them."""
        if not self.method.restarts_scores:
            return
        state = optimizer_state(self.optimizer) if self.optimizer is not None else {}
        for group in self.groups:
            if group.score is not None:
                group.score.copy_(self.method.init_scores(group).to(group.score.device, group.score.dtype))
                state.pop(group.score, None)

    def score_parameters(self) -> list[nn.Parameter]:
        """The learnable unit scores (SMART, movement), one tensor per group; [] for methods without."""
        return [g.score for g in self.groups if g.score is not None]

    def optimizer_param_groups(self) -> list[dict]:
        """Parameter groups to add to the training loop's optimizer: the scores with `score_learning_rate` and no
        weight decay (PrunerTrainer does it for you). [] for methods without learnable scores.

        ```python
        params = [p for n, p in model.named_parameters() if not n.startswith("pdp_scores.")]
        optimizer = torch.optim.AdamW([{"params": params}, *pruner.optimizer_param_groups()], lr=3e-5)
        ```
        """
        scores = self.score_parameters()
        if not scores:
            return []
        return [{"params": scores, "lr": self.config.score_learning_rate, "weight_decay": 0.0}]

    def _check_scores_are_trained(self, optimizer) -> None:
        scores = self.score_parameters()
        if not scores or optimizer is None:
            return
        if _is_deepspeed(optimizer):
            return  # ZeRO replaces each group's params with flat partitions: nothing to compare them with
        groups = getattr(_unwrap_optimizer(optimizer, "param_groups"), "param_groups", [])
        held = {id(p): group for group in groups for p in group["params"]}
        if not all(id(p) in held for p in scores):
            raise ValueError(
                f"Method {self.config.method!r} learns unit scores, but the optimizer does not hold them. Add "
                "pruner.optimizer_param_groups() to its parameter groups (PrunerTrainer does this when it creates the "
                "optimizer; with Trainer(optimizers=...) build the optimizer with them)."
            )
        group = held[id(scores[0])]
        lr, decay = group.get("lr"), group.get("weight_decay", 0.0)
        if lr != self.config.score_learning_rate or decay:
            logger.warning(
                "pdp_hf: the learned scores train with lr=%s and weight_decay=%s, not score_learning_rate=%s and no "
                "weight decay; build the optimizer with pruner.optimizer_param_groups() to get those.",
                lr, decay, self.config.score_learning_rate,
            )

    @torch.no_grad()
    def _keep_zeros(self) -> None:
        state = optimizer_state(self.optimizer)
        coded = _quantized_state(self.optimizer, state, self.modules.values())
        if coded:  # a 0 code is not a zero moment (8-bit optimizers): keep multiplying the hard mask in instead
            logger.info("pdp_hf: the optimizer keeps %s; the hardened masks stay in every forward instead of zeroing "
                        "its state (the pruned weights are zeroed at finalize).", coded)
            for group in self.groups:
                group.zero_pruned_()
            return
        for group in self.groups:
            group.zero_pruned_()
            for member in group.members:
                weight_pruned, bias_pruned = group.pruned_entries(member)
                for param, pruned in ((member.module.weight, weight_pruned), (member.module.bias, bias_pruned)):
                    if param is None or pruned is None or param not in state:
                        continue
                    for value in state[param].values():
                        if isinstance(value, torch.Tensor) and value.shape == param.shape:
                            value.masked_fill_(pruned.to(value.device), 0)
            group.keeps_zeros = True

    @torch.no_grad()
    def harden(self) -> None:
        """Fix every mask to exactly its final budget of pruned units and zero the pruned weights in place;
        training may continue with fixed masks (see `set_optimizer`)."""
        self.check_finite("hardening")
        if self.budgets is None or self.config.sparsity_distribution == "learned":
            self.budgets = self.compute_budgets()  # learned: the final ranking of the scores, exact
        self._fused_keeps = {}
        for group in self.groups:
            group._forward_cache = group._fused = None
            group.zeros = self.budgets[group.name]
            group.hard_mask = self.method.hard_mask(group, group.zeros)
            self.method.remove_group(group)
            group.zero_pruned_()
        self.hardened = True
        if self.optimizer is not None:
            self._keep_zeros()

    def hard_view(self, group: UnitGroup) -> torch.Tensor:
        """The unit-level keep-mask finalize would bake in now (exact count at the current sparsity)."""
        if group.hard_mask is not None:
            return group.hard_mask
        return self.method.hard_mask(group, group.zeros)

    # -- logging --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """`sparsity` (hard-mask view over all targeted weights), the method's own values while the masks are soft
        (PDP and SMART: `temperature`; a run resumed after hardening never learns the last one), `mask_gap` (mean
        |soft - hard| mask over the targeted weights)."""
        numel = sum(g.numel for g in self.groups)
        zeros = sum(g.pruned_weights(g.zeros) for g in self.groups)
        active = [g for g in self.groups if g.zeros and g.hard_mask is None]
        gap = sum(float(self.method.mask_gap(g)) for g in active)
        own = {} if self.hardened else self.method.stats()
        speed = {"predicted_speedup": self.predicted_speedup()} if self.unit_costs and self.budgets else {}
        return {"sparsity": zeros / numel, **own, "mask_gap": gap / numel, **speed}

    def predicted_speedup(self) -> float | None:
        """With target_speedup: the forward speedup the final budgets predict on the device they were priced on (the
        prices' prediction, corrected by the timing of the shrunk shapes when there was one)."""
        if not self.unit_costs or not self.budgets:
            return None
        return calibrated_speedup(self.unit_costs, pruned_by_kind(self.groups, self.budgets))

    # -- checkpoint state -----------------------------------------------------------------------------------------
    def save_state(self, directory: str) -> None:
        """Write `pruning_state.safetensors` (budgets, hardened masks) and `pruning_config.json` into a checkpoint."""
        save_state(self, directory)

    def load_state(self, directory: str) -> None:
        """Restore budgets and hardened masks from a checkpoint written by `save_state` with the same config."""
        load_state(self, directory)


def _non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors holding NaN or Inf. A sum is NaN or Inf whenever one entry is: one read pass per
    tensor and one host sync settle the usual all-finite case; the entry-wise test (five passes) runs only to name
    them when a sum is not finite."""
    sums = [t.detach().sum(dtype=torch.float32) for t in tensors.values()]
    if not sums or bool(torch.isfinite(torch.stack([s.to(sums[0].device) for s in sums])).all()):
        return []
    return [name for name, t in tensors.items() if not bool(torch.isfinite(t).all())]
