"""The interface every mask method implements, and the exact hard mask they all share."""

from __future__ import annotations

import torch
from torch import nn


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


def remove_buffer(module: nn.Module, name: str) -> None:
    """Delete a buffer registered with `register_buffer`, leaving no trace in the module."""
    module._buffers.pop(name, None)
    module._non_persistent_buffers_set.discard(name)


class MaskMethod:
    """How a pruned Linear layer computes its weight during training.

    Lifecycle per layer: `init_module` once, `update` once per optimizer step with the number of zeros in force
    (outside autograd), `soft_weight` in every training forward (differentiable), `hard_mask` for hardening,
    reports and finalize (exact count).
    """

    name: str = ""

    @classmethod
    def from_config(cls, config) -> "MaskMethod":
        """Build the method from a `PDPConfig` (methods read only the fields they need)."""
        return cls()

    def init_module(self, module: nn.Linear) -> None:
        """Attach the method's per-layer buffers (non-persistent: checkpoints keep plain state_dict keys)."""

    def update(self, module: nn.Linear, zeros: int, exact: bool = True) -> None:
        """Recompute the layer's mask state for `zeros` zeros; `exact=False` allows a cheaper estimate."""
        raise NotImplementedError

    def soft_weight(self, module: nn.Linear) -> torch.Tensor:
        raise NotImplementedError

    def eval_weight(self, module: nn.Linear) -> torch.Tensor:
        """Weight used in eval mode before hardening: the hard mask at the current sparsity."""
        return module.weight * hard_mask_from_scores(self.scores(module.weight), module.pdp_zeros)

    def scores(self, weight: torch.Tensor) -> torch.Tensor:
        """Importance of each weight; the smallest are pruned first."""
        return weight.detach().abs()

    def hard_mask(self, module: nn.Linear, zeros: int) -> torch.Tensor:
        return hard_mask_from_scores(self.scores(module.weight), zeros)

    def mask_gap(self, module: nn.Linear) -> torch.Tensor:
        """Sum over entries of |soft mask - hard mask| (for logging); 0 when the method has no soft mask."""
        return torch.zeros((), device=module.weight.device)

    def remove_module(self, module: nn.Linear) -> None:
        """Delete what `init_module` attached."""
