"""`PruningScores`: the learnable unit scores of SMART and movement, as a submodule of the model."""

from __future__ import annotations

import torch
from torch import nn

SCORES_ATTR = "pdp_scores"


class PruningScores(nn.Module):
    """The learnable unit scores of a method with `learnable_scores` (SMART, movement), one parameter per unit
    group, attached to the model as `model.pdp_scores`: `model.parameters()`, DDP's gradient all-reduce, `.to()`
    and Trainer checkpoints (keys `pdp_scores.scores.<group name with "." as "__">` beside the weights) all see
    them. `finalize_pruning`
    removes the module, so exports hold no trace of it."""

    def __init__(self, scores: dict[str, torch.Tensor]):
        super().__init__()
        self.scores = nn.ParameterDict({self.key(name): nn.Parameter(value) for name, value in scores.items()})

    def _apply(self, fn, recurse=True):
        # Follow the model's device, never its dtype: scores in bf16 or fp16 hold only a few thousand distinct values
        # (Adam's small steps round away, the soft top-k sees ties), so they stay float32 after model.half().
        def same_dtype(tensor):
            moved = fn(tensor)
            return moved if moved.dtype == tensor.dtype else tensor.to(moved.device)

        return super()._apply(same_dtype, recurse)

    @staticmethod
    def key(group_name: str) -> str:
        return group_name.replace(".", "__")  # ParameterDict keys cannot hold dots

    def __getitem__(self, group_name: str) -> nn.Parameter:
        return self.scores[self.key(group_name)]
