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

__all__ = ["TokenAdapter", "adapter_for", "key_mask", "takes_argument"]

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


def key_mask(attention: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A (batch, tokens) 0/1 attention mask as an additive mask over the keys, (batch, 1, 1,
    tokens): 0 on tokens, the lowest ``dtype`` value on padding (policy
    ``calibration.attention_mask: keys``). transformers passes a 4-D mask on unchanged, and it
    broadcasts onto scores with any number of queries.

    Example:
        >>> m = key_mask(torch.tensor([[1, 1, 0]]))
        >>> tuple(m.shape), m.flatten().tolist()[:2], bool(m[0, 0, 0, 2] < -1e38)
        ((1, 1, 1, 3), [0.0, 0.0], True)
    """
    low = torch.finfo(dtype).min
    return torch.zeros(attention.shape, dtype=dtype).masked_fill(attention == 0, low)[:, None, None]


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
            out["attention_mask"] = self._mask(torch.ones(batch_size, n, dtype=torch.long))
            if self.keys:
                self._check_keys(out)
        return out

    @property
    def keys(self) -> bool:
        """Whether the model takes its attention mask over the keys, 4-D and additive
        (``calibration.attention_mask: keys``)."""
        return self.settings is not None and self.settings.attention_mask == "keys"

    def _mask(self, attention: torch.Tensor) -> torch.Tensor:
        if not self.keys:
            return attention
        dtype = next(self.loaded.module.parameters()).dtype
        return key_mask(attention, dtype if dtype.is_floating_point else torch.float32)

    def _check_keys(self, example: dict[str, torch.Tensor]) -> None:
        """A key mask must compute what the tokenizer's mask computes on text without padding:
        a causal model's (or a decoder's) mask is more than its padding."""
        where = "policy calibration.attention_mask 'keys'"
        if self.loaded.whole_encoder_decoder:
            raise CalibrationError(
                f"{where} is for encoders; {self.describe_model()} is traced with its decoder, "
                "whose mask is more than its padding: use 'padding'"
            )
        ids = example[self.input_name][:1]
        module = self.loaded.module
        with torch.no_grad():
            try:
                plain = module(**{self.input_name: ids})
            except Exception:  # the model cannot run without a mask: nothing to compare
                return
            keyed = module(
                **{self.input_name: ids, "attention_mask": example["attention_mask"][:1]}
            )
        a, b = plain[0], keyed[0]
        if isinstance(a, torch.Tensor) and not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            raise CalibrationError(
                f"{where} changes what {self.describe_model()} computes on text without "
                "padding (a causal model's mask is more than its padding): use 'padding'"
            )

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
        saved = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
        if folder.is_dir() and not saved:
            raise CalibrationError(missing)
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(source)
        except Exception as err:  # transformers raises OSError, ValueError, TypeError, ...
            if not saved:
                raise CalibrationError(missing) from err
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise CalibrationError(
                f"cannot load the tokenizer saved in '{source}' ({', '.join(saved)}): {first}; "
                "save it again with tokenizer.save_pretrained"
            ) from err
        if len(tok) <= len(tok.all_special_tokens):  # no word of its own: nothing to read
            if not saved:  # built from the config alone
                raise CalibrationError(missing)
            raise CalibrationError(
                f"the tokenizer saved in '{source}' ({', '.join(saved)}) has an empty vocabulary "
                f"(only its {len(tok)} special tokens); save the tokenizer with its vocabulary "
                "(tokenizer.save_pretrained after training or loading it)"
            )
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
        counts: dict = {}
        texts = read_texts(sources, counts)
        found = len(texts)
        texts = pick(texts, self.settings.num_clips, self.settings.seed, shard)

        def stream(batch_size: int) -> Iterator[ModelBatch]:
            for i in range(0, len(texts), batch_size):
                yield self.batch(tok, texts[i : i + batch_size], batch_size)

        description = f"{len(texts)} of {found} texts, up to {self.length} tokens each"
        if counts["skipped_texts"]:
            description += f"; {counts['skipped_texts']} records without text skipped"
        summary = {
            "files": counts["files"],
            "skipped_files": [],
            "skipped_texts": counts["skipped_texts"],
            "description": description,
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
            what = f"holds {found} and no text files" if source.is_dir() else f"is {found}"
            raise CalibrationError(
                f"--calib '{source}' {what}, but {self.describe_model()} reads text; pass "
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
            inputs["attention_mask"] = self._mask(attention)
        return ModelBatch(inputs, mask, rows)
