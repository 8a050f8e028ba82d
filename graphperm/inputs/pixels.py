"""Vision encoders: pixel values (ViT, DeiT, BEiT, DINOv2, CLIP's vision tower, ...).

Calibration images (``.png``, ``.jpg``, ``.jpeg``, ``.webp`` files or folders) go through the
model's image processor when its folder has a ``preprocessor_config.json``; otherwise each image
is resized to the config's ``image_size`` (bilinear) and normalised with the ImageNet mean
(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225). One mask position per image.

Every image is first brought to 8-bit RGB (or grayscale, for one-channel models) by its real
range (:func:`to_8bit`): 16- and 32-bit grayscale scaled from their bit depth (PIL's own
conversion clips them to white), palettes expanded, transparency laid over white (as
transformers' ``convert_rgb`` does), CMYK converted.

Example:
    >>> from graphperm.trace import load_model
    >>> adapter = adapter_for(load_model("builtin:vit-tiny"))
    >>> {k: tuple(v.shape) for k, v in adapter.example().items()}
    {'pixel_values': (1, 3, 32, 32)}
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from graphperm.data.text import IMAGE_SUFFIXES, find_files, pick
from graphperm.errors import CalibrationError
from graphperm.inputs.base import (
    CalibrationData,
    InputAdapter,
    ModelBatch,
    adapter_for,
    register_adapter,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PixelAdapter", "adapter_for", "to_8bit"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_8bit(im, mode: str = "RGB"):
    """PIL image ``im`` as an 8-bit ``mode`` (``"RGB"`` or ``"L"``) image, by its real range.

    Example:
        >>> from PIL import Image
        >>> deep = Image.fromarray(np.full((2, 2), 32768, dtype=np.uint16))  # mode I;16
        >>> deep.convert("RGB").getpixel((0, 0)), to_8bit(deep).getpixel((0, 0))
        ((255, 255, 255), (128, 128, 128))
        >>> clear = Image.new("RGBA", (1, 1), (0, 0, 0, 0))  # transparent: white, not black
        >>> to_8bit(clear).getpixel((0, 0))
        (255, 255, 255)
    """
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        x = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            top = 1.0 if x.max(initial=0.0) <= 1.0 else 65535.0
        else:  # I;16*, and I: the mode PIL gives many 16-bit files
            top = 65535.0
        gray = Image.fromarray(np.clip(np.rint(x / top * 255.0), 0, 255).astype(np.uint8), "L")
        return gray if mode == "L" else gray.convert(mode)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert(mode)


@register_adapter("pixel_values")
class PixelAdapter(InputAdapter):
    """Images of the config's size: random for export, the user's through the processor."""

    kind = "pixels"
    item = "images"
    unit = "images"

    def image_size(self) -> tuple[int, int]:
        size = getattr(self.loaded.config, "image_size", 224)
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def channels(self) -> int:
        return int(getattr(self.loaded.config, "num_channels", 3))

    def example(self, batch_size=1, length=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        h, w = self.image_size()
        return {self.input_name: torch.randn(batch_size, self.channels, h, w, generator=g)}

    def processor(self):
        """The model folder's image processor, or None (then: resize + ImageNet normalisation)."""
        folder = Path(self.loaded.source)
        if not (folder / "preprocessor_config.json").is_file():
            return None
        from transformers import AutoImageProcessor

        try:
            return AutoImageProcessor.from_pretrained(folder)
        except Exception as err:  # transformers raises OSError, ValueError, KeyError, ...
            raise CalibrationError(f"cannot load the image processor of '{folder}': {err}") from err

    def pixels(self, images: list, processor) -> torch.Tensor:
        """``(len(images), C, H, W)`` float pixel values of PIL ``images``."""
        h, w = self.image_size()
        mode = "RGB" if self.channels == 3 else "L"
        images = [to_8bit(im, mode) for im in images]
        if processor is not None:
            out = processor(images=images, return_tensors="pt")["pixel_values"].float()
            if tuple(out.shape[-2:]) != (h, w):
                raise CalibrationError(
                    f"the image processor makes {tuple(out.shape[-2:])} images but the model "
                    f"expects {(h, w)}; fix preprocessor_config.json"
                )
            return out
        mean = torch.tensor(IMAGENET_MEAN if self.channels == 3 else (0.5,)).view(-1, 1, 1)
        std = torch.tensor(IMAGENET_STD if self.channels == 3 else (0.5,)).view(-1, 1, 1)
        rows = []
        for im in images:
            im = im.resize((w, h), resample=2)  # 2: bilinear
            x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).float() / 255.0
            x = x.view(h, w, -1).permute(2, 0, 1)
            rows.append((x - mean) / std)
        return torch.stack(rows)

    def calibration(
        self, sources: Sequence[str | Path], *, shard: tuple[int, int] | None = None
    ) -> CalibrationData:
        if self.settings is None:
            raise CalibrationError("calibration needs the policy's calibration settings")
        from PIL import Image

        files = find_files(sources, IMAGE_SUFFIXES, "images")
        chosen = pick(files, self.settings.num_clips, self.settings.seed, shard)
        processor = self.processor()
        skipped: list[str] = []

        def load(path: Path):
            try:
                with Image.open(path) as im:
                    im.load()
                    return im.copy()
            except Exception as err:  # PIL raises many kinds for a bad file
                skipped.append(f"{path}: {err}")
                return None

        def stream(batch_size: int) -> Iterator[ModelBatch]:
            for i in range(0, len(chosen), batch_size):
                images = [im for im in map(load, chosen[i : i + batch_size]) if im is not None]
                if not images:
                    continue
                h, w = self.image_size()
                values = torch.zeros(batch_size, self.channels, h, w)
                values[: len(images)] = self.pixels(images, processor)
                mask = torch.zeros(batch_size, 1, dtype=torch.bool)
                mask[: len(images)] = True
                yield ModelBatch({self.input_name: values}, mask, len(images))

        how = "the model's image processor" if processor else "resize + ImageNet normalisation"
        summary = {
            "files": len(files),
            "skipped_files": skipped,
            "description": f"{len(chosen)} of {len(files)} images, through {how}",
        }
        return CalibrationData(stream, len(chosen), summary)
