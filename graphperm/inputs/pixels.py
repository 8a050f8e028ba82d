"""Vision encoders: pixel values (ViT, DeiT, BEiT, DINOv2, CLIP's vision tower, ...).

Example:
    >>> from graphperm.trace import load_model
    >>> adapter = adapter_for(load_model("builtin:vit-tiny"))
    >>> {k: tuple(v.shape) for k, v in adapter.example().items()}
    {'pixel_values': (1, 3, 32, 32)}
"""

from __future__ import annotations

import torch

from graphperm.inputs.base import InputAdapter, adapter_for, register_adapter

__all__ = ["PixelAdapter", "adapter_for"]


@register_adapter("pixel_values")
class PixelAdapter(InputAdapter):
    """Random images of the config's size for export."""

    kind = "pixels"
    item = "images"
    unit = "images"

    def image_size(self) -> tuple[int, int]:
        size = getattr(self.loaded.config, "image_size", 224)
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def example(self, batch_size=1, length=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        channels = getattr(self.loaded.config, "num_channels", 3)
        h, w = self.image_size()
        return {self.input_name: torch.randn(batch_size, channels, h, w, generator=g)}
