"""Pure schedule functions: optimizer step -> fraction of the pruning budget in force."""

from __future__ import annotations


def resolve_step(value: float, total_steps: int) -> int:
    """A schedule point as an optimizer step: fractions (< 1) scale `total_steps`, others are steps.

    >>> resolve_step(0.25, 1000), resolve_step(300, 1000)
    (250, 300)
    """
    if value < 1:
        return int(round(value * total_steps))
    return int(value)


def ramp_fraction(step: int, start: int, end: int, shape: str = "linear") -> float:
    """Fraction f in [0, 1] of the final sparsity in force at optimizer `step` (0-based, the step about to run).

    With p = clamp((step - start) / (end - start), 0, 1):
    - linear: f = p
    - cubic (Zhu & Gupta 2017, "To prune, or not to prune"): f = 1 - (1 - p)^3, i.e.
      s(t) = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 with s_i = 0.

    Dense (f = 0) before `start`; f = 1 from `end` on. When start == end the ramp is a single jump at `start`.

    >>> ramp_fraction(5, 0, 10), ramp_fraction(5, 0, 10, "cubic")
    (0.5, 0.875)
    """
    if step < start:
        return 0.0
    if step >= end:
        return 1.0
    p = (step - start) / (end - start)
    if shape == "linear":
        return p
    if shape == "cubic":
        return 1.0 - (1.0 - p) ** 3
    raise ValueError(f"Unknown sparsity schedule {shape!r}; choose 'linear' or 'cubic'.")


def zeros_at(fraction: float, budget: int) -> int:
    """Number of zeros a layer with final budget `budget` holds at ramp fraction `fraction`.

    >>> zeros_at(0.5, 9), zeros_at(1.0, 9)
    (4, 9)
    """
    return min(budget, int(round(fraction * budget)))


class PruningSchedule:
    """The "when" of pruning, resolved against the number of optimizer steps: a pure object, no model state.

    >>> s = PruningSchedule(pruning_start=0.1, pruning_end=0.5, harden_at=0.8, total_steps=100)
    >>> (s.start, s.end, s.harden_step), s.fraction(30), s.is_exact(30, refresh_steps=10)
    ((10, 50, 80), 0.5, True)
    """

    def __init__(self, pruning_start: float, pruning_end: float, harden_at: float | None, total_steps: int,
                 shape: str = "linear"):
        if total_steps <= 0:
            raise ValueError(f"Training has {total_steps} optimizer steps; pruning needs at least one.")
        points = {"pruning_start": pruning_start, "pruning_end": pruning_end, "harden_at": harden_at}
        steps = {k: resolve_step(v, total_steps) for k, v in points.items() if v is not None}
        for name, step in steps.items():
            if step > total_steps:
                raise ValueError(
                    f"PDPConfig.{name}={points[name]!r} is step {step}, after the end of training "
                    f"({total_steps} optimizer steps). Shorten the schedule, use fractions (< 1) or train longer."
                )
        if steps["pruning_end"] < steps["pruning_start"]:
            raise ValueError(
                f"PDPConfig.pruning_end={pruning_end!r} (step {steps['pruning_end']}) comes before "
                f"pruning_start={pruning_start!r} (step {steps['pruning_start']})."
            )
        if "harden_at" in steps and steps["harden_at"] < steps["pruning_end"]:
            raise ValueError(
                f"PDPConfig.harden_at={harden_at!r} (step {steps['harden_at']}) comes before "
                f"pruning_end={pruning_end!r} (step {steps['pruning_end']}); masks can only harden at full sparsity."
            )
        self.total_steps = total_steps
        self.start, self.end = steps["pruning_start"], steps["pruning_end"]
        self.harden_step = steps.get("harden_at")
        self.shape = shape

    @classmethod
    def from_config(cls, config, total_steps: int) -> PruningSchedule:
        return cls(config.pruning_start, config.pruning_end, config.harden_at, total_steps, config.sparsity_schedule)

    def fraction(self, step: int) -> float:
        """Fraction of the final budgets in force at optimizer `step` (see `ramp_fraction`)."""
        return ramp_fraction(step, self.start, self.end, self.shape)

    def hardens_at(self, step: int) -> bool:
        return self.harden_step is not None and step >= self.harden_step

    def is_exact(self, step: int, refresh_steps: int) -> bool:
        """Whether step `step` selects thresholds exactly (every `refresh_steps` steps from the ramp's start)."""
        return (step - self.start) % refresh_steps == 0
