"""Pair (g): two small GPT-2-style causal language models (`GPT2LMHeadModel`) on local text.

    python examples/barrier/text.py corpus               # what the corpus holds (no training)
    nice -n 10 python examples/barrier/text.py train --seed 1 &
    nice -n 10 python examples/barrier/text.py train --seed 2 &
    wait

The corpus is the text this machine already has: every distinct ``/usr/share/doc/*/copyright``
file (duplicates by content dropped) and the license texts in ``/usr/share/common-licenses``,
read as bytes in sorted path order. It is split by file: a file is held out when the first
byte of the SHA-1 of its path is below 26 (about 10 %), so no held-out text was seen in
training. The model reads bytes (vocabulary 256, no tokenizer to build or ship), with a context
of 64 bytes; ``transformers.GPT2LMHeadModel`` is pre-LN and ties its output embedding to its
input embedding, and graphperm traces the whole module, head included. The barrier's loss is
the mean next-byte cross-entropy (nats) on fixed windows of the held-out files.

The corpus depends on the packages installed on the machine; `train_log.json` records its
size and a digest, and `text.py corpus` prints them for comparison.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn
from trainlog import StepLog, save_summary
from transformers import GPT2Config, GPT2LMHeadModel

from graphperm.trace import LoadedModel, load_model

HERE = Path(__file__).resolve().parent
CHECKPOINTS = HERE / "checkpoints"
SOURCES = (Path("/usr/share/doc"), Path("/usr/share/common-licenses"))
CONTEXT = 64
CONFIG = {
    "vocab_size": 256,
    "n_positions": CONTEXT,
    "n_embd": 96,
    "n_layer": 3,
    "n_head": 4,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "use_cache": False,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
# pair (h): pair (g) with an output head of its own (`text.py train --seed N --untied`): its
# final norm's gain can fold into the head, so the residual stream may rotate
VARIANTS = {"": {}, "untied": {"tie_word_embeddings": False}}
RECIPE = {"steps": 2000, "batch_size": 32, "lr": 2e-3, "warmup": 0.05, "weight_decay": 0.05}
N_TEST, N_CALIB = 1024, 512  # held-out windows for the loss; training windows for calibration


# ------------------------------------------------------------------------------------ corpus
def corpus_files() -> list[Path]:
    """The corpus's files, sorted, each distinct content once (the first path that has it)."""
    files = sorted(SOURCES[0].glob("*/copyright")) + sorted(
        p for p in SOURCES[1].iterdir() if p.is_file()
    )
    seen: set[str] = set()
    kept = []
    for path in files:
        try:
            digest = hashlib.sha1(path.read_bytes()).hexdigest()
        except OSError:
            continue
        if digest not in seen:
            seen.add(digest)
            kept.append(path)
    return kept


def held_out(path: Path) -> bool:
    """About one file in ten, chosen by its path (not by its content or by chance)."""
    return hashlib.sha1(str(path).encode()).digest()[0] < 26


class Corpus:
    """The training and held-out bytes (each file's bytes, then a newline, in path order)."""

    @cached_property
    def split(self) -> dict[str, torch.Tensor]:
        parts: dict[str, list[bytes]] = {"train": [], "test": []}
        for path in corpus_files():
            parts["test" if held_out(path) else "train"].append(path.read_bytes() + b"\n")
        if not parts["train"] or not parts["test"]:
            sys.exit(f"no text found under {', '.join(map(str, SOURCES))}")
        return {
            k: torch.from_numpy(np.frombuffer(b"".join(v), dtype=np.uint8).astype(np.int64))
            for k, v in parts.items()
        }

    def summary(self) -> dict:
        files = corpus_files()
        test = sum(held_out(p) for p in files)
        digest = hashlib.sha1()
        for k in ("train", "test"):
            digest.update(self.split[k].numpy().astype(np.uint8).tobytes())
        return {
            "files": {"train": len(files) - test, "test": test},
            "bytes": {k: len(v) for k, v in self.split.items()},
            "sha1": digest.hexdigest(),
            "unigram_loss": round(self.unigram_loss(), 4),
        }

    def unigram_loss(self) -> float:
        """Cross-entropy (nats) of the held-out bytes under the training bytes' frequencies
        (add-one smoothed): what a model that ignores the context would reach."""
        counts = torch.bincount(self.split["train"], minlength=256).double() + 1
        logp = (counts / counts.sum()).log()
        return -logp[self.split["test"]].mean().item()

    def windows(self, part: str, n: int) -> torch.Tensor:
        """``n`` windows of ``CONTEXT + 1`` bytes, evenly spaced over ``part`` (fixed)."""
        data = self.split[part]
        starts = torch.linspace(0, len(data) - CONTEXT - 2, n).long()
        return torch.stack([data[s : s + CONTEXT + 1] for s in starts])


class TextTask:
    """The held-out loss of pair (g) and its calibration inputs."""

    def __init__(self, corpus: Corpus | None = None) -> None:
        self.corpus = corpus or Corpus()

    @cached_property
    def test(self) -> torch.Tensor:
        return self.corpus.windows("test", N_TEST)

    def loss(self, module: nn.Module) -> float:
        """Mean next-byte cross-entropy (nats) on the held-out windows, every position."""
        module.eval()
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(self.test), 256):
                w = self.test[i : i + 256]
                logits = module(input_ids=w[:, :-1]).logits
                total += nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum"
                ).item()
        return total / (len(self.test) * CONTEXT)

    def calib(self, n: int = N_CALIB, batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
        """Calibration batches: ``n`` fixed training windows of ``CONTEXT`` bytes (no padding)."""
        x = self.corpus.windows("train", n)[:, :-1]
        return [{"input_ids": x[i : i + batch_size]} for i in range(0, n, batch_size)]


# ------------------------------------------------------------------------------- checkpoints
def checkpoint(seed: int, variant: str = "") -> Path:
    return CHECKPOINTS / (f"gpt-{variant}-seed{seed}" if variant else f"gpt-seed{seed}")


def load(folder: Path) -> LoadedModel:
    """A saved language model, head included, as graphperm's LoadedModel: the module is
    loaded here and handed to ``load_model`` so that the LM head (tied to the input embedding)
    is traced with the transformer."""
    if not (folder / "config.json").exists():
        sys.exit(f"{folder} not found: run `python examples/barrier/text.py train --seed N`")
    loaded = load_model(GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32))
    loaded.source = str(folder)
    return loaded


def lr_at(step: int, steps: int, recipe: dict = RECIPE) -> float:
    warm = max(1, int(recipe["warmup"] * steps))
    if step < warm:
        return recipe["lr"] * (step + 1) / warm
    return recipe["lr"] * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def train(seed: int, steps: int, log_every: int = 50, variant: str = "") -> None:
    """Train seed ``seed`` (initialisation and the order of the windows) and save it."""
    recipe = {**RECIPE, "steps": steps}
    t0 = time.time()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    corpus = Corpus()
    data = corpus.split["train"]
    t_data = time.time() - t0
    torch.manual_seed(seed)
    config = {**CONFIG, **VARIANTS[variant]}
    model = GPT2LMHeadModel(GPT2Config(**config))
    opt = torch.optim.AdamW(
        model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"]
    )
    order = torch.Generator().manual_seed(seed)
    log = StepLog(log_every, t0)
    model.train()
    span = torch.arange(CONTEXT + 1)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, recipe)
        starts = torch.randint(len(data) - CONTEXT - 1, (recipe["batch_size"],), generator=order)
        w = data[starts[:, None] + span]
        logits = model(input_ids=w[:, :-1]).logits
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        log.add(step, steps, loss.item())
    model.eval()
    out = checkpoint(seed, variant)
    model.save_pretrained(out)
    task = TextTask(corpus)
    summary = {
        "pair": "h" if variant == "untied" else "g",
        "seed": seed,
        "steps": steps,
        "recipe": recipe,
        "config": config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus": corpus.summary(),
        "heldout_loss": round(task.loss(model), 4),
        "data_seconds": round(t_data, 1),
        "train_seconds": round(time.time() - t0, 1),
    }
    save_summary(
        out,
        summary,
        log,
        f"held-out loss {summary['heldout_loss']} nats/byte "
        f"(unigram {summary['corpus']['unigram_loss']}), {summary['train_seconds']} s",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one seed")
    t.add_argument("--seed", type=int, required=True)
    t.add_argument("--steps", type=int, default=RECIPE["steps"])
    t.add_argument(
        "--untied", action="store_true", help="pair (h): an LM head of its own, not tied"
    )
    sub.add_parser("corpus", help="print what the corpus holds")
    args = parser.parse_args()
    if args.cmd == "corpus":
        print(Corpus().summary())
    else:
        train(args.seed, args.steps, variant="untied" if args.untied else "")


if __name__ == "__main__":
    main()
