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
