"""Pair (a): two HuBERT-architecture speech encoders with their pretraining heads.

    python examples/barrier/speech.py train --seed 1 &   # about 3 min each on one core
    python examples/barrier/speech.py train --seed 2 &
    wait

The recipe is examples/table1's speech recipe, shortened: the same `HubertModel` config
(examples/table1/config.json), masked prediction of 100 MFCC k-means units from the last layer
(plus half the weight at unmasked frames) and, as an auxiliary loss, the same units from the
conv front-end at every frame; AdamW 5e-4, cosine, 16 crops of 1 s, half of them through random
recording conditions. Both seeds see the same corpus and the same targets (one k-means, fitted
once with seed 0 on the training files, `data/speech_targets.pt`); the seed sets the
initialisation, the crops, the masks and dropout. The training objective evaluated on the
held-out files at fixed crops and fixed masks (`SpeechTask.loss`) is the loss of the barrier.

The model is `SpeechPretrainer`: `HubertModel` plus the two linear heads, traced and merged as
one module. Its forward is `HubertModel.forward` (feature extractor, projection, HuBERT's own
masking `hidden[mask] = masked_spec_embed`, encoder), written out to keep the conv features for
the "cnn" head. Without a mask it masks with an all-false one, so that the traced graph carries
`masked_spec_embed` (`aten.index_put_`) in the residual stream's basis.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import HubertConfig, HubertModel
from transformers.models.hubert.modeling_hubert import _compute_mask_indices

HERE = Path(__file__).resolve().parent
TABLE1 = HERE.parent / "table1"
sys.path.insert(0, str(TABLE1))

import audio  # noqa: E402  (examples/table1)
import features  # noqa: E402
import kmeans  # noqa: E402
from train import Batcher  # noqa: E402
from trainlog import StepLog, save_summary  # noqa: E402

from graphperm.trace import LoadedModel  # noqa: E402

DATA = HERE / "data"
CHECKPOINTS = HERE / "checkpoints"
CONFIG = TABLE1 / "config.json"
UNITS = 100
TARGET = f"mfcc_k{UNITS}"
KMEANS_SEED = 0
EVAL_SEED = 0
RECIPE = {
    "steps": 500,
    "batch_size": 16,
    "crop_seconds": 1.0,
    "lr": 5e-4,
    "warmup": 0.08,
    "weight_decay": 0.01,
    "degrade_prob": 0.5,
    "unmasked_weight": 0.5,  # HuBERT's (1 - alpha)
    "cnn_weight": 0.5,  # the auxiliary loss from the conv front-end
}


class SpeechPretrainer(nn.Module):
    """`HubertModel` + linear heads predicting k-means units from the last layer ("top") and
    from the conv front-end ("cnn"); forward returns both heads' logits."""

    main_input_name = "input_values"

    def __init__(self, config: HubertConfig, units: int = UNITS):
        super().__init__()
        self.config = config
        self.hubert = HubertModel(config)
        self.top = nn.Linear(config.hidden_size, units)
        self.cnn = nn.Linear(config.conv_dim[-1], units)

    def forward(
        self, input_values: torch.Tensor, mask_time_indices: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        h = self.hubert
        extracted = h.feature_extractor(input_values).transpose(1, 2)
        hidden = h.feature_projection(extracted)
        if mask_time_indices is None:
            mask_time_indices = torch.zeros(
                hidden.shape[:2], dtype=torch.bool, device=hidden.device
            )
        hidden = h._mask_hidden_states(hidden, mask_time_indices=mask_time_indices)
        top = h.encoder(hidden, return_dict=True).last_hidden_state
        return {"top": self.top(top), "cnn": self.cnn(extracted)}


#: Each term's weight in :func:`objective`.
TERM_WEIGHTS = {"masked": 1.0, "unmasked": RECIPE["unmasked_weight"], "cnn": RECIPE["cnn_weight"]}


def terms(
    out: dict[str, torch.Tensor], units: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The objective's three terms: cross-entropy at masked and at unmasked frames (last
    layer's head) and at every frame (conv front-end's head)."""
    top = nn.functional.cross_entropy(out["top"].transpose(1, 2), units, reduction="none")
    cnn = nn.functional.cross_entropy(out["cnn"].transpose(1, 2), units)
    return {"masked": top[mask].mean(), "unmasked": top[~mask].mean(), "cnn": cnn}


def objective(
    out: dict[str, torch.Tensor], units: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """table1's speech objective: CE at masked frames + 0.5 CE at unmasked frames (last layer)
    + 0.5 CE at every frame (conv front-end)."""
    return weighted(terms(out, units, mask))


def weighted(t: dict[str, torch.Tensor]) -> torch.Tensor:
    """The three terms' sum, each weighted by :data:`TERM_WEIGHTS`."""
    return sum(TERM_WEIGHTS[k] * t[k] for k in TERM_WEIGHTS)


def own_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The pretraining objective of ``model`` (a callable taking the model's inputs) on one of
    :meth:`SpeechTask.training_batches`: the ``loss_fn`` of graphperm's learned alignment."""
    mask = batch["mask_time_indices"]
    return objective(
        model(input_values=batch["input_values"], mask_time_indices=mask), batch["units"], mask
    )


def with_targets(
    a: nn.Module, b: nn.Module, batches: list[dict[str, torch.Tensor]]
) -> list[dict[str, torch.Tensor]]:
    """``batches`` without their units, with the parents' mixture of distributions at λ = 0.5
    attached for both heads (``target_top``, ``target_cnn``: log-probabilities, same crops and
    masks): the targets of :func:`distill_loss`, which needs no labels. Units are the same
    classes in both models, so the targets need no alignment."""
    out = []
    half = torch.log(torch.tensor(2.0))
    with torch.no_grad():
        for x in batches:
            wav, mask = x["input_values"], x["mask_time_indices"]
            oa, ob = (m(input_values=wav, mask_time_indices=mask) for m in (a, b))
            mix = {
                k: torch.logaddexp(oa[k].log_softmax(-1), ob[k].log_softmax(-1)) - half
                for k in ("top", "cnn")
            }
            out.append(
                {"input_values": wav, "mask_time_indices": mask}
                | {f"target_{k}": v for k, v in mix.items()}
            )
    return out


def distill_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`objective` with the parents' distributions (:func:`with_targets`) in place of
    the units: KL(parents' mixture || merged) at masked frames + the unmasked frames' and
    the conv head's, weighted by :data:`TERM_WEIGHTS`. Label-free."""
    mask = batch["mask_time_indices"]
    out = model(input_values=batch["input_values"], mask_time_indices=mask)

    def kl(key: str) -> torch.Tensor:
        t = batch[f"target_{key}"]
        return (t.exp() * (t - out[key].log_softmax(-1))).sum(-1)

    top = kl("top")
    return weighted(
        {"masked": top[mask].mean(), "unmasked": top[~mask].mean(), "cnn": kl("cnn").mean()}
    )


# ------------------------------------------------------------------------------------ data
def manifest() -> dict:
    path = DATA / "manifest.json"
    if not path.exists():
        sys.exit("examples/barrier/data/manifest.json not found: run make_data.py first")
    return json.loads(path.read_text())["speech"]


def read_waves(files: list[str], min_samples: int) -> list[torch.Tensor]:
    """Normalised waveforms (relative paths are under data/), zero-padded to a minimum length."""
    waves = []
    for f in files:
        path = Path(f) if Path(f).is_absolute() else DATA / f
        w = features.normalize_wave(torch.from_numpy(audio.read(path)))
        waves.append(nn.functional.pad(w, (0, max(0, min_samples - len(w)))))
    return waves


def targets() -> dict:
    """MFCC k-means units of every training and test file (k-means fitted on the training
    files, seed 0), cached in data/speech_targets.pt."""
    cache = DATA / "speech_targets.pt"
    if cache.exists():
        return torch.load(cache)
    m = manifest()
    crop = int(RECIPE["crop_seconds"] * audio.SR)
    feats = {
        s: [features.mfcc(w).numpy() for w in read_waves(m[s], crop)] for s in ("train", "test")
    }
    allf = np.concatenate(feats["train"])
    mean, std = allf.mean(0), allf.std(0) + 1e-5
    centroids, inertia = kmeans.fit((allf - mean) / std, UNITS, seed=KMEANS_SEED)
    out = {
        s: [torch.from_numpy(kmeans.assign((f - mean) / std, centroids)) for f in feats[s]]
        for s in feats
    }
    out["kmeans_mse"] = inertia
    torch.save(out, cache)
    return out


class SpeechTask:
    """The held-out loss of pair (a) and its calibration audio."""

    crops_per_file = 4

    @cached_property
    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Fixed (waveform, units, mask) batches: 1-s crops at 1-s steps from the start of each
        held-out file (clean), masks drawn once with seed 0."""
        m = manifest()
        crop = int(RECIPE["crop_seconds"] * audio.SR)
        frames = features.n_frames(crop)
        waves, units = read_waves(m["test"], crop), targets()["test"]
        rows = []
        for w, u in zip(waves, units, strict=True):
            for i in range(self.crops_per_file):
                s = i * (audio.SR // features.HOP)
                if s * features.HOP + crop > len(w) or s + frames > len(u):
                    break
                rows.append((w[s * features.HOP : s * features.HOP + crop], u[s : s + frames]))
        wav = features.normalize_wave(torch.stack([r[0] for r in rows]))
        y = torch.stack([r[1] for r in rows])
        state = np.random.get_state()
        np.random.seed(EVAL_SEED)
        mask = torch.from_numpy(_compute_mask_indices((len(rows), frames), 0.65, 10, min_masks=2))
        np.random.set_state(state)
        return [(wav[i : i + 32], y[i : i + 32], mask[i : i + 32]) for i in range(0, len(rows), 32)]

    def loss(self, module: nn.Module) -> float:
        """The pretraining objective on the held-out crops (mean over crops)."""
        module.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for wav, y, mask in self.batches:
                total += objective(module(wav, mask), y, mask).item() * len(wav)
                n += len(wav)
        return total / n

    def training_batches(
        self, n: int, size: int = 8, seed: int = 123
    ) -> list[dict[str, torch.Tensor]]:
        """``n`` batches of ``size`` clean 1-s crops of the training files, each with its
        k-means units and a mask drawn as in training (seeded): the inputs of
        :func:`own_loss`, the model's own pretraining objective (its targets come from the
        audio itself: no human labels)."""
        m = manifest()
        crop = int(RECIPE["crop_seconds"] * audio.SR)
        waves, units = read_waves(m["train"], crop), targets()["train"]
        batcher = Batcher(waves, [{TARGET: u} for u in units], crop, seed)
        out = []
        state = np.random.get_state()  # _compute_mask_indices draws from numpy's global RNG
        np.random.seed(seed)
        try:
            for _ in range(n):
                wav, tgt = batcher(size)
                mask = _compute_mask_indices((size, batcher.frames), 0.65, 10, min_masks=2)
                out.append(
                    {
                        "input_values": wav,
                        "mask_time_indices": torch.from_numpy(mask),
                        "units": tgt[TARGET],
                    }
                )
        finally:
            np.random.set_state(state)
        return out

    def components(self, module: nn.Module) -> dict[str, float]:
        """The loss's three :func:`terms` on the held-out crops (mean over crops); the loss
        is their sum weighted by :data:`TERM_WEIGHTS`."""
        module.eval()
        total, n = dict.fromkeys(TERM_WEIGHTS, 0.0), 0
        with torch.no_grad():
            for wav, y, mask in self.batches:
                for k, v in terms(module(wav, mask), y, mask).items():
                    total[k] += v.item() * len(wav)
                n += len(wav)
        return {k: v / n for k, v in total.items()}

    @property
    def calib(self) -> list[str]:
        """Calibration audio: the training files (graphperm cuts and shuffles them)."""
        m = manifest()
        return [str(DATA / f) if not Path(f).is_absolute() else f for f in m["train"]]


# ------------------------------------------------------------------------------- checkpoints
def checkpoint(seed: int) -> Path:
    return CHECKPOINTS / f"speech-seed{seed}"


def load(folder: Path) -> LoadedModel:
    """A saved `SpeechPretrainer` as graphperm's LoadedModel (source = the folder, so that
    calibration reads its preprocessor_config.json: normalised waveforms)."""
    if not (folder / "model.safetensors").exists():
        sys.exit(f"{folder} not found: run `python examples/barrier/speech.py train --seed N`")
    model = SpeechPretrainer(HubertConfig.from_json_file(folder / "config.json"))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return LoadedModel(model=model.eval(), module=model.eval(), prefix="", source=str(folder))


def dense_pos_conv(model: LoadedModel) -> LoadedModel:
    """``model`` with its grouped positional conv rewritten as one dense conv whose weight is
    block-diagonal: the same function (weight norm's ``g`` is per kernel tap, and the zeros add
    nothing to its norms), with a residual stream that every permutation may move, not only
    those that keep the conv's groups. A diagnostic: how much of pair (a)'s barrier the
    groups' constraint holds."""
    config = copy.deepcopy(model.model.config)
    groups, config.num_conv_pos_embedding_groups = config.num_conv_pos_embedding_groups, 1
    out = SpeechPretrainer(config)
    state = dict(model.model.state_dict())
    key = "hubert.encoder.pos_conv_embed.conv.parametrizations.weight.original1"
    v = state[key]
    width = v.shape[1]
    full = torch.zeros(v.shape[0], v.shape[0], v.shape[2], dtype=v.dtype)
    for g in range(groups):
        block = slice(g * width, (g + 1) * width)
        full[block, block] = v[block]
    state[key] = full
    out.load_state_dict(state)
    return LoadedModel(model=out.eval(), module=out.eval(), prefix="", source=model.source)


def lr_at(step: int, steps: int) -> float:
    warm = max(1, int(RECIPE["warmup"] * steps))
    if step < warm:
        return RECIPE["lr"] * (step + 1) / warm
    return RECIPE["lr"] * 0.5 * (1 + np.cos(np.pi * (step - warm) / max(1, steps - warm)))


def train(seed: int, steps: int, log_every: int = 50) -> None:
    t0 = time.time()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    np.random.seed(seed)  # _compute_mask_indices draws from numpy's global RNG
    torch.use_deterministic_algorithms(True, warn_only=True)
    m = manifest()
    crop = int(RECIPE["crop_seconds"] * audio.SR)
    waves, units = read_waves(m["train"], crop), targets()["train"]
    config = HubertConfig.from_json_file(CONFIG)
    model = SpeechPretrainer(config)
    batcher = Batcher(waves, [{TARGET: u} for u in units], crop, seed, RECIPE["degrade_prob"])
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=RECIPE["lr"],
        betas=(0.9, 0.98),
        eps=1e-6,
        weight_decay=RECIPE["weight_decay"],
    )
    task = SpeechTask()
    log = StepLog(log_every, t0)
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps)
        wav, tgt = batcher(RECIPE["batch_size"])
        mask = torch.from_numpy(
            _compute_mask_indices(
                (wav.shape[0], batcher.frames),
                config.mask_time_prob,
                config.mask_time_length,
                min_masks=2,
            )
        )
        loss = objective(model(wav, mask), tgt[TARGET], mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        log.add(step, steps, loss.item())
    model.eval()
    out = checkpoint(seed)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    config.to_json_file(out / "config.json")
    transformers.Wav2Vec2FeatureExtractor(
        sampling_rate=audio.SR, do_normalize=True, return_attention_mask=False
    ).save_pretrained(out)
    summary = {
        "pair": "a",
        "seed": seed,
        "steps": steps,
        "recipe": RECIPE,
        "train_files": len(waves),
        "heldout_loss": round(task.loss(model), 4),
        "train_seconds": round(time.time() - t0, 1),
    }
    save_summary(
        out, summary, log, f"held-out loss {summary['heldout_loss']}, {summary['train_seconds']} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one seed")
    t.add_argument("--seed", type=int, required=True)
    t.add_argument("--steps", type=int, default=RECIPE["steps"])
    sub.add_parser("targets", help="fit the k-means targets (train does it when needed)")
    args = parser.parse_args()
    if args.cmd == "targets":
        targets()
    else:
        train(args.seed, args.steps)


if __name__ == "__main__":
    main()
