"""What a merged folder needs besides the weights: model A's tokenizer, processor and
generation files, and A's dtype.

A model is loaded in float32 for the analysis and the arithmetic; the merged weights are
written back in the dtype A was saved in (``--dtype auto``), read from A's own ``config.json``
(``dtype`` / ``torch_dtype``) or, when it says nothing, from its weight files.

Example:
    >>> import tempfile, pathlib, json
    >>> src = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (src / "config.json").write_text(json.dumps({"dtype": "float16"}))
    >>> _ = (src / "vocab.txt").write_text("[PAD]\\n")
    >>> source_dtype(str(src))
    torch.float16
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> copy_extras(str(src), out)
    ['vocab.txt']
"""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil
from pathlib import Path

import torch

__all__ = ["DTYPES", "EXTRA_FILES", "copy_extras", "resolve_dtype", "source_dtype"]

log = logging.getLogger(__name__)

#: Files of a model folder that are not the model but that its users load next to it.
EXTRA_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",  # sentencepiece (spiece.model, tokenizer.model, sentencepiece.bpe.model)
    "normalizer.json",
    "chat_template.*",
    "preprocessor_config.json",
    "processor_config.json",
    "feature_extractor_config.json",
    "image_processor_config.json",
    "video_preprocessor_config.json",
    "generation_config.json",
)

#: ``--dtype`` choices besides ``auto`` (A's own).
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _local(source: str) -> Path | None:
    path = Path(source).expanduser()
    return path if path.is_dir() else None


def _is_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~", "builtin:"))


def copy_extras(source: str, folder: Path) -> list[str]:
    """Copy ``source``'s tokenizer, processor and generation files (:data:`EXTRA_FILES`) into
    ``folder`` where it does not hold them yet; returns the names copied. A hub id's files come
    from the hub cache (or are downloaded); a built-in model has none."""
    root = _local(source)
    if root is None and _is_hub_id(source):
        try:
            from huggingface_hub import snapshot_download

            root = Path(snapshot_download(source, allow_patterns=list(EXTRA_FILES)))
        except Exception as err:  # offline, gated, ...: the model itself is written anyway
            log.warning("could not fetch the tokenizer/processor files of %s: %s", source, err)
            return []
    if root is None:
        return []
    copied = []
    for path in sorted(root.iterdir()):
        if not path.is_file() or (folder / path.name).exists():
            continue
        if any(fnmatch.fnmatchcase(path.name, pattern) for pattern in EXTRA_FILES):
            shutil.copy(path, folder / path.name)
            copied.append(path.name)
    return copied


def source_dtype(source: str) -> torch.dtype | None:
    """The dtype ``source`` was saved in (None when unknown: a built-in model, a module)."""
    root = _local(source)
    config: dict = {}
    try:
        if root is not None and (root / "config.json").is_file():
            config = json.loads((root / "config.json").read_text())
        elif _is_hub_id(source):
            from huggingface_hub import hf_hub_download

            config = json.loads(Path(hf_hub_download(source, "config.json")).read_text())
    except Exception as err:  # an unreadable config was reported when the model was loaded
        log.debug("no dtype from the config of %s: %s", source, err)
    name = config.get("dtype") or config.get("torch_dtype")
    if isinstance(name, str) and name.removeprefix("torch.") in DTYPES:
        return DTYPES[name.removeprefix("torch.")]
    if root is not None:
        return _weights_dtype(root)
    return None


def _weights_dtype(root: Path) -> torch.dtype | None:
    """The most common floating dtype of the tensors in ``root``'s safetensors files."""
    from safetensors import safe_open

    codes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    counts: dict[torch.dtype, int] = {}
    for path in sorted(root.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                    dtype = codes.get(f.get_slice(key).get_dtype())
                    if dtype is not None:
                        counts[dtype] = counts.get(dtype, 0) + 1
        except Exception:  # not a weight file
            continue
    return max(counts, key=counts.get) if counts else None


def resolve_dtype(dtype: str | torch.dtype | None, source: str) -> torch.dtype | None:
    """The dtype to write: ``auto`` (or None) is ``source``'s own; None leaves the weights as
    they are (float32)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return source_dtype(source)
    return DTYPES[dtype]
