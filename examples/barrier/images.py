"""Pair (b): two small pre-LayerNorm ViTs (`ViTForImageClassification`) on drawn shapes.

    python examples/barrier/images.py train --seed 1 &   # about 7 min each on one core, unloaded
    python examples/barrier/images.py train --seed 2 &
    wait

The task: 10 classes of shapes (disk, ring, square, square outline, triangle, plus, striped
disk, two disks, ellipse, star) drawn with numpy at 32x32 in random colours, sizes, positions and
rotations, light on a dark background with a faint gradient and noise (`draw`). 30,000 training
images (seed 0) and 2,000 held-out images (seed 1), the same for both models; the training
seed sets the initialisation and the batch order. `transformers.ViTForImageClassification` is
pre-LN (each block reads the stream through a LayerNorm and adds its output back; nothing
nonlinear writes the stream), and carries its linear head on the final LayerNorm of the [CLS]
token, so graphperm traces encoder and head as one module. The loss of the barrier is the
cross-entropy on the held-out images.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn
from trainlog import StepLog, save_summary
from transformers import ViTConfig, ViTForImageClassification

from graphperm.trace import LoadedModel, load_model

HERE = Path(__file__).resolve().parent
CHECKPOINTS = HERE / "checkpoints"
SIZE = 32
CLASSES = (
    "disk",
    "ring",
    "square",
    "square outline",
    "triangle",
    "plus",
    "striped disk",
    "two disks",
    "ellipse",
    "star",
)
TRAIN_SEED, TEST_SEED = 0, 1
N_TRAIN, N_TEST = 30_000, 2_000
CONFIG = {
    "image_size": SIZE,
    "patch_size": 8,
    "num_channels": 3,
    "hidden_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 384,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "num_labels": len(CLASSES),
}
RECIPE = {"steps": 3000, "batch_size": 64, "lr": 2e-3, "warmup": 0.05, "weight_decay": 0.05}


# ------------------------------------------------------------------------------------ data
def _sdf(kind: int, q: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    """Signed distance (pixels, negative inside) of shape ``kind`` at local coordinates q
    (2, H, W), centred and rotated already."""
    x, y = q
    r = np.hypot(x, y)
    if kind == 0:  # disk
        return r - size
    if kind == 1:  # ring
        return np.abs(r - size) - max(1.0, size * 0.22)
    if kind == 2:  # square
        return np.maximum(np.abs(x), np.abs(y)) - size * 0.8
    if kind == 3:  # square outline
        return np.abs(np.maximum(np.abs(x), np.abs(y)) - size * 0.8) - max(1.0, size * 0.18)
    if kind == 4:  # triangle: the largest of three edge distances
        angles = np.pi / 2 + 2 * np.pi * np.arange(3) / 3
        d = np.stack([x * np.cos(a) + y * np.sin(a) for a in angles])
        return d.max(0) - size * 0.5
    if kind == 5:  # plus
        w, length = max(1.2, size * 0.3), size
        bar = np.maximum(np.abs(x) - length, np.abs(y) - w)
        return np.minimum(bar, np.maximum(np.abs(y) - length, np.abs(x) - w))
    if kind == 6:  # striped disk
        period = rng.uniform(3.0, 5.0)
        stripes = (np.abs(((x / period) % 1.0) - 0.5) - 0.25) * period
        return np.maximum(r - size, stripes)
    if kind == 7:  # two disks
        d = size * 0.6
        small = size * 0.45
        return np.minimum(np.hypot(x - d, y) - small, np.hypot(x + d, y) - small)
    if kind == 8:  # ellipse, aspect 2.5
        a, b = size * 1.2, size * 0.48
        return (np.hypot(x / a, y / b) - 1.0) * b
    # star: five points
    theta = np.arctan2(y, x)
    return r - size * (0.62 + 0.38 * np.cos(5 * theta))


def draw(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (n, 3, SIZE, SIZE) in [-1, 1] and their labels; deterministic in ``seed``.

    A light shape on a dark background (random colours, a faint gradient and noise), at a random
    size, position and rotation."""
    rng = np.random.default_rng(seed)
    scale = SIZE / 32
    grid = np.stack(np.meshgrid(np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5, indexing="xy"))
    images = np.empty((n, 3, SIZE, SIZE), np.float32)
    labels = rng.integers(len(CLASSES), size=n)
    for i, kind in enumerate(labels):
        size = rng.uniform(6.0, 10.0) * scale
        centre = rng.uniform(size + 1, SIZE - size - 1, size=2)
        angle = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(angle), np.sin(angle)
        p = grid - centre[:, None, None]
        q = np.stack([c * p[0] + s * p[1], -s * p[0] + c * p[1]]) / scale
        shape = np.clip(0.5 - _sdf(int(kind), q, size / scale, rng) * scale, 0.0, 1.0)
        bg = rng.uniform(0.0, 0.35, 3)
        fg = rng.uniform(0.65, 1.0, 3)
        slope = rng.normal(0, 0.1, size=2)
        gradient = slope[0] * (grid[0] / SIZE - 0.5) + slope[1] * (grid[1] / SIZE - 0.5)
        img = bg[:, None, None] + gradient + (fg - bg)[:, None, None] * shape
        img += rng.normal(0, 0.03, size=img.shape)
        images[i] = np.clip(img, 0, 1) * 2 - 1
    return torch.from_numpy(images), torch.from_numpy(labels)


class ImageTask:
    """The held-out loss of pair (b) and its calibration images."""

    @cached_property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return draw(N_TEST, TEST_SEED)

    def loss(self, module: nn.Module) -> float:
        """Mean cross-entropy of the classifier on the held-out images."""
        module.eval()
        x, y = self.test
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(x), 500):
                logits = module(pixel_values=x[i : i + 500]).logits
                total += nn.functional.cross_entropy(logits, y[i : i + 500], reduction="sum").item()
        return total / len(x)

    def accuracy(self, module: nn.Module) -> float:
        x, y = self.test
        with torch.no_grad():
            return (module.eval()(pixel_values=x).logits.argmax(-1) == y).float().mean().item()

    def calib(self, clips: int = 512, batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
        """Calibration batches: the first ``clips`` training images, ``batch_size`` at a time."""
        x, _ = draw(clips, TRAIN_SEED)
        return [{"pixel_values": x[i : i + batch_size]} for i in range(0, clips, batch_size)]


# ------------------------------------------------------------------------------- checkpoints
def checkpoint(seed: int, width: int = CONFIG["hidden_size"], variant: str = "") -> Path:
    """Where seed ``seed``'s classifier of width ``width`` is saved (`vit-seedN` at the default
    width, `vit{width}-seedN` otherwise; `vit{width}-{variant}-seedN` for a recipe variant)."""
    tag = "" if width == CONFIG["hidden_size"] else str(width)
    return CHECKPOINTS / (f"vit{tag}-{variant}-seed{seed}" if variant else f"vit{tag}-seed{seed}")


def config(width: int = CONFIG["hidden_size"]) -> dict:
    """`CONFIG` at another width: heads of 24 channels, MLP 4x wide, everything else kept."""
    return {
        **CONFIG,
        "hidden_size": width,
        "num_attention_heads": width // 24,
        "intermediate_size": 4 * width,
    }


def load(folder: Path) -> LoadedModel:
    """A saved classifier (encoder + head) as graphperm's LoadedModel. graphperm's
    ``load_model(folder)`` would load it with ``AutoModel`` (the bare ``ViTModel``, no head), so
    the module is loaded here and handed over."""
    if not (folder / "config.json").exists():
        sys.exit(f"{folder} not found: run `python examples/barrier/images.py train --seed N`")
    loaded = load_model(ViTForImageClassification.from_pretrained(folder, dtype=torch.float32))
    loaded.source = str(folder)
    return loaded


def lr_at(step: int, steps: int, recipe: dict = RECIPE) -> float:
    warm = max(1, int(recipe["warmup"] * steps))
    if step < warm:
        return recipe["lr"] * (step + 1) / warm
    return recipe["lr"] * 0.5 * (1 + np.cos(np.pi * (step - warm) / max(1, steps - warm)))


def train(
    seed: int,
    steps: int,
    width: int = CONFIG["hidden_size"],
    log_every: int = 50,
    variant: str = "",
    **changes: float,
) -> None:
    """Train seed ``seed``; ``changes`` override `RECIPE` entries (a recipe variant, saved
    under its own ``variant`` name)."""
    recipe = {**RECIPE, **changes, "steps": steps}
    t0 = time.time()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    x, y = draw(N_TRAIN, TRAIN_SEED)
    t_data = time.time() - t0
    torch.manual_seed(seed)
    model = ViTForImageClassification(ViTConfig(**config(width)))
    opt = torch.optim.AdamW(
        model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"]
    )
    order = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(N_TRAIN, generator=order), 0
    log = StepLog(log_every, t0)
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, recipe)
        if pos + recipe["batch_size"] > N_TRAIN:
            perm, pos = torch.randperm(N_TRAIN, generator=order), 0
        idx = perm[pos : pos + recipe["batch_size"]]
        pos += recipe["batch_size"]
        loss = nn.functional.cross_entropy(model(pixel_values=x[idx]).logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        log.add(step, steps, loss.item())
    model.eval()
    out = checkpoint(seed, width, variant)
    model.save_pretrained(out)
    task = ImageTask()
    summary = {
        "pair": "b",
        "seed": seed,
        "steps": steps,
        "recipe": recipe,
        "variant": variant,
        "config": config(width),
        "parameters": sum(p.numel() for p in model.parameters()),
        "heldout_loss": round(task.loss(model), 4),
        "heldout_accuracy": round(task.accuracy(model), 4),
        "data_seconds": round(t_data, 1),
        "train_seconds": round(time.time() - t0, 1),
    }
    save_summary(
        out,
        summary,
        log,
        f"held-out loss {summary['heldout_loss']}, accuracy {summary['heldout_accuracy']}, "
        f"{summary['train_seconds']} s",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one seed")
    t.add_argument("--seed", type=int, required=True)
    t.add_argument("--steps", type=int, default=RECIPE["steps"])
    t.add_argument("--width", type=int, default=CONFIG["hidden_size"], help="a multiple of 24")
    t.add_argument("--lr", type=float, default=RECIPE["lr"])
    t.add_argument("--weight-decay", type=float, default=RECIPE["weight_decay"])
    t.add_argument("--variant", default="", help="name of a recipe variant (its own checkpoint)")
    args = parser.parse_args()
    changes = {"lr": args.lr, "weight_decay": args.weight_decay}
    if changes != {k: RECIPE[k] for k in changes} and not args.variant:
        parser.error("a changed recipe needs --variant NAME (its own checkpoint folder)")
    train(args.seed, args.steps, args.width, variant=args.variant, **changes)


if __name__ == "__main__":
    main()
