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


def save_tiny_llama(folder: Path, words: list[str], seed: int = 0, tied: bool = False) -> Path:
    """A ``LlamaForCausalLM`` (hidden 32, 2 layers, 4 query heads sharing 2 key/value heads)
    saved as transformers saves one (KV cache on), with seeded random weights and a word-level
    tokenizer over ``words`` that has an end-of-text token and no pad token, as GPT-2's and
    Llama's have none. ``tied``: the LM head is the input embedding (one tensor, two names)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["<unk>", "<s>", "</s>", *sorted(set(words))]
    config = tf.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=max(128, len(vocab)),
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    model = tf.LlamaForCausalLM(config).eval()
    assert model.config.use_cache
    model.save_pretrained(folder)
    inner = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = tf.PreTrainedTokenizerFast(
        tokenizer_object=inner, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    assert tok.pad_token is None
    tok.save_pretrained(folder)
    return folder
