"""The statistics equal an independent computation.

The reference here shares no code with graphperm's calibration: each item (clip, text, image,
tensor item) runs alone and unpadded through the plain transformers model in float64, forward
pre-hooks take the values at every site (the input of the module that reads the site's value;
the graph only says which module that is), and the correlations are computed from all those
frames at once. graphperm's statistics (the library's ``calibrate``, float32 forwards,
float64 sums) must agree to 1e-6 at every site, for batch sizes 1, 2 and 7, with items of
uneven length.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from graphperm.merge import prepare
from graphperm.policy import load_policy
from graphperm.stats import calibrate
from graphperm.trace import load_model

RATE = 16000
TOL = 1e-6


def _policy(name: str, **calibration):
    policy = load_policy(name)
    cal = policy.calibration.model_copy(
        update={"num_clips": None, "max_frame_rate": None, "precision": "fp64", **calibration}
    )
    return policy.model_copy(update={"calibration": cal})


def _graphperm(a, b, policy, sources):
    adapter, analysis, plan = prepare(a, policy)
    stats, info = calibrate(analysis, plan, [a, b], adapter, sources, device="cpu")
    return analysis, plan, stats, info


def _reference(a, b, analysis, plan, items, strides: dict | None = None) -> dict:
    """Correlation of A's with B's units at every site, from each item alone, in float64.

    ``items`` yields ``(inputs, keep)``: one item's model inputs (batch of one) and
    ``keep(t, steps)``, whether step ``t`` of a time axis of ``steps`` holds real data.
    ``strides`` (site -> k): those sites keep every k-th of an item's real steps."""
    strides = strides or {}
    models = [copy.deepcopy(m.module).double().eval() for m in (a, b)]
    sites = plan.sites()
    graph = analysis.traced.program.graph
    nodes = {n.name: n for n in graph.nodes}
    readers = {}
    for s in sites:  # the module whose first op reads the value
        user = next(iter(nodes[s.key].users))
        readers[s.key] = list(user.meta["nn_module_stack"].values())[-1][0]
    frames: list[dict] = [{(s.key, s.dim): [] for s in sites} for _ in models]
    for inputs, keep in items:
        inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
        for m, model in enumerate(models):
            hooks = []
            for s in sites:
                module = model.get_submodule(readers[s.key])

                def take(value, s=s, m=m, keep=keep):
                    x = value.movedim(s.dim, -1)
                    assert x.shape[-1] == nodes[s.key].meta["val"].shape[s.dim], s
                    if x.ndim == 3:  # (batch, time, channels): the real steps only
                        steps = x.shape[1]
                        x = x[:, [t for t in range(steps) if keep(t, steps)]]
                        x = x[:, :: strides.get((s.key, s.dim), 1)]
                    frames[m][(s.key, s.dim)].append(x.reshape(-1, x.shape[-1]))

                hooks.append(module.register_forward_pre_hook(lambda _, i, f=take: f(i[0])))
            with torch.no_grad():
                model(**inputs)
            for h in hooks:
                h.remove()
    out = {}
    for k in frames[0]:
        x, y = torch.cat(frames[0][k]), torch.cat(frames[1][k])
        x, y = x - x.mean(0), y - y.mean(0)
        cov = x.T @ y
        scale = x.square().sum(0).sqrt()[:, None] * y.square().sum(0).sqrt()[None, :]
        out[k] = (cov / scale.clamp_min(1e-300), len(x))
    return out


def _compare(stats, want: dict) -> None:
    assert want
    for k, (corr, n) in want.items():
        site = stats.site(k)
        assert site.n == n, f"{k}: {site.n} frames, the reference has {n}"
        got = stats.correlation(k)
        err = float((got - corr).abs().max())
        assert err < TOL, f"{k}: correlation differs by {err:.2e}"


def _write(folder: Path, seconds: list[float], seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, s in enumerate(seconds):
        t = np.arange(round(s * RATE)) / RATE
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 900) * t) + 0.05 * rng.normal(size=len(t))
        paths.append(folder / f"c{i}.wav")
        sf.write(paths[-1], wave.astype(np.float32), RATE)
    return paths


def _clips(paths: list[Path], clip_seconds: float, min_fraction: float = 0.5):
    """Every file cut into consecutive clips, a short last one kept if long enough."""
    step = round(clip_seconds * RATE)
    for path in paths:
        wave, _ = sf.read(path, dtype="float32")
        for start in range(0, len(wave), step):
            piece = wave[start : start + step]
            if len(piece) >= min_fraction * step - 1e-6:
                yield torch.from_numpy(piece.copy())


#: Uneven lengths: whole clips, short last clips, files shorter than a clip.
SECONDS = [1.0, 0.6, 2.3, 0.75, 1.55, 0.9, 1.0, 0.52]


@pytest.mark.parametrize("batch_size", [1, 2, 7])
@pytest.mark.parametrize("name", ["hubert-tiny", "wav2vec2-stable-tiny"])
def test_waveform_statistics_are_those_of_each_clip_alone(tmp_path, name, batch_size) -> None:
    """Group-norm (HuBERT) and layer-norm (wav2vec2 stable) conv stacks: no real frame sees
    padding, every frame is counted (the reference keeps every frame of each clip)."""
    a, b = load_model(f"builtin:{name}"), load_model(f"builtin:{name}", seed=1)
    paths = _write(tmp_path / "audio", SECONDS)
    policy = _policy("paper", clip_seconds=1.0, batch_size=batch_size)
    analysis, plan, stats, info = _graphperm(a, b, policy, [tmp_path / "audio"])
    items = [({"input_values": c[None]}, lambda t, n: True) for c in _clips(paths, 1.0)]
    assert info["clips"] == len(items)
    _compare(stats, _reference(a, b, analysis, plan, items))


@pytest.mark.parametrize("batch_size", [2, 7])
def test_wide_site_stride_keeps_every_kth_frame_of_each_clip(tmp_path, batch_size) -> None:
    """``wide_site_stride``: the FFN sites (the widest) see every 2nd frame of each clip alone
    (steps 0, 2, 4, ... of its real frames, whatever the padding of its batch), every other
    site every frame."""
    a, b = load_model("builtin:hubert-tiny"), load_model("builtin:hubert-tiny", seed=1)
    paths = _write(tmp_path / "audio", SECONDS)
    _, analysis, plan = prepare(a, load_policy("paper"))
    width = {
        t.kind: analysis.coupling.tensors[t.sites[0].key].shape[t.sites[0].dim]
        for t in plan.targets
    }
    assert width["ffn"] > max(w for k, w in width.items() if k != "ffn")
    policy = _policy(
        "paper", clip_seconds=1.0, batch_size=batch_size, wide_site_stride={width["ffn"]: 2}
    )
    analysis, plan, stats, _ = _graphperm(a, b, policy, [tmp_path / "audio"])
    wide = {(s.key, s.dim): 2 for t in plan.targets if t.kind == "ffn" for s in t.sites}
    items = [({"input_values": c[None]}, lambda t, n: True) for c in _clips(paths, 1.0)]
    want = _reference(a, b, analysis, plan, items, strides=wide)
    _compare(stats, want)
    every = _reference(a, b, analysis, plan, items)
    assert all(want[k][1] < every[k][1] for k in wide)  # fewer frames there, as asked
    assert all(want[k][1] == every[k][1] for k in want if k not in wide)


@pytest.mark.parametrize("batch_size", [1, 2, 7])
def test_log_mel_statistics_are_those_of_each_clip_alone(tmp_path, batch_size) -> None:
    """Whisper, one clip per window (``pack: false``): each clip padded to the window as the
    transformers feature extractor does; frames that span only real audio are counted."""
    from transformers import WhisperFeatureExtractor

    a, b = load_model("builtin:whisper-tiny"), load_model("builtin:whisper-tiny", seed=1)
    paths = _write(tmp_path / "audio", [0.5, 0.3, 0.45, 0.8])
    policy = _policy("fnn-attn", clip_seconds=0.25, batch_size=batch_size, pack=False)
    analysis, plan, stats, _ = _graphperm(a, b, policy, [tmp_path / "audio"])
    frames = 2 * a.config.max_source_positions
    window = frames * 160
    fe = WhisperFeatureExtractor(feature_size=a.config.num_mel_bins, sampling_rate=RATE)
    fe.n_samples, fe.nb_max_frames = window, frames

    def item(clip):
        feats = fe(clip.numpy(), sampling_rate=RATE, return_tensors="pt")["input_features"]
        n = len(clip)
        return {"input_features": feats}, lambda t, steps: math.ceil((t + 1) * window / steps) <= n

    _compare(stats, _reference(a, b, analysis, plan, [item(c) for c in _clips(paths, 0.25)]))


@pytest.fixture(scope="module")
def berts(tmp_path_factory) -> tuple[Path, Path, Path]:
    from tests.textmodels import save_tiny_bert

    root = tmp_path_factory.mktemp("ref-text")
    texts = [
        "the cat sat on the mat",
        "a dog",
        "the quick brown fox jumps over the lazy dog again and again and again",
        "hello world",
        "one two three four five six seven",
        "cat dog fox",
        "mat sat on",
        "again",
        "the lazy cat and the quick dog sat on a brown mat",
    ]
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n")
    words = sorted({w for t in texts for w in t.split()})
    return save_tiny_bert(root / "a", words), save_tiny_bert(root / "b", words, seed=1), corpus


@pytest.mark.parametrize("batch_size", [1, 2, 7])
def test_text_statistics_are_those_of_each_text_alone(berts, batch_size) -> None:
    from transformers import AutoTokenizer

    folder_a, folder_b, corpus = berts
    a, b = load_model(str(folder_a)), load_model(str(folder_b))
    policy = _policy("fnn-attn", batch_size=batch_size, max_tokens=12)
    analysis, plan, stats, _ = _graphperm(a, b, policy, [corpus])
    tok = AutoTokenizer.from_pretrained(folder_a)
    items = [
        (dict(tok(line, truncation=True, max_length=12, return_tensors="pt")), lambda t, n: True)
        for line in corpus.read_text().splitlines()
    ]
    _compare(stats, _reference(a, b, analysis, plan, items))


def _images(folder: Path, count: int = 9) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))  # uneven sizes
        pixels = rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
        paths.append(folder / f"i{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def _pixels(path: Path, size: int) -> torch.Tensor:
    """Resized (bilinear) and normalised with the ImageNet mean and std, as the README says."""
    from PIL import Image

    im = Image.open(path).convert("RGB").resize((size, size), resample=Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im, dtype=np.float64) / 255.0).permute(2, 0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)[:, None, None]
    return ((x - mean) / std)[None]


@pytest.mark.parametrize("batch_size", [1, 2, 7])
def test_image_statistics_are_those_of_each_image_alone(tmp_path, batch_size) -> None:
    a, b = load_model("builtin:vit-tiny"), load_model("builtin:vit-tiny", seed=1)
    paths = _images(tmp_path / "images")
    analysis, plan, stats, _ = _graphperm(
        a, b, _policy("fnn-attn", batch_size=batch_size), [tmp_path]
    )
    size = a.config.image_size
    items = [({"pixel_values": _pixels(p, size)}, lambda t, n: True) for p in paths]
    _compare(stats, _reference(a, b, analysis, plan, items))


@pytest.mark.parametrize("batch_size", [1, 2, 7])
def test_tensor_statistics_are_those_of_each_item_alone(tmp_path, batch_size) -> None:
    """Ready-made batches: texts padded to 12 tokens with their attention mask."""
    from safetensors.torch import save_file

    a, b = load_model("builtin:bert-tiny"), load_model("builtin:bert-tiny", seed=1)
    g = torch.Generator().manual_seed(0)
    lengths = [12, 3, 7, 12, 5, 9, 2, 11, 6]
    ids = torch.randint(5, a.config.vocab_size, (len(lengths), 12), generator=g)
    mask = (torch.arange(12)[None] < torch.tensor(lengths)[:, None]).long()
    path = tmp_path / "batches.safetensors"
    save_file({"input_ids": ids * mask, "attention_mask": mask}, path)
    policy = _policy("fnn-attn", batch_size=batch_size, max_tokens=12)
    analysis, plan, stats, _ = _graphperm(a, b, policy, [path])
    items = [
        (
            {"input_ids": ids[i : i + 1, :n], "attention_mask": mask[i : i + 1, :n]},
            lambda t, s: True,
        )
        for i, n in enumerate(lengths)
    ]
    _compare(stats, _reference(a, b, analysis, plan, items))
