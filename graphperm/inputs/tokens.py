"""Token ids: text encoders (BERT, RoBERTa, T5's encoder, ...) and causal language models
(GPT-2, Llama, ...).

Calibration texts (``.txt``: one per line; ``.jsonl``: a ``"text"`` field per record) go through
the model's own tokenizer, from the model folder. Every batch is cut or padded to
``calibration.max_tokens`` tokens so one exported graph serves all of them; the graph takes the
``attention_mask`` too (when ``forward`` has one), so the model ignores padding, and the
statistics' mask is the attention mask: padded tokens never enter a statistic. Padding goes
after the text, so a causal model's real tokens never attend to it; a tokenizer without a pad
token (GPT-2's, Llama's) pads with its end-of-text token.

Example:
    >>> from graphperm.trace import load_model
    >>> adapter = adapter_for(load_model("builtin:bert-tiny"))
    >>> {k: tuple(v.shape) for k, v in adapter.example().items()}
    {'input_ids': (1, 16), 'attention_mask': (1, 16)}
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from graphperm.data.audio import AUDIO_EXTENSIONS
from graphperm.data.text import IMAGE_SUFFIXES, TEXT_SUFFIXES, pick, read_texts
from graphperm.errors import CalibrationError, ModelLoadError
from graphperm.inputs.base import (
    CalibrationData,
    InputAdapter,
    ModelBatch,
    adapter_for,
    register_adapter,
)

__all__ = ["TokenAdapter", "adapter_for", "takes_argument"]

#: Files one of which a model folder's tokenizer is saved in.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


def takes_argument(loaded, name: str) -> bool:
    """Whether ``loaded``'s traced module's ``forward`` has an argument ``name``."""
    try:
        return name in inspect.signature(loaded.module.forward).parameters
    except (TypeError, ValueError):
        return False


@register_adapter("input_ids")
class TokenAdapter(InputAdapter):
    """Token ids (and the attention mask) from the model's tokenizer; random ids for export
    (:attr:`length` tokens)."""

    kind = "tokens"
    item = "texts"
    unit = "tokens"

    @property
    def length(self) -> int:
        """Tokens per batch row: ``calibration.max_tokens`` (16 without settings), at most the
        config's ``max_position_embeddings``."""
        n = self.settings.max_tokens if self.settings is not None else 16
        most = getattr(self.loaded.config, "max_position_embeddings", None)
        return min(n, most) if isinstance(most, int) and most > 1 else n

    def example(self, batch_size=1, length=None, seed=0):
        vocab = getattr(self.loaded.config, "vocab_size", None)
        if vocab is None:
            raise ModelLoadError(
                f"no example-input recipe for {self.describe_model()} (main input 'input_ids', no "
                "vocab_size in its config); pass --inputs FILE.safetensors"
            )
        g = torch.Generator().manual_seed(seed)
        n = length or self.length
        out = {self.input_name: torch.randint(0, vocab, (batch_size, n), generator=g)}
        if takes_argument(self.loaded, "attention_mask"):
            out["attention_mask"] = torch.ones(batch_size, n, dtype=torch.long)
        return out

    def tokenizer(self):
        """The tokenizer saved with the model (a :class:`CalibrationError` when there is none)."""
        source = self.loaded.source
        missing = (
            f"model '{source}' has no tokenizer (no tokenizer.json / vocab files in its folder); "
            "text calibration needs one: save it next to the model "
            "(tokenizer.save_pretrained) or pass --calib FILE.safetensors with ready-made batches"
        )
        if source.startswith("builtin:"):
            raise CalibrationError(missing)
        folder = Path(source)
        if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise CalibrationError(missing)
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(source)
        except Exception as err:  # transformers raises OSError, ValueError, TypeError, ...
            raise CalibrationError(missing) from err
        if len(tok) <= len(tok.all_special_tokens):  # built from the config alone: no vocabulary
            raise CalibrationError(missing)
        if tok.pad_token is None:  # causal LMs (GPT-2, Llama) often have none: pad with EOS
            tok.pad_token = tok.eos_token or tok.unk_token or tok.bos_token
        if tok.pad_token is None:
            raise CalibrationError(
                f"the tokenizer of '{source}' has no pad, end-of-text, unknown or start token to "
                "pad batches with; set tokenizer.pad_token and save it again"
            )
        tok.padding_side = "right"  # padding after the text: a causal model's tokens never see it
        return tok

    def calibration(
        self, sources: Sequence[str | Path], *, shard: tuple[int, int] | None = None
    ) -> CalibrationData:
        if self.settings is None:
            raise CalibrationError("calibration needs the policy's calibration settings")
        for source in sources:
            self._check_is_text(Path(source))
        tok = self.tokenizer()
        texts = read_texts(sources)
        found = len(texts)
        texts = pick(texts, self.settings.num_clips, self.settings.seed, shard)

        def stream(batch_size: int) -> Iterator[ModelBatch]:
            for i in range(0, len(texts), batch_size):
                yield self.batch(tok, texts[i : i + batch_size], batch_size)

        summary = {
            "files": len({str(s) for s in sources}),
            "skipped_files": [],
            "description": f"{len(texts)} of {found} texts, up to {self.length} tokens each",
        }
        return CalibrationData(stream, len(texts), summary)

    def _check_is_text(self, source: Path) -> None:
        """A clear error for audio or images given to a model that reads text."""
        kinds = dict.fromkeys(AUDIO_EXTENSIONS, "audio") | dict.fromkeys(IMAGE_SUFFIXES, "images")
        if source.is_file():
            found = kinds.get(source.suffix.lower())
        elif source.is_dir():
            files = [p for p in source.rglob("*") if p.is_file()]
            if any(p.suffix.lower() in TEXT_SUFFIXES for p in files):
                return
            found = next((kinds[s] for p in files if (s := p.suffix.lower()) in kinds), None)
        else:
            return
        if found is not None:
            raise CalibrationError(
                f"--calib '{source}' is {found}, but {self.describe_model()} reads text; pass "
                f"text files ({', '.join(TEXT_SUFFIXES)}) or folders of them"
            )

    def batch(self, tok, texts: list[str], batch_size: int) -> ModelBatch:
        """``texts`` tokenized and padded to ``batch_size`` rows of :attr:`length` tokens;
        padding rows attend to one pad token (so no row is all masked) and are masked out."""
        enc = tok(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.length,
            return_tensors="pt",
        )
        rows = len(texts)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((batch_size, self.length), pad_id, dtype=torch.long)
        ids[:rows] = enc["input_ids"]
        attention = torch.zeros(batch_size, self.length, dtype=torch.long)
        attention[:rows] = enc["attention_mask"]
        mask = attention.bool()
        attention[rows:, 0] = 1
        inputs = {self.input_name: ids}
        if takes_argument(self.loaded, "attention_mask"):
            inputs["attention_mask"] = attention
        return ModelBatch(inputs, mask, rows)
