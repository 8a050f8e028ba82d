"""Probe benchmark: frozen encoder -> per-layer mean-pooled features -> weighted-layer classifier.

    python examples/table1/probe.py checkpoints/speech checkpoints/music fbank --json out.json

Library use (e.g. from a merge script in this folder)::

    from probe import evaluate, domain_scores, mcnemar
    fb, sp, mu = evaluate("fbank"), evaluate("checkpoints/speech"), evaluate("checkpoints/music")
    merged = evaluate(merged_model)                    # any HubertModel-like module
    best = best_accuracies(sp, mu)                     # per task, the better original model
    domain_scores(merged, fb, best)                    # {"speech": ..., "music": ..., "avg": ...}
    mcnemar(merged["tasks"]["ks"]["correct"], sp["tasks"]["ks"]["correct"])   # p-value
    paired_bootstrap(merged["tasks"]["ks"]["correct"], sp["tasks"]["ks"]["correct"])
    benjamini_hochberg([p_ks, p_sid, ...])              # q-values across tasks

For each task, every clip is run once through the frozen encoder (`output_hidden_states=True`)
and each layer's output is mean-pooled over time (clips of one task have one length, so there
is no padding). A probe then learns a softmax-weighted sum of the layers (it commutes with the
pooling) followed by a 2-layer MLP, on the train split with a fixed seed, full-batch and
deterministic; accuracy is measured on the test split. "fbank" is the 80-bin log-mel baseline
(one "layer"). Pooled features can be cached on disk per model (keyed by a hash of its weights).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path

import audio
import features
import numpy as np
import torch
from scipy.stats import binomtest
from tqdm import tqdm

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SPEECH_TASKS = ("ks", "sid")
MUSIC_TASKS = ("pitch", "inst", "genre")
TASKS = SPEECH_TASKS + MUSIC_TASKS
FBANK = "fbank"

# Probe training recipe (fixed; see README for how it was chosen).
HIDDEN = 256
EPOCHS = 300
LR = 3e-3
WEIGHT_DECAY = 1e-2
DROPOUT = 0.2
BATCH_SIZE = 32  # encoder forward batch (clips)

Encoder = torch.nn.Module | str | Path


@cache
def load_manifest(data_dir: Path = DATA) -> dict:
    """The manifest written by make_data.py."""
    path = Path(data_dir) / "manifest.json"
    if not path.exists():
        sys.exit(f"{path} not found: run `python examples/table1/make_data.py` first")
    return json.loads(path.read_text())


@cache
def _load_clip(path: Path) -> np.ndarray:
    return audio.read(path)


def load_encoder(path: str | Path) -> torch.nn.Module:
    """A saved HubertModel, in float32 and eval mode."""
    from transformers import HubertModel

    return HubertModel.from_pretrained(str(path), dtype=torch.float32).eval()


@cache
def data_fingerprint(data_dir: Path = DATA) -> str:
    """A short hash of the manifest and of every probe clip's size and mtime."""
    h = hashlib.sha1((Path(data_dir) / "manifest.json").read_bytes())
    manifest = load_manifest(Path(data_dir))
    for rel in sorted({c["path"] for t in manifest["tasks"].values() for c in t["clips"]}):
        st = (Path(data_dir) / rel).stat()
        h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a module's state dict (names, shapes and values)."""
    h = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.inference_mode()
def pooled_features(
    encoder: torch.nn.Module | str, paths: Sequence[Path], progress: bool = True
) -> dict[Path, torch.Tensor]:
    """Mean-pooled per-layer features, {path: (layers, dim)}; `encoder` may be "fbank"."""
    by_len: dict[int, list[Path]] = {}
    for p in paths:
        by_len.setdefault(len(_load_clip(p)), []).append(p)
    batches = [
        (ps[i : i + BATCH_SIZE])
        for _, ps in sorted(by_len.items())
        for i in range(0, len(ps), BATCH_SIZE)
    ]
    out: dict[Path, torch.Tensor] = {}
    name = encoder if isinstance(encoder, str) else type(encoder).__name__
    for batch in tqdm(
        batches, desc=f"features ({name})", file=sys.stderr, disable=not progress, leave=False
    ):
        wav = features.normalize_wave(torch.from_numpy(np.stack([_load_clip(p) for p in batch])))
        if isinstance(encoder, str):
            layers = features.log_mel(wav).mean(dim=1, keepdim=True)  # (B, 1, 80)
        else:
            hidden = encoder(wav, output_hidden_states=True).hidden_states
            layers = torch.stack([h.mean(dim=1) for h in hidden], dim=1)  # (B, L+1, D)
        out.update(zip(batch, layers.float(), strict=True))
    return out


class LayerProbe(torch.nn.Module):
    """Softmax-weighted sum of standardized layers, then Linear-ReLU-Dropout-Linear."""

    def __init__(
        self, n_layers: int, dim: int, n_classes: int, mean: torch.Tensor, std: torch.Tensor
    ) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.layer_logits = torch.nn.Parameter(torch.zeros(n_layers))
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(dim, HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Dropout(DROPOUT),
            torch.nn.Linear(HIDDEN, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, layers, dim)
        x = (x - self.mean) / self.std
        w = torch.softmax(self.layer_logits, dim=0)
        return self.mlp(torch.einsum("nld,l->nd", x, w))


def train_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, seed: int) -> LayerProbe:
    """Fit a LayerProbe on (N, layers, dim) features, full batch, deterministic."""
    torch.manual_seed(seed)
    mean, std = x.mean(dim=0), x.std(dim=0) + 1e-5
    probe = LayerProbe(x.shape[1], x.shape[2], n_classes, mean, std)
    opt = torch.optim.AdamW(probe.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    probe.train()
    for _ in range(EPOCHS):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(x), y)
        loss.backward()
        opt.step()
    return probe.eval()


def _resolve(model: Encoder) -> tuple[torch.nn.Module | str, str]:
    """(encoder or "fbank", display name)."""
    if isinstance(model, str | Path) and str(model) == FBANK:
        return FBANK, FBANK
    if isinstance(model, str | Path):
        return load_encoder(model), str(model)
    return model.eval(), type(model).__name__


def evaluate(
    model: Encoder,
    tasks: Iterable[str] | None = None,
    seed: int = 0,
    data_dir: Path = DATA,
    cache_dir: Path | None = None,
    progress: bool = True,
    name: str | None = None,
) -> dict:
    """Probe accuracies of a frozen encoder (a module, a saved model dir, or "fbank").

    Returns ``{"name", "seconds", "tasks": {task: {"accuracy", "correct", "layer_weights",
    "domain", "n_test"}}}`` where ``correct`` lists 0/1 per test clip in manifest order (for
    McNemar's test). Set `cache_dir` to keep the pooled features on disk, per model and
    data version (file names hash the weights and the clips' manifest, sizes and mtimes).
    """
    start = time.time()
    tasks = tuple(tasks or TASKS)
    manifest = load_manifest(Path(data_dir))
    encoder, default_name = _resolve(model)
    key = FBANK if isinstance(encoder, str) else fingerprint(encoder)
    paths = sorted(
        {Path(data_dir) / c["path"] for t in tasks for c in manifest["tasks"][t]["clips"]}
    )
    cache_file = (
        Path(cache_dir) / f"{key}-{data_fingerprint(Path(data_dir))}.pt" if cache_dir else None
    )
    cached: dict[str, torch.Tensor] = {}
    if cache_file and cache_file.exists():
        cached = torch.load(cache_file)
    missing = [p for p in paths if str(p.relative_to(data_dir)) not in cached]
    if missing:
        new = pooled_features(encoder, missing, progress)
        cached.update({str(p.relative_to(data_dir)): v for p, v in new.items()})
        if cache_file:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            torch.save(cached, cache_file)
    results = {}
    for task in tasks:
        spec = manifest["tasks"][task]
        clips = spec["clips"]
        x = torch.stack([cached[c["path"]] for c in clips])
        y = torch.tensor([c["label"] for c in clips])
        train = torch.tensor([c["split"] == "train" for c in clips])
        probe = train_probe(x[train], y[train], len(spec["labels"]), seed)
        with torch.no_grad():
            pred = probe(x[~train]).argmax(dim=1)
        correct = (pred == y[~train]).int().tolist()
        results[task] = {
            "domain": spec["domain"],
            "accuracy": 100.0 * float(np.mean(correct)),
            "correct": correct,
            "n_test": len(correct),
            "layer_weights": torch.softmax(probe.layer_logits, 0).round(decimals=3).tolist(),
        }
    return {
        "name": name or default_name,
        "seconds": round(time.time() - start, 2),
        "tasks": results,
    }


# ------------------------------------------------------------------------------------------
# Scores (paper Eq. 6) and significance
# ------------------------------------------------------------------------------------------


def accuracies(result: Mapping) -> dict[str, float]:
    """{task: accuracy} from an `evaluate` result (or pass such a dict through)."""
    if "tasks" in result:
        return {t: float(m["accuracy"]) for t, m in result["tasks"].items()}
    return {t: float(v) for t, v in result.items()}


def best_accuracies(*results: Mapping) -> dict[str, float]:
    """Per task, the best accuracy among `results` (the paper's s_t(BEST) over the originals)."""
    accs = [accuracies(r) for r in results]
    return {t: max(a[t] for a in accs) for t in accs[0]}


def chance_accuracies(tasks: Iterable[str] = TASKS, data_dir: Path = DATA) -> dict[str, float]:
    """Accuracy of always predicting the most frequent training label, per task.

    An alternative lower anchor for `score` where FBANK is not below the best encoder.
    """
    manifest = load_manifest(Path(data_dir))
    out = {}
    for t in tasks:
        clips = manifest["tasks"][t]["clips"]
        train_labels = [c["label"] for c in clips if c["split"] == "train"]
        majority = max(sorted(set(train_labels)), key=train_labels.count)
        test = [c["label"] == majority for c in clips if c["split"] == "test"]
        out[t] = 100.0 * float(np.mean(test))
    return out


def score(
    task_metrics: Mapping,
    fbank_metrics: Mapping,
    best_metrics: Mapping,
    tasks: Iterable[str] | None = None,
) -> float:
    """Paper Eq. 6: 1000 * mean over tasks of (s_u - s_fbank) / (s_best - s_fbank).

    Each argument is an `evaluate` result or a {task: accuracy} dict; `tasks` defaults to the
    tasks of `task_metrics`. The anchor must lie below the best model: a task where
    s_best == s_fbank raises, and one where s_best < s_fbank (the ratio then runs backwards)
    logs a warning; `chance_accuracies()` is a safe alternative anchor.
    """
    u, fb, best = accuracies(task_metrics), accuracies(fbank_metrics), accuracies(best_metrics)
    tasks = tuple(tasks or u)
    terms = []
    for t in tasks:
        if best[t] == fb[t]:
            raise ValueError(f"task {t!r}: best and anchor accuracies are equal ({fb[t]})")
        if best[t] < fb[t]:
            logger.warning(
                "task %r: the anchor (%.1f) beats the best model (%.1f); its Eq. 6 "
                "term runs backwards",
                t,
                fb[t],
                best[t],
            )
        terms.append((u[t] - fb[t]) / (best[t] - fb[t]))
    return 1000.0 * float(np.mean(terms))


def domain_scores(
    task_metrics: Mapping, fbank_metrics: Mapping, best_metrics: Mapping
) -> dict[str, float]:
    """Speech score, music score, and their mean ("avg"), as in Table I."""
    sp = score(task_metrics, fbank_metrics, best_metrics, SPEECH_TASKS)
    mu = score(task_metrics, fbank_metrics, best_metrics, MUSIC_TASKS)
    return {"speech": sp, "music": mu, "avg": (sp + mu) / 2}


def mcnemar(correct_a: Sequence[int], correct_b: Sequence[int]) -> float:
    """Exact McNemar p-value (two-sided binomial test on the discordant pairs)."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"correctness vectors differ in length: {a.shape} vs {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_bootstrap(
    correct_a: Sequence[int], correct_b: Sequence[int], *, resamples: int = 10_000, seed: int = 0
) -> float:
    """Two-sided paired-bootstrap p-value of the accuracy difference of two models scored on the
    same clips: clips are resampled with replacement (both models together), and the p-value is
    the share of resampled differences at least as far from the observed one as the observed one
    is from zero (the bootstrap distribution shifted to the null).

    >>> paired_bootstrap([1, 1, 0, 1], [1, 1, 0, 1])
    1.0
    >>> paired_bootstrap([1] * 60 + [0] * 40, [0] * 60 + [1] * 40) < 0.05
    True
    """
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"correctness vectors differ in length: {a.shape} vs {b.shape}")
    diff = a - b
    observed = float(diff.mean())
    if observed == 0.0:
        return 1.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(resamples, len(diff)))
    boot = diff[idx].mean(axis=1)
    return float(np.mean(np.abs(boot - observed) >= abs(observed)))


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (q-values), in the input order: reject at false
    discovery rate α where q ≤ α.

    >>> [round(q, 3) for q in benjamini_hochberg([0.01, 0.04, 0.03, 0.2])]
    [0.04, 0.053, 0.053, 0.2]
    """
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return [float(x) for x in out]


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


def format_table(
    results: Sequence[Mapping],
    anchor: Mapping | None = None,
    best: Mapping | None = None,
    reference: Mapping | None = None,
) -> str:
    """A text table of accuracies, with Eq. 6 scores when `anchor` and `best` are given.

    With `reference`, an accuracy is starred where McNemar's test puts it significantly apart
    from the reference model's (p < 0.05), as Table I's markers do.
    """
    tasks = list(results[0]["tasks"])
    head = f"{'model':28s}" + "".join(f"{t:>9s}" for t in tasks)
    with_scores = anchor is not None and best is not None and set(TASKS) <= set(tasks)
    if with_scores:
        head += f"{'speech':>9s}{'music':>9s}{'avg':>9s}"
    lines = [head, "-" * len(head)]
    for r in results:
        line = f"{r['name'][-28:]:28s}"
        for t in tasks:
            star = " "
            if reference is not None and r is not reference:
                p = mcnemar(r["tasks"][t]["correct"], reference["tasks"][t]["correct"])
                star = "*" if p < 0.05 else " "
            line += f"{r['tasks'][t]['accuracy']:8.1f}{star}"
        if with_scores:
            sc = domain_scores(r, anchor, best)
            line += f"{sc['speech']:9.1f}{sc['music']:9.1f}{sc['avg']:9.1f}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Probe frozen encoders on the Table I tasks.")
    parser.add_argument("models", nargs="+", help="saved HubertModel dirs, or 'fbank'")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--seed", type=int, default=0, help="probe training seed (default 0)")
    parser.add_argument(
        "--best",
        nargs="+",
        metavar="MODEL",
        help="models whose per-task best is Eq. 6's s_best (default: all encoders)",
    )
    parser.add_argument(
        "--anchor",
        choices=("fbank", "chance"),
        default="fbank",
        help="Eq. 6's lower anchor (default fbank, which must then be listed)",
    )
    parser.add_argument(
        "--reference",
        metavar="MODEL",
        help="star accuracies that differ from this model's (McNemar, p<0.05)",
    )
    parser.add_argument("--json", type=Path, help="write all results (with per-clip correctness)")
    parser.add_argument("--cache-dir", type=Path, help="cache pooled features per model here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for m in args.models:
        if m != FBANK and not (Path(m) / "config.json").exists():
            print(
                f"error: {m} is neither 'fbank' nor a saved model dir (no config.json)",
                file=sys.stderr,
            )
            return 2
    for m in [*(args.best or []), *([args.reference] if args.reference else [])]:
        if m not in args.models:
            print(f"error: {m} is not among the models given", file=sys.stderr)
            return 2
    results = {}
    for m in args.models:
        results[m] = evaluate(
            m, args.tasks, args.seed, cache_dir=args.cache_dir, progress=not args.quiet
        )
        print(f"{m}: {results[m]['seconds']:.1f} s", file=sys.stderr)
    best_names = args.best or [m for m in args.models if m != FBANK]
    best = best_accuracies(*(results[m] for m in best_names)) if best_names else None
    anchor = chance_accuracies(args.tasks) if args.anchor == "chance" else results.get(FBANK)
    reference = results[args.reference] if args.reference else None
    print(format_table(list(results.values()), anchor, best, reference))
    if args.anchor == "chance":
        print(f"{'(chance anchor)':28s}" + "".join(f"{anchor[t]:8.1f} " for t in args.tasks))
    if args.json:
        args.json.write_text(
            json.dumps({"seed": args.seed, "results": list(results.values())}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
