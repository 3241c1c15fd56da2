"""The interface every mask method implements, and the exact hard masks they all share.

Methods work on `UnitGroup`s (`pdp_hf.units`): a group's units are ranked by their L2 norm, a method turns the
number of pruned units in force into a unit-level mask, and the group broadcasts that mask onto each member
weight (and bias). For `unstructured` a unit is one weight, so the mask has the weight's shape.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..fused import masked_stack
from ..units import Member, UnitGroup


def check_positive(config, name: str) -> None:
    """Raise the PDPConfig-style error unless `config.<name>` is a finite number > 0 (methods' own settings)."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not value > 0:
        raise ValueError(f"PDPConfig.{name}={value!r} is invalid: it must be a finite number > 0.")


def hard_mask_from_scores(scores: torch.Tensor, zeros: int) -> torch.Tensor:
    """Boolean keep-mask with exactly `zeros` False entries: the `zeros` smallest scores are pruned.

    Ties are broken by `torch.topk`, so the count is exact whatever the values.

    >>> hard_mask_from_scores(torch.tensor([0.3, 0.1, 0.2, 0.4]), 2).tolist()
    [True, False, False, True]
    """
    flat = scores.reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if zeros > 0:
        idx = torch.topk(flat.float(), zeros, largest=False, sorted=False).indices
        keep[idx] = False
    return keep.view(scores.shape)


TIED_DTYPES = (torch.bfloat16, torch.float16)  # 8 and 11 significant bits: many weights share each value


def keep_exactly(keep: torch.Tensor, scores: torch.Tensor, cut: torch.Tensor, zeros) -> torch.Tensor:
    """`keep` (scores > cut, with `cut` the `zeros`-th smallest score) with enough of the scores tied at the cut
    kept back, the first in memory order, that exactly `zeros` are pruned. `zeros` is an int, or one per leading
    row of a stacked class (pdp_hf.fused). No `.item()` and no branch on tensor values. With 16-bit weights
    thousands of weights can share the value at the cut, and `scores > cut` would prune them all.

    >>> keep_exactly(torch.tensor([0.2, 0.1, 0.1, 0.3]) > 0.1, torch.tensor([0.2, 0.1, 0.1, 0.3]), torch.tensor(0.1), 1).tolist()
    [True, True, False, True]
    """
    rows = 1 if isinstance(zeros, int) else len(zeros)
    flat_keep = keep.reshape(rows, -1)
    tie = (scores == cut).reshape(rows, -1)
    wanted = zeros if isinstance(zeros, int) else torch.tensor(list(zeros)).to(keep.device, non_blocking=True)
    back = (~flat_keep).sum(1) - wanted  # tied entries to keep, per row (<= 0: none)
    return (flat_keep | (tie & (tie.cumsum(1) <= back[:, None]))).view(keep.shape)


def nm_selected_groups(scores: torch.Tensor, n: int, groups: int, ordered: torch.Tensor | None = None) -> torch.Tensor:
    """Which N:M groups are pruned while `groups` of them are in force (the ramp of granularity 'n:m').

    `scores` is |w| shaped (rows, G, M); `ordered` the same sorted along the group (ascending), if the caller has it.
    The groups pruned first are those whose M - N smallest |w| carry the least squared magnitude, i.e. the cheapest
    to prune. Returns a bool tensor (rows, G, 1), True = N:M pruned.

    >>> nm_selected_groups(torch.tensor([[[0.1, 0.9, 0.8, 0.2], [0.5, 0.6, 0.7, 0.8]]]), 2, 1).view(-1).tolist()
    [True, False]
    """
    m = scores.shape[-1]
    total = scores.shape[0] * scores.shape[1]
    if groups >= total:
        return torch.ones(scores.shape[:2] + (1,), dtype=torch.bool, device=scores.device)
    ordered = torch.sort(scores.float(), dim=-1).values if ordered is None else ordered
    cost = ordered[..., : m - n].square().sum(-1)
    return ~hard_mask_from_scores(cost, groups).unsqueeze(-1)


def nm_hard_mask(scores: torch.Tensor, n: int, groups: int) -> torch.Tensor:
    """Keep-mask (rows, G, M): in each of the `groups` selected groups exactly the N largest |w| stay; the others
    stay whole. Exact counts whatever the ties (`torch.topk` along the group).

    >>> nm_hard_mask(torch.tensor([[[0.1, 0.9, 0.8, 0.2]]]), 2, 1).view(-1).tolist()
    [False, True, True, False]
    """
    # One sort along the (short) groups serves both the kept positions and the ramp's group costs; it is several
    # times faster than topk(n, dim=-1) on CPU. An unstable sort still keeps exactly N per group under ties.
    m = scores.shape[-1]
    ordered = torch.sort(scores.float(), dim=-1)
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, ordered.indices[..., m - n :], True)
    return keep | ~nm_selected_groups(scores, n, groups, ordered.values)


class MaskMethod:
    """How the weights of a unit group are masked during training.

    Lifecycle per group: `init_group` once, `update` once per optimizer step with the number of units pruned in
    force (outside autograd), `train_weight` in every training forward (differentiable), `eval_weight` in eval mode
    before hardening, `hard_mask` for hardening, reports and finalize (exact count).

    Methods with learnable state set `learnable_scores`: `init_scores` gives each group's initial unit scores, which
    `apply_pruning` turns into parameters of a `pdp_scores` submodule of the model (so `model.parameters()`, DDP and
    Trainer checkpoints see them) and hangs on `group.score`; `Pruner.optimizer_param_groups` hands them to the
    optimizer with `score_learning_rate` and no weight decay; `finalize_pruning` removes them. Per-group tensors a
    resumed run needs beyond the scores (a warm start, say) come from `state_tensors` and go back through
    `load_state_tensors`.

    Settings: a method reads the `PDPConfig` fields named in `config_fields` (and only those besides the shared
    ones), and `check_config` validates them; fields of other methods are not validated for it.
    """

    name: str = ""
    config_fields: tuple[str, ...] = ()
    learnable_scores: bool = False
    masks_before_pruning: bool = False  # train_weight also runs while nothing is pruned yet (scores learn from step 0)
    # the scores start again from `init_scores` of the weights at pruning_start (with fresh optimizer state): the
    # scores do not learn before then, while the weights do
    restarts_scores: bool = False
    description: str = ""  # for model cards

    @classmethod
    def from_config(cls, config) -> MaskMethod:
        """Build the method from a `PDPConfig` (methods read only the fields they need)."""
        return cls()

    @classmethod
    def check_config(cls, config) -> None:
        """Validate this method's own `config_fields` of `config` (raise ValueError naming the field)."""

    @classmethod
    def settings_text(cls, config) -> str:
        """This method's settings for a model card, e.g. "temperature 0.05 (relative)"; "" when it has none."""
        return ", ".join(f"`{name}`={getattr(config, name)!r}" for name in cls.config_fields)

    def init_group(self, group: UnitGroup) -> None:
        """Set up the method's per-group state in `group.state`."""

    def init_scores(self, group: UnitGroup) -> torch.Tensor | None:
        """Initial learnable unit scores of `group` (shape `group.unit_shape`), for methods with `learnable_scores`."""
        return None

    def begin_step(self, step: int, schedule) -> None:
        """Called once per optimizer step before the groups' `update`s (e.g. to move a temperature schedule)."""

    def update(self, group: UnitGroup, zeros: int, exact: bool = True) -> None:
        """Recompute the group's mask state for `zeros` pruned units; `exact=False` allows a cheaper estimate. Called
        only while the group prunes units, or at every step (`zeros` 0 too) for methods with `masks_before_pruning`."""
        raise NotImplementedError

    def update_many(self, items: list[tuple[UnitGroup, int]], exact: bool = True) -> None:
        """`update(group, zeros, exact)` for every (group, zeros) of one optimizer step, with the fused masks on;
        methods override it to select the thresholds of same-shape matrices at once (`pdp_hf.fused`), with the same
        values."""
        self.update_each(items, exact)

    def update_each(self, items: list[tuple[UnitGroup, int]], exact: bool = True) -> None:
        """The same with the masks group by group (the CPU default): methods may share what needs no stacked copy of
        the weights."""
        for group, zeros in items:
            self.update(group, zeros, exact)

    def fuses(self, group: UnitGroup) -> bool:
        """Whether `train_weights` computes this group's training masks (with others of its shape) at once."""
        return False

    def train_weights(self, groups: list[UnitGroup]) -> list[torch.Tensor]:
        """The training-forward weights of same-shape single-matrix groups the method `fuses`, in a constant number
        of operators; the same values and gradients as `train_weight` group by group. By default the stacked
        weights times `train_unit_masks` (a weight is a unit)."""
        return masked_stack(torch.stack([g.weight for g in groups]), self.train_unit_masks(groups, None))

    def train_unit_masks(self, groups: list[UnitGroup], squared_norms) -> torch.Tensor:
        """The unit-level training masks (M, *unit_shape) of same-signature neuron/head groups the method
        `fuses`; `squared_norms()` gives their stacked, differentiable squared unit norms. The same values and
        gradients as the masks `train_weight` applies group by group."""
        raise NotImplementedError

    def end_update(self, groups: list[UnitGroup]) -> None:
        """Called once per optimizer step after every `update`, with the groups that prune units now (state shared
        across groups, e.g. one lambda per pool)."""

    @classmethod
    def adjusts_score_gradients(cls, config) -> bool:
        """Whether `adjust_score_gradients` must run before every optimizer step under `config`."""
        return False

    def adjust_score_gradients(self, groups: list[UnitGroup]) -> None:
        """Fix up the scores' gradients in place before an optimizer step (after backward, all-reduce, unscaling
        and clipping, whose norm does not see the fix-up); must be linear in the gradients, so gradient
        accumulation and DDP averaging commute with it."""

    def score_unused(self, group: UnitGroup) -> bool:
        """Whether the training forward of `group` leaves its learned score out of the graph (SMART: every unit
        pruned, the mask is exactly zero); the score then gets a zero gradient under DDP (`PrunedLinear`)."""
        return False

    def train_weight(self, group: UnitGroup, member: Member, module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of `member` for a training forward; `module` is the module that runs (`member.module`,
        or a DataParallel replica of it, whose weights live on another device)."""
        raise NotImplementedError

    def train_keeps(self, group: UnitGroup, member: Member, module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The fixed 0/1 multipliers (weight, bias or None) `train_weight` applies, for a method whose training mask
        is no function of the weights in the graph (magnitude); None (the default) when it is. `PrunedLinear` then
        multiplies again in backward instead of keeping the masked weight."""
        return None

    def eval_mask(self, group: UnitGroup, module: nn.Linear | None = None) -> torch.Tensor:
        """Unit-level keep-mask used in eval mode before hardening: the hard mask at the current sparsity."""
        return self.hard_mask(group, group.zeros)

    def eval_weight(self, group: UnitGroup, member: Member, module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        return group.masked(self.eval_mask(group, module), member, module)

    def hard_mask(self, group: UnitGroup, zeros: int) -> torch.Tensor:
        """Exact unit-level keep-mask with `zeros` pruned units (N:M: `zeros` groups N:M-pruned)."""
        if group.kind == "n:m":
            return nm_hard_mask(group.scores(), group.n, zeros)
        return hard_mask_from_scores(group.scores(), zeros)

    def mask_gap(self, group: UnitGroup) -> torch.Tensor:
        """Sum over weights of |soft mask - hard mask| (for logging); 0 when the method has no soft mask."""
        return torch.zeros((), device=group.weight.device)

    def stats(self) -> dict[str, float]:
        """Method values added to the Trainer's logs (e.g. the current temperature)."""
        return {}

    def state_tensors(self, group: UnitGroup) -> dict[str, torch.Tensor]:
        """Per-group tensors a checkpoint must hold for an exact resume (beyond weights and scores)."""
        return {}

    def load_state_tensors(self, group: UnitGroup, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what `state_tensors` saved (called after `group.state` was cleared)."""

    def remove_group(self, group: UnitGroup) -> None:
        """Drop what `init_group` and `update` attached."""
        group.state.clear()


@torch.no_grad()
def relative_norms(group: UnitGroup) -> torch.Tensor:
    """Each unit's norm over the mean unit norm of its matrix (N:M: ranked within each group of M), float32: the
    starting scores of learned methods that begin from the magnitude order."""
    norms = group.scores()
    return norms / norms.mean().clamp_min(torch.finfo(torch.float32).tiny)


def rank_order(primary: torch.Tensor, secondary: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Indices along `dim` sorting by `primary` ascending, ties broken by `secondary` ascending (two stable sorts).

    >>> rank_order(torch.tensor([0.0, 0.0, -1.0]), torch.tensor([0.5, 0.1, 0.9])).tolist()
    [2, 1, 0]
    """
    first = torch.sort(secondary, dim=dim, stable=True).indices
    second = torch.sort(torch.gather(primary, dim, first), dim=dim, stable=True).indices
    return torch.gather(first, dim, second)


def learned_hard_mask(group: UnitGroup, zeros: int) -> torch.Tensor:
    """Exact keep-mask from the learned scores `group.score`: the `zeros` lowest-scored units pruned (N:M: in each of
    the `zeros` groups selected by weight magnitude, as the ramp selects them, the N highest-scored weights stay).
    Equal scores (movement's all start at 0) are ranked by the units' norms, so a tie never prunes by position."""
    score, norms = group.score.detach().float(), group.scores()
    if group.kind != "n:m":
        keep = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
        keep[rank_order(score.reshape(-1), norms.reshape(-1))[:zeros]] = False
        return keep.view(score.shape)
    m, n = group.m, group.n
    order = rank_order(score, norms)
    keep = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, order[..., m - n :], True)
    return keep | ~nm_selected_groups(norms, n, zeros)
