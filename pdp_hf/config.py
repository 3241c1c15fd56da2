"""`PDPConfig`: what to prune, how much, with which method, and when."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from .config_io import PRUNING_CONFIG_NAME, VERSION_KEY, ConfigIO, _invalid, check_target_speedup, read_unit_costs  # noqa: F401  (this module's face)
from .roles import ROLE_GROUPS, parse_role_map  # noqa: F401  (ROLE_GROUPS: part of this module's face)

logger = logging.getLogger(__name__)


GRANULARITIES = ("unstructured", "n:m", "neuron", "head", "block")
SPARSITY_DISTRIBUTIONS = ("uniform", "global", "learned")
SPARSITY_SCHEDULES = ("linear", "cubic")
TEMPERATURE_MODES = ("relative", "absolute")
MASK_KERNELS = ("auto", "compiled", "eager")
FUSED_MASKS = ("auto", "on", "off")
# Mask methods by name, filled by `pdp_hf.methods` as it is imported (`register_method`): the config sits below the
# methods and never imports them; each method validates its own fields (`check_config`).
METHODS: dict[str, Any] = {}
# How the computation runs, not what it computes: a checkpoint may be resumed with another value.
RUNTIME_FIELDS = ("mask_kernel", "fused_masks")


def register_method(method: Any) -> Any:
    """Make a `MaskMethod` subclass known to `PDPConfig.method` under its `name` (usable as a class decorator)."""
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Any:
    """The registered `MaskMethod` subclass called `name`."""
    if name not in METHODS:
        raise ValueError(f"Unknown pruning method {name!r}; available: {sorted(METHODS)}.")
    return METHODS[name]


@dataclass
class PDPConfig(ConfigIO):
    """Configuration of differentiable pruning during fine-tuning.

    Sparsity convention: `target_sparsity` is the fraction of exactly-zero entries in each targeted Linear weight
    matrix (uniform) or over all targeted matrices together (global). Biases, embeddings, LayerNorms, the pooler
    and the task head are never pruned and not counted.

    Schedule fields (`pruning_start`, `pruning_end`, `harden_at`) are optimizer steps, or a fraction of the total
    number of optimizer steps when below 1 (so `0.1` means "after 10% of training").

    Example:

    ```python
    >>> from pdp_hf import PDPConfig
    >>> config = PDPConfig(target_sparsity=0.9, pruning_start=0.1, pruning_end=0.6, harden_at=0.8)
    >>> config.method, config.granularity
    ('pdp', 'unstructured')

    ```
    """

    target_sparsity: Optional[float] = field(
        default=None,
        metadata={
            "help": "Fraction of pruned units (and so of zeros in the targeted Linear weights) at the end, "
            "0 <= s < 1. Default 0.9; with granularity 'n:m' it is implied by n_m (1 - N/M) and may be left out."
        },
    )
    target_speedup: Optional[float] = field(
        default=None,
        metadata={
            "help": "Budgets set by speed instead of sparsity: the forward speedup of the shrunk model on the device "
            "pruning is applied on, > 1, e.g. 2.0. Needs granularity 'head', 'neuron' or "
            "'attention=head,ffn=neuron'; excludes target_sparsity. A short timing of the model's shapes gives a "
            "cost per head and per neuron (see speed_batch_size, speed_seq_length), and timings of the shrunk shapes correct "
            "it (speed_calibration_timings). sparsity_distribution 'uniform': "
            "the same fraction of heads and neurons in every layer, the smallest that reaches the target; 'global': "
            "units pruned over all layers in order of squared norm per unit of cost (uneven layers)."
        },
    )
    speed_batch_size: int = field(
        default=32, metadata={"help": "(target_speedup) Batch size of the timing that prices heads and neurons."}
    )
    speed_seq_length: int = field(
        default=128, metadata={"help": "(target_speedup) Tokens per example of that timing (text models)."}
    )
    speed_calibration_timings: int = field(
        default=3, metadata={"help": "(target_speedup) Timings of the shrunk shapes that correct the prices until the "
                             "budgets measure the target, not only predict it; 0 trusts the prices alone."}
    )
    speed_unit_costs: dict | str | None = field(
        default=None,
        metadata={
            "help": "(target_speedup) Prices to use instead of timing: seconds per forward of the dense model and "
            "saved per head and per neuron (and the calibration, if any), as a dict, JSON text or a JSON file (an "
            "export's config.json records its own under pdp_unit_costs). One set of prices for a grid gives every run "
            "at a target the same budgets; a calibration holds for the target it was timed at."
        },
    )
    method: str = field(
        default="pdp",
        metadata={
            "help": "Mask method: 'pdp' (Parameter-free Differentiable Pruning), 'smart' (SMART: learnable scores "
            "through a differentiable top-k with a decaying temperature), 'movement' (movement pruning, Sanh et al. "
            "2020; use sparsity_schedule='cubic' for their schedule) or 'magnitude' (gradual magnitude pruning, "
            "Zhu & Gupta 2017; use sparsity_schedule='cubic' for their schedule)."
        },
    )
    granularity: str = field(
        default="unstructured",
        metadata={
            "help": "What one mask entry covers: 'unstructured' (a weight), 'n:m' (N of every M consecutive "
            "weights along the input dimension stay, see n_m), 'neuron' (an FFN neuron: FFN-in row + bias entry + "
            "FFN-out column), 'head' (an attention head: its Q/K/V rows + bias entries and output-projection "
            "columns), 'block' (block_size x block_size tiles). One value for all targets, or per role group: "
            "'attention=head,ffn=neuron'."
        },
    )
    n_m: str = field(
        default="2:4",
        metadata={"help": "N:M pattern for granularity 'n:m', e.g. '2:4', '1:4', '4:8' (N of every M weights stay)."},
    )
    block_size: int = field(
        default=32,
        metadata={"help": "Side of the square tiles for granularity 'block' (must divide both sides of each matrix)."},
    )
    target_modules: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Linear layers to prune: exact module names, name suffixes, or a single regex. "
            "Default: the encoder's attention Q/K/V/output and FFN in/out layers of BERT, RoBERTa, DistilBERT, ViT."
        },
    )
    prune_tied_weights: bool = field(
        default=False,
        metadata={
            "help": "Allow a target whose weight is shared with another module (an lm_head or decoder tied to the word "
            "embeddings): pruning it prunes the other through the tie. Off: such targets are refused, naming both."
        },
    )
    temperature: float = field(
        default=0.05,
        metadata={
            "help": "(method 'pdp') PDP softmax temperature tau. With temperature_mode='relative' it is a multiple of each layer's "
            "squared threshold t^2 (scale-free); with 'absolute' it is in units of w^2 as in the paper."
        },
    )
    temperature_mode: str = field(
        default="relative",
        metadata={"help": "(method 'pdp') 'relative' (tau_l = temperature * t_l^2, per layer and step) or 'absolute'."},
    )
    score_learning_rate: float = field(
        default=0.01,
        metadata={
            "help": "(methods 'smart', 'movement') Learning rate of the learnable unit scores, trained by the "
            "Trainer's optimizer in their own parameter group without weight decay (the LR schedule applies)."
        },
    )
    movement_score_init: str = field(
        default="zeros",
        metadata={
            "help": "(method 'movement') Starting scores: 'zeros' (the paper's constant init: the ranking is learned "
            "from the weights' movement alone) or 'magnitude' (each unit's norm over the mean norm of its matrix, as "
            "SMART starts: movement then re-ranks the magnitude order; not in the paper)."
        },
    )
    smart_temperature_start: float = field(
        default=1.0,
        metadata={
            "help": "(method 'smart') Temperature of the soft top-k at pruning_start, in units of each group's mean "
            "initial score (the mean unit norm); it decays geometrically to smart_temperature_end at pruning_end."
        },
    )
    smart_temperature_end: float = field(
        default=0.01,
        metadata={"help": "(method 'smart') Temperature from pruning_end on (nearly hard masks before hardening)."},
    )
    pruning_start: float = field(
        default=0.1,
        metadata={"help": "Optimizer step (or fraction of training when < 1) where the sparsity ramp starts."},
    )
    pruning_end: float = field(
        default=0.6,
        metadata={"help": "Optimizer step (or fraction of training when < 1) where the target sparsity is reached."},
    )
    harden_at: Optional[float] = field(
        default=0.8,
        metadata={
            "help": "Optimizer step (or fraction when < 1) from which masks are fixed 0/1 and training continues. "
            "None: soft masks until the end of training, hardened at finalize."
        },
    )
    sparsity_distribution: str = field(
        default="uniform",
        metadata={
            "help": "'uniform': every targeted layer reaches target_sparsity. 'global': per-layer budgets fixed at "
            "pruning_start by one magnitude ranking over all targeted weights. 'learned' (methods with learnable "
            "scores: 'smart', 'movement'): per-layer budgets from one ranking of the learned scores across layers, "
            "re-ranked at every exact refresh until hardening (SMART: one lambda across layers)."
        },
    )
    threshold_refresh_steps: int = field(
        default=10,
        metadata={
            "help": "Exact threshold selection every this many optimizer steps; between, the threshold is estimated "
            "from a fixed 65,536-entry sample of each matrix (PDP and magnitude). Hardening and finalize are always "
            "exact. Default 10: same MiniLM SST-2 accuracy as exact selection at every step, at a fraction of its "
            "cost (docs/performance.md). 1: exact at every step."
        },
    )
    sparsity_schedule: str = field(
        default="linear",
        metadata={"help": "Shape of the ramp from pruning_start to pruning_end: 'linear' or 'cubic' (Zhu & Gupta)."},
    )
    mask_kernel: str = field(
        default="auto",
        metadata={
            "help": "How the masks are computed: 'auto' (fused kernels through torch.compile: PDP's soft mask in one "
            "pass per direction, magnitude's mask in one pass; the eager operations with a logged reason where "
            "compilation fails), 'compiled' (fail if it cannot compile) or 'eager'. Same values; see pdp_hf.kernels."
        },
    )
    fused_masks: str = field(
        default="auto",
        metadata={
            "help": "Whether each training step computes the masks of all same-shape groups at once (a constant "
            "number of operators per step, whatever the depth; pdp_hf.fused) or group by group: 'auto' (at once on "
            "GPUs and other accelerators, where each operator is a kernel launch; group by group on the CPU, where "
            "stacking the matrices costs more memory traffic than the operators it saves), 'on' or 'off'. Same "
            "values bit for bit in fp32; docs/performance.md."
        },
    )

    def __post_init__(self) -> None:
        self._check_choice("method", self.method, tuple(METHODS))
        self._check_granularity()
        self._check_target_speedup()
        self._resolve_target_sparsity()
        self._check_choice("sparsity_distribution", self.sparsity_distribution, SPARSITY_DISTRIBUTIONS)
        self._check_choice("sparsity_schedule", self.sparsity_schedule, SPARSITY_SCHEDULES)
        self._check_choice("mask_kernel", self.mask_kernel, MASK_KERNELS)
        self._check_choice("fused_masks", self.fused_masks, FUSED_MASKS)
        self._check_method_settings()
        self._check_targets()
        if not isinstance(self.prune_tied_weights, bool):
            raise _invalid("prune_tied_weights", self.prune_tied_weights, "it must be True or False")
        if isinstance(self.threshold_refresh_steps, bool) or not isinstance(self.threshold_refresh_steps, int) or self.threshold_refresh_steps < 1:
            raise _invalid("threshold_refresh_steps", self.threshold_refresh_steps, "it must be a whole number >= 1")
        for name in ("pruning_start", "pruning_end", "harden_at"):
            self._check_schedule_point(name, getattr(self, name))
        self._check_order("pruning_start", "pruning_end")
        self._check_order("pruning_end", "harden_at")

    # -- method settings ----------------------------------------------------------------------------------------
    def _check_method_settings(self) -> None:
        """The chosen method validates its own fields (`MaskMethod.config_fields`); fields only other methods read
        are not validated, and a value changed from its default there is logged as unused."""
        method = get_method(self.method)
        if self.sparsity_distribution == "learned" and not method.learnable_scores:
            learned = sorted(m.name for m in METHODS.values() if m.learnable_scores)
            raise _invalid(
                "sparsity_distribution", "learned", f"method {self.method!r} has no learned scores to rank layers by "
                f"(methods that do: {learned}); 'global' fixes budgets by one magnitude ranking"
            )
        method.check_config(self)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for other in METHODS.values():
            for name in other.config_fields:
                if name not in method.config_fields and getattr(self, name) != defaults[name]:
                    owners = sorted(m.name for m in METHODS.values() if name in m.config_fields)
                    logger.warning("pdp_hf: PDPConfig.%s=%r is a setting of method %s; method=%r does not use it.",
                                   name, getattr(self, name), " / ".join(map(repr, owners)), self.method)

    def method_settings(self) -> dict[str, Any]:
        """The fields the chosen method reads beyond the shared ones, e.g. {'temperature': 0.05, ...} for 'pdp'."""
        return {name: getattr(self, name) for name in get_method(self.method).config_fields}

    # -- granularity --------------------------------------------------------------------------------------------
    def granularities(self) -> dict[str, str]:
        """`{"*": g}` for one granularity, or `{"attention": g1, "ffn": g2}` for a per-role-group map."""
        return parse_role_map(self.granularity, "granularity", GRANULARITIES)

    def nm_pair(self) -> tuple[int, int]:
        """(N, M) of `n_m`."""
        n, m = (int(p) for p in self.n_m.split(":"))
        return n, m

    def _check_granularity(self) -> None:
        if not isinstance(self.granularity, str):
            raise _invalid("granularity", self.granularity, f"choose one of {list(GRANULARITIES)} or a role-group map")
        mapping = self.granularities()
        kinds = set(mapping.values())
        for group, wrong in (("attention", "neuron"), ("ffn", "head")):
            if mapping.get(group) == wrong:
                raise _invalid(
                    "granularity", self.granularity, f"'{wrong}' units do not exist in the {group} layers ('neuron' is for "
                    "ffn, 'head' for attention)"
                )
        if not isinstance(self.n_m, str) or not re.fullmatch(r"\d+:\d+", self.n_m) or not 0 < self.nm_pair()[0] < self.nm_pair()[1]:
            raise _invalid("n_m", self.n_m, "write 'N:M' with 0 < N < M, e.g. '2:4'")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise _invalid("block_size", self.block_size, "it must be a whole number >= 1")
        if kinds == {"n:m"} and self.sparsity_distribution != "uniform":
            raise _invalid(
                "sparsity_distribution", self.sparsity_distribution, "granularity 'n:m' fixes N of every M weights in "
                "every matrix, so there is nothing to distribute; use 'uniform'"
            )

    def _check_target_speedup(self) -> None:
        check_target_speedup(self)

    def prunes(self) -> bool:
        """Whether anything will be pruned: a speed target, a sparsity above 0, or an N:M pattern."""
        return (self.target_speedup is not None or bool(self.target_sparsity)
                or set(self.granularities().values()) == {"n:m"})

    def _resolve_target_sparsity(self) -> None:
        if self.target_speedup is not None:
            return  # checked by _check_target_speedup; budgets come from the speed target
        kinds = set(self.granularities().values())
        n, m = self.nm_pair()
        implied = 1.0 - n / m
        if self.target_sparsity is None:
            self.target_sparsity = implied if kinds == {"n:m"} else 0.9
        self._check_number("target_sparsity", self.target_sparsity)
        if not 0.0 <= self.target_sparsity < 1.0:
            raise _invalid("target_sparsity", self.target_sparsity, "it must satisfy 0 <= target_sparsity < 1")
        if kinds == {"n:m"} and abs(self.target_sparsity - implied) > 1e-9:
            raise _invalid(
                "target_sparsity", self.target_sparsity,
                f"granularity 'n:m' with n_m={self.n_m!r} implies target_sparsity {implied:g} (1 - N/M); leave "
                "target_sparsity out or set it to that value",
            )

    # -- validation helpers -------------------------------------------------------------------------------------
    @staticmethod
    def _check_number(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _invalid(name, value, "it must be a finite number")

    @staticmethod
    def _check_choice(name: str, value: Any, allowed: tuple) -> None:
        if value not in allowed:
            raise _invalid(name, value, f"choose one of {list(allowed)}")

    def _check_targets(self) -> None:
        value = self.target_modules
        if value is None:
            return
        if isinstance(value, str):
            self.target_modules = value = [value]
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
            raise _invalid("target_modules", value, "give None or a non-empty list of module names/suffixes/regex")
        self.target_modules = list(value)

    def _check_schedule_point(self, name: str, value: Any) -> None:
        if value is None and name == "harden_at":
            return
        self._check_number(name, value)
        if value == 1:
            raise _invalid(name, value, "1 is ambiguous (step 1, or the end of training?): write 0.99 for a fraction or 2+ for a step")
        if value < 0 or (value > 1 and value != int(value)):
            raise _invalid(name, value, "use a fraction of training in [0, 1) or a whole optimizer step >= 2")

    def _check_order(self, first: str, second: str) -> None:
        a, b = getattr(self, first), getattr(self, second)
        if a is None or b is None or (a < 1) != (b < 1):
            return  # fractions and step counts can only be compared once the total step count is known
        if b < a:
            raise _invalid(second, b, f"{second} must not come before {first}={a!r}")
