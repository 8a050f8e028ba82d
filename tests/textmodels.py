"""Tiny text encoders saved with a tokenizer, for tests (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import transformers as tf

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def save_tiny_bert(folder: Path, words: list[str], seed: int = 0, tokenizer: bool = True) -> Path:
    """A post-LN BERT (hidden 64, 2 layers) with seeded random weights and a word-level
    ``BertTokenizerFast`` over ``words``, saved in ``folder``."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + sorted(set(words))
    config = tf.BertConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=max(128, len(vocab)),
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    tf.BertModel(config).eval().save_pretrained(folder)
    if tokenizer:
        tok = tf.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
        assert len(tok) == len(vocab)
        tok.save_pretrained(folder)
    return folder


def words_of(*files: Path) -> list[str]:
    return sorted({w for f in files for w in f.read_text().replace('"', " ").split()})
