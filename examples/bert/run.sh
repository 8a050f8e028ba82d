#!/usr/bin/env bash
# Two BERT-architecture encoders merged on text. With no arguments: two seeded random-init tiny
# BERTs with a word-level tokenizer built from the text (the oracle-style smoke run; nothing is
# downloaded). With two model folders (each saved with its tokenizer), those are merged.
#   bash examples/bert/run.sh [A B] ; OUT=/tmp/x bash examples/bert/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-/tmp/graphperm-bert}
text=$here/tests/data/text.txt
if [ $# -ge 2 ]; then a=$1; b=$2; else
  a=$out.a; b=$out.b
  python - "$text" "$a" "$b" <<'PY'
import sys
import torch
import transformers as tf
text, *folders = sys.argv[1:]
words = sorted(set(open(text).read().split()))
vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
config = tf.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, vocab_size=128, max_position_embeddings=64)
for seed, folder in enumerate(folders):
    torch.manual_seed(seed)
    tf.BertModel(config).save_pretrained(folder)
    tf.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
PY
fi
python -m graphperm merge "$a" "$b" --policy fnn-attn --calib "$text" --out "$out" --force
head -n 30 "$out/README.md"
