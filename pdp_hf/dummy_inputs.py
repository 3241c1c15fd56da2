"""Random inputs shaped for a model's config: token ids and a full attention mask for text models, pixel values for
image models. What timings and exports feed a model; the values do not matter, the shapes do."""

from __future__ import annotations

import torch


def dummy_inputs(config, batch: int, seq: int, device=None, seed: int | None = None) -> dict[str, torch.Tensor]:
    """`{"input_ids", "attention_mask"}` (text: a config with `vocab_size`) or `{"pixel_values"}` (images)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if getattr(config, "vocab_size", None):
        ids = torch.randint(0, config.vocab_size, (batch, seq), generator=generator).to(device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    size = config.image_size
    return {"pixel_values": torch.randn(batch, config.num_channels, size, size, generator=generator).to(device)}
