"""Pretrain the two small encoders of the Table I miniature (CPU: 16 min, both at once on 2 cores).

    python examples/table1/train.py speech  # HuBERT-style: masked prediction of MFCC k-means units
    python examples/table1/train.py music   # MERT-style: log-mel + chroma units, CQT reconstruction

Both are `transformers.HubertModel` with the same config (config.json next to this file),
started from different seeds and trained on different corpora (data/manifest.json, written by
make_data.py) with different objectives. Frame-level targets are computed on the encoder's
50 Hz grid (features.py), clustered with a seeded k-means (kmeans.py), and predicted at masked
frames (spans of `mask_time_length` frames replaced by the model's `masked_spec_embed`). The
prediction heads live only here; the saved checkpoint (save_pretrained, in
graphperm/assets/encoders/<model>, which the demo ships) is the bare encoder, plus its
preprocessor_config.json and train_log.json (recipe, loss curve, timings, versions).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import audio
import features
import kmeans
import numpy as np
import torch
import transformers
from torch import nn
from transformers import HubertConfig, HubertModel
from transformers.models.hubert.modeling_hubert import _compute_mask_indices

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
CONFIG = HERE / "config.json"
CHECKPOINTS = HERE.parents[1] / "graphperm" / "assets" / "encoders"


@dataclass(frozen=True)
class Target:
    """A frame-level target: k-means units of a feature (classification) or the feature itself.

    site "top": predicted from the last layer at masked frames (plus `unmasked_weight` times the
    loss at unmasked frames); site "cnn": predicted from the conv feature extractor's output at
    every frame, an auxiliary loss with a short gradient path that makes the small front-end
    learn fine spectral detail within the CPU budget.
    """

    feature: str  # name in FEATURES
    units: int = 0  # k for k-means; 0 = regress the standardized feature (MSE)
    weight: float = 1.0
    site: str = "top"

    @property
    def data(self) -> str:
        """Name of the frame targets: the feature, or its k-means units."""
        return f"{self.feature}_k{self.units}" if self.units else self.feature

    @property
    def key(self) -> str:
        """Name of the head (and of the logged loss)."""
        return f"{self.site}_{self.data}"


@dataclass(frozen=True)
class Recipe:
    corpus: str
    seed: int
    targets: tuple[Target, ...]
    steps: int = 3000
    batch_size: int = 16
    crop_seconds: float = 1.0
    lr: float = 5e-4
    warmup: float = 0.08
    weight_decay: float = 0.01
    degrade_prob: float = 0.5  # share of crops put through audio.degrade (targets stay clean)
    unmasked_weight: float = 0.5  # HuBERT's (1 - alpha): weight of the loss on unmasked frames
    notes: dict = field(default_factory=dict)


FEATURES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mfcc": features.mfcc,
    "logmel": lambda w: features.log_mel(w, n_mels=64),
    "chroma": features.chroma,
    "cqt": features.cqt,
}

RECIPES = {
    # HuBERT-style: MFCC k-means units, predicted at masked frames (and, with half the weight, at
    # unmasked frames) from the last layer, and at every frame from the conv front-end.
    "speech": Recipe(
        corpus="speech",
        seed=1,
        targets=(Target("mfcc", units=100), Target("mfcc", units=100, weight=0.5, site="cnn")),
    ),
    # MERT-style: log-mel and chroma k-means units (acoustic teacher) plus CQT reconstruction
    # (musical teacher) from the last layer; log-mel reconstruction from the conv front-end.
    "music": Recipe(
        corpus="music",
        seed=2,
        targets=(
            Target("logmel", units=100),
            Target("chroma", units=50),
            Target("cqt"),
            Target("logmel", site="cnn"),
        ),
    ),
}


def load_corpus(files: list[str], min_samples: int) -> list[torch.Tensor]:
    """Read corpus files (relative to data/ or absolute), normalized, zero-padded to min length."""
    waves = []
    for f in files:
        path = Path(f) if Path(f).is_absolute() else DATA / f
        w = features.normalize_wave(torch.from_numpy(audio.read(path)))
        if len(w) < min_samples:
            w = torch.nn.functional.pad(w, (0, min_samples - len(w)))
        waves.append(w)
    return waves


def make_targets(waves: list[torch.Tensor], recipe: Recipe) -> tuple[list[dict], dict]:
    """Per file, {target name: (frames,) int64 units or (frames, dim) float features}."""
    per_file: list[dict] = [{} for _ in waves]
    info: dict = {}
    for i, t in enumerate(recipe.targets):
        if t.data in info:  # the same targets at another site: already made
            continue
        feats = [FEATURES[t.feature](w).numpy() for w in waves]
        allf = np.concatenate(feats)
        mean, std = allf.mean(0), allf.std(0) + 1e-5
        feats = [(f - mean) / std for f in feats]
        if t.units:
            centroids, inertia = kmeans.fit(np.concatenate(feats), t.units, seed=recipe.seed + i)
            for d, f in zip(per_file, feats, strict=True):
                d[t.data] = torch.from_numpy(kmeans.assign(f, centroids))
            counts = np.bincount(
                torch.cat([d[t.data] for d in per_file]).numpy(), minlength=t.units
            )
            info[t.data] = {
                "units": t.units,
                "kmeans_mse": round(inertia, 4),
                "unit_entropy_bits": round(_entropy(counts), 3),
            }
        else:
            for d, f in zip(per_file, feats, strict=True):
                d[t.data] = torch.from_numpy(f.astype(np.float32))
            info[t.data] = {"dim": int(feats[0].shape[1])}
    return per_file, info


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


class Batcher:
    """Random crops aligned to the 320-sample frame grid, with their (clean) frame targets.

    A share `degrade_prob` of the crops is put through random recording conditions
    (audio.degrade), so the encoders learn to see through EQ, reverb and noise (as WavLM does).
    """

    def __init__(
        self,
        waves: list[torch.Tensor],
        targets: list[dict],
        crop: int,
        seed: int,
        degrade_prob: float = 0.0,
    ):
        self.waves, self.targets, self.crop = waves, targets, crop
        self.degrade_prob = degrade_prob
        self.frames = features.n_frames(crop)
        starts = np.array([(len(w) - crop) // features.HOP + 1 for w in waves])
        self.starts = starts
        self.p = starts / starts.sum()
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        files = self.rng.choice(len(self.waves), batch_size, p=self.p)
        wavs, tgts = [], []
        for f in files:
            s = int(self.rng.integers(self.starts[f]))
            wav = self.waves[f][s * features.HOP : s * features.HOP + self.crop]
            if self.rng.random() < self.degrade_prob:
                wav = torch.from_numpy(audio.degrade(wav.numpy(), self.rng))
            wavs.append(wav)
            tgts.append({k: v[s : s + self.frames] for k, v in self.targets[f].items()})
        wav = features.normalize_wave(torch.stack(wavs))
        return wav, {k: torch.stack([t[k] for t in tgts]) for k in tgts[0]}


def build_heads(recipe: Recipe, config: HubertConfig, dims: dict) -> nn.ModuleDict:
    """One linear head per target, on the last layer (site "top") or the conv output ("cnn")."""
    width = {"top": config.hidden_size, "cnn": config.conv_dim[-1]}
    return nn.ModuleDict(
        {t.key: nn.Linear(width[t.site], t.units or dims[t.data]["dim"]) for t in recipe.targets}
    )


def lr_at(step: int, recipe: Recipe) -> float:
    """Linear warmup, then cosine decay to 0."""
    warm = max(1, int(recipe.warmup * recipe.steps))
    if step < warm:
        return recipe.lr * (step + 1) / warm
    progress = (step - warm) / max(1, recipe.steps - warm)
    return recipe.lr * 0.5 * (1 + np.cos(np.pi * progress))


def train(name: str, recipe: Recipe, out: Path, threads: int, log_every: int = 25) -> None:
    t0 = time.time()
    torch.set_num_threads(threads)
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)  # _compute_mask_indices draws from numpy's global RNG
    torch.use_deterministic_algorithms(True, warn_only=True)

    manifest = json.loads((DATA / "manifest.json").read_text())
    crop = int(recipe.crop_seconds * audio.SR)
    waves = load_corpus(manifest["corpora"][recipe.corpus], crop)
    minutes = sum(len(w) for w in waves) / audio.SR / 60
    print(f"{name}: {len(waves)} files, {minutes:.1f} min of audio", file=sys.stderr)
    targets, target_info = make_targets(waves, recipe)
    t_prep = time.time() - t0
    print(f"targets ready in {t_prep:.0f} s: {target_info}", file=sys.stderr)

    config = HubertConfig.from_json_file(CONFIG)
    model = HubertModel(config)
    heads = build_heads(recipe, config, target_info)
    cnn_out: dict[str, torch.Tensor] = {}
    model.feature_extractor.register_forward_hook(
        lambda _m, _i, out: cnn_out.__setitem__("x", out.transpose(1, 2))
    )
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(
        params, lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=recipe.weight_decay
    )
    batcher = Batcher(waves, targets, crop, recipe.seed, recipe.degrade_prob)
    log: list[dict] = []
    acc_sums: dict[str, float] = {}
    loss_sums: dict[str, float] = {}
    loss_sum, n_sum = 0.0, 0
    model.train()
    for step in range(recipe.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, recipe)
        wav, tgt = batcher(recipe.batch_size)
        mask = torch.from_numpy(
            _compute_mask_indices(
                (wav.shape[0], batcher.frames),
                config.mask_time_prob,
                config.mask_time_length,
                min_masks=2,
            )
        )
        top = model(wav, mask_time_indices=mask).last_hidden_state
        loss = torch.zeros(())
        for t in recipe.targets:
            pred, y = heads[t.key](top if t.site == "top" else cnn_out["x"]), tgt[t.data]
            if t.units:
                per_frame = nn.functional.cross_entropy(pred.transpose(1, 2), y, reduction="none")
                hit = pred.argmax(-1) == y
                acc = (hit[mask] if t.site == "top" else hit).float().mean().item()
                acc_sums[t.key] = acc_sums.get(t.key, 0.0) + acc
            else:
                per_frame = (pred - y).pow(2).mean(-1)
            if t.site == "cnn":
                part = per_frame.mean()
            else:
                part = per_frame[mask].mean()
                if recipe.unmasked_weight:
                    part = part + recipe.unmasked_weight * per_frame[~mask].mean()
            loss = loss + t.weight * part
            loss_sums[t.key] = loss_sums.get(t.key, 0.0) + part.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        loss_sum, n_sum = loss_sum + loss.item(), n_sum + 1
        if (step + 1) % log_every == 0 or step + 1 == recipe.steps:
            entry = {
                "step": step + 1,
                "loss": round(loss_sum / n_sum, 4),
                "lr": round(lr_at(step, recipe), 7),
                "seconds": round(time.time() - t0, 1),
            }
            entry |= {f"loss_{k}": round(v / n_sum, 4) for k, v in loss_sums.items()}
            entry |= {f"acc_{k}": round(v / n_sum, 4) for k, v in acc_sums.items()}
            log.append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)
            loss_sum, n_sum, acc_sums, loss_sums = 0.0, 0, {}, {}

    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    # The input convention (zero-mean, unit-variance waveforms at 16 kHz), for graphperm's
    # calibration and for anyone loading the encoder with AutoFeatureExtractor.
    transformers.Wav2Vec2FeatureExtractor(
        sampling_rate=audio.SR, do_normalize=True, return_attention_mask=False
    ).save_pretrained(out)
    summary = {
        "model": name,
        "recipe": asdict(recipe),
        "targets": target_info,
        "corpus_files": len(waves),
        "corpus_minutes": round(minutes, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": threads,
        "prep_seconds": round(t_prep, 1),
        "total_seconds": round(time.time() - t0, 1),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "log": log,
    }
    (out / "train_log.json").write_text(json.dumps(summary, indent=1))
    print(f"saved {out} after {summary['total_seconds']:.0f} s", file=sys.stderr)


def override(recipe: Recipe, assignments: list[str]) -> Recipe:
    """Apply FIELD=VALUE overrides (numbers only) to a recipe, e.g. ["lr=1e-3", "steps=500"]."""
    changes = {}
    for item in assignments:
        name, _, value = item.partition("=")
        current = getattr(recipe, name, None)
        if not isinstance(current, int | float) or isinstance(current, bool):
            sys.exit(f"--set {item}: {name!r} is not a numeric recipe field")
        changes[name] = type(current)(float(value)) if isinstance(current, int) else float(value)
    return replace(recipe, **changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(RECIPES))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a numeric recipe field, e.g. --set steps=500",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--out", type=Path, help="default: graphperm/assets/encoders/<model> (what the demo ships)"
    )
    args = parser.parse_args()
    if not (DATA / "manifest.json").exists():
        sys.exit("data/manifest.json not found: run `python examples/table1/make_data.py` first")
    recipe = override(RECIPES[args.model], args.set)
    train(args.model, recipe, args.out or CHECKPOINTS / args.model, args.threads)


if __name__ == "__main__":
    main()
