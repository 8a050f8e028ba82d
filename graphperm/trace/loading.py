"""Load a model to align: a local folder, a hub id, or a built-in config.

What is saved is what is traced: a checkpoint with a task head (``HubertForCTC``,
``LlamaForCausalLM``) is traced whole, head and tied output embeddings included, so the head
moves with the stream it reads. An encoder–decoder model (Whisper, T5, BART) is traced in one of
two :data:`SCOPES`: ``"whole"``, encoder, decoder and head as one graph (the decoder's inputs come
from the config: :mod:`graphperm.inputs`), where cross-attention couples the encoder's output
stream to the decoder's key and value projections; or ``"encoder"``, its encoder alone, whose
output axes the analysis then keeps fixed (the decoder, which is not traced, reads them) and
whose merge leaves the decoder interpolated plainly. ``load_model`` defaults to ``"encoder"``
(the library's behaviour before whole models); ``graphperm`` commands default to ``"whole"``.
graphperm runs models with :data:`RUN_SETTINGS` (no KV cache); the saved config keeps the
user's values.

Example:
    >>> m = load_model("builtin:hubert-tiny")
    >>> m.prefix, type(m.module).__name__, m.partial
    ('', 'HubertModel', False)
    >>> w = load_model("builtin:whisper-tiny", scope="whole")
    >>> w.encoder_decoder, w.partial, load_model("builtin:whisper-tiny").prefix
    (True, False, 'encoder.')
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers as tf
from torch import nn

from graphperm.errors import ModelLoadError
from graphperm.trace.builtin import BUILTINS, ZOO, builtin_config

__all__ = ["RUN_SETTINGS", "SCOPES", "LoadedModel", "load_model"]

log = logging.getLogger(__name__)

#: Config settings graphperm runs every model with, where its configs have them; the model is
#: saved with its own. No KV cache: a decoder would return one, which export cannot capture and
#: nothing reads. Mixture-of-experts layers as batched products of the experts' gathered weights:
#: plain ATen ops whose axes the analysis reads (the default grouped kernel is one opaque op).
RUN_SETTINGS: dict[str, object] = {"use_cache": False, "_experts_implementation": "batched_mm"}

#: What of an encoder–decoder model graphperm traces, aligns and merges: ``"whole"`` (encoder,
#: decoder and head as one graph) or ``"encoder"`` (the encoder alone; the decoder is
#: interpolated plainly and the encoder's outputs keep their order). Other models are traced
#: whole whatever the scope.
SCOPES = ("whole", "encoder")


@dataclass
class LoadedModel:
    """A model as loaded, and the module inside it that graphperm traces and permutes."""

    model: nn.Module  # what save_pretrained saves
    module: nn.Module  # the traced module: the model itself, or its encoder
    prefix: str  # state_dict prefix of ``module`` inside ``model`` ("" or "encoder.")
    source: str  # what the user passed
    #: (config, attribute, value as loaded) for each setting of :data:`RUN_SETTINGS` changed
    changed: list[tuple[object, str, object]] = field(default_factory=list, repr=False)

    @property
    def scope(self) -> str:
        """``"encoder"`` when an encoder–decoder's encoder alone is traced, else ``"whole"``."""
        return "encoder" if self.partial else "whole"

    @property
    def encoder_decoder(self) -> bool:
        """Whether the saved model is an encoder–decoder with a decoder (Whisper, T5, BART;
        not ``T5EncoderModel``)."""
        return _encoder_decoder(self.model)

    @property
    def whole_encoder_decoder(self) -> bool:
        """Whether an encoder–decoder model is traced whole: it then takes decoder inputs."""
        return self.encoder_decoder and not self.partial

    @property
    def partial(self) -> bool:
        """Whether the traced module is only part of the saved model (an encoder–decoder's
        encoder): the rest reads the traced module's outputs and tensors it shares with it."""
        return self.module is not self.model

    @property
    def fixed_outputs(self) -> bool:
        """Whether the traced module's outputs keep their order: they are read by the untraced
        rest of the model (:attr:`partial`), or they are a task head's (logits of labels or
        tokens, whose units mean something). A bare encoder's hidden states move with its
        stream (the merged model lives in A's basis)."""
        base = getattr(self.model, "base_model", self.model)
        return self.partial or (isinstance(base, nn.Module) and base is not self.model)

    @property
    def config(self) -> tf.PretrainedConfig | None:
        return getattr(self.model, "config", None)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The traced module's state (keys relative to it)."""
        return self.module.state_dict()

    @contextmanager
    def as_loaded(self) -> Iterator[nn.Module]:
        """The whole model with its configs as loaded (for saving), :data:`RUN_SETTINGS` again
        after.

        Example:
            >>> m = load_model("builtin:zoo/llama")
            >>> m.config.use_cache
            False
            >>> with m.as_loaded() as model:
            ...     model.config.use_cache
            True
        """
        for config, name, value in self.changed:
            setattr(config, name, value)
        try:
            yield self.model
        finally:
            for config, name, _ in self.changed:
                setattr(config, name, RUN_SETTINGS[name])


def load_model(
    spec: str | Path | nn.Module,
    *,
    random_init: bool = False,
    seed: int = 0,
    trust_remote_code: bool = False,
    scope: str = "encoder",
) -> LoadedModel:
    """Load ``spec``: a folder saved with ``save_pretrained``, a hub id, ``builtin:NAME``, or a
    module. ``random_init`` builds the model from its config alone, with seeded random weights.
    ``scope`` (one of :data:`SCOPES`) says what of an encoder–decoder model is traced.

    Raises :class:`~graphperm.errors.ModelLoadError` with a one-line fix for anything else.
    """
    if scope not in SCOPES:
        raise ModelLoadError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    loaded = _load(spec, random_init, seed, trust_remote_code)
    return with_scope(loaded, scope)


def with_scope(loaded: LoadedModel, scope: str) -> LoadedModel:
    """``loaded`` with what of it is traced chosen again by ``scope`` (the same model object).

    Example:
        >>> m = load_model("builtin:whisper-tiny")
        >>> with_scope(m, "whole").prefix, with_scope(m, "whole").model is m.model
        ('', True)
    """
    if scope not in SCOPES:
        raise ModelLoadError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    model = loaded.model
    module = model
    if scope == "encoder" and _encoder_decoder(model):
        module = model.get_encoder()
        log.info(
            "%s is an encoder-decoder model: working on its encoder (scope 'encoder'); the "
            "axes its outputs carry to the decoder stay fixed",
            loaded.source,
        )
    prefix = ""
    if module is not model:
        prefix = next(n for n, m in model.named_modules() if m is module) + "."
    return LoadedModel(
        model=model,
        module=module.eval(),
        prefix=prefix,
        source=loaded.source,
        changed=loaded.changed,
    )


def _load(
    spec: str | Path | nn.Module, random_init: bool, seed: int, trust_remote_code: bool
) -> LoadedModel:
    if isinstance(spec, nn.Module):  # a module given as is is traced as is, head included
        return _wrap(spec.eval(), type(spec).__name__)
    text = str(spec)
    if text.startswith("builtin:"):
        name = text.removeprefix("builtin:")
        if name.startswith("zoo/") and name.removeprefix("zoo/") in ZOO:
            return _wrap(_from_config(ZOO[name.removeprefix("zoo/")].config(), seed), text)
        if name not in BUILTINS:
            raise ModelLoadError(
                f"'{text}' is not a built-in model; choose one of: "
                + ", ".join(f"builtin:{n}" for n in BUILTINS)
                + ", or builtin:zoo/NAME for NAME in graphperm.trace.builtin.ZOO"
            )
        return _wrap(_from_config(builtin_config(name), seed), text)
    path = Path(text).expanduser()
    if path.exists():
        if (path / "config.json").is_file() and not trust_remote_code:
            mert = _maybe_mert(path, random_init, seed)
            if mert is not None:
                return _wrap(mert, text)
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"'{text}' is not a model: no config.json in it; pass a folder written by "
                "save_pretrained, a hub id, or builtin:NAME (see `graphperm trace --help`)"
            )
        has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        if random_init or not has_weights:
            if not random_init:
                raise ModelLoadError(
                    f"'{text}' has a config.json but no weights (*.safetensors, *.bin); "
                    "pass --random-init to build the model from its config with random weights"
                )
            config = _config(text, trust_remote_code)
            return _wrap(_from_config(config, seed), text)
        return _wrap(_pretrained(text, trust_remote_code), text)
    if "/" in text.strip("/") and not text.startswith((".", "/", "~")) and text.count("/") == 1:
        if not trust_remote_code and "mert" in text.lower():
            return _load(_snapshot(text), random_init, seed, False)
        if random_init:
            return _wrap(_from_config(_config(text, trust_remote_code), seed), text)
        return _wrap(_pretrained(text, trust_remote_code), text)
    raise ModelLoadError(
        f"'{text}' is not a model: no such folder, and not a hub id (org/name) or builtin:NAME; "
        "check the path"
    )


def _maybe_mert(path: Path, random_init: bool, seed: int) -> nn.Module | None:
    """A MERT folder loaded as HubertModel (no remote code), or None if it is not MERT."""
    import json

    from graphperm import mert

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"cannot read {path / 'config.json'}: {err}") from err
    if not mert.is_mert_config(config):
        return None
    log.info("%s is a MERT checkpoint: loading it as HubertModel", path)
    if random_init:
        return _from_config(mert.mert_config_to_hubert(config), seed)
    return mert.load_mert_as_hubert(path)


def _snapshot(repo: str) -> str:
    """Download a hub repository's config and weights (for MERT, read without remote code)."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.bin"])
    except Exception as err:  # network and hub errors come in many kinds
        raise ModelLoadError(f"cannot download '{repo}': {_first_line(err)}") from err


def _config(source: str, trust_remote_code: bool) -> tf.PretrainedConfig:
    try:
        return tf.AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise ModelLoadError(f"cannot read the config of '{source}': {_first_line(err)}") from err


def model_class(config: tf.PretrainedConfig) -> type:
    """The class to build ``config`` with: the one its ``architectures`` names (what was saved:
    ``T5EncoderModel``, ``ClapAudioModel``) when transformers has it, else ``AutoModel``.

    Example:
        >>> config = tf.T5Config(architectures=["T5EncoderModel"])
        >>> model_class(config).__name__
        'T5EncoderModel'
        >>> model_class(tf.BertConfig()).__name__
        'AutoModel'
    """
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(tf, name, None) if isinstance(name, str) else None
        if isinstance(cls, type) and issubclass(cls, tf.PreTrainedModel):
            return cls
    return tf.AutoModel


def _pretrained(source: str, trust_remote_code: bool) -> nn.Module:
    config = _config(source, trust_remote_code)
    cls = tf.AutoModel if trust_remote_code else model_class(config)
    try:
        model = cls.from_pretrained(
            source, trust_remote_code=trust_remote_code, dtype=torch.float32
        )
    except Exception as err:
        hint = ""
        if "trust_remote_code" in str(err) or config.model_type.lower().startswith("mert"):
            hint = (
                "; MERT checkpoints load as HuBERT with `graphperm.mert.load_mert_as_hubert` "
                "(or pass --trust-remote-code if you trust the checkpoint's code)"
            )
        raise ModelLoadError(f"cannot load '{source}': {_first_line(err)}{hint}") from err
    return model.eval()


def _from_config(config: tf.PretrainedConfig, seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            cls = model_class(config)
            model = cls._from_config(config) if cls is not tf.AutoModel else cls.from_config(config)
        except Exception as err:
            raise ModelLoadError(
                f"cannot build a {type(config).__name__} model: {_first_line(err)}"
            ) from err
    return model.eval()


def _wrap(model: nn.Module, source: str) -> LoadedModel:
    """The whole model (a checkpoint saved as ``HubertForCTC`` is traced with its CTC head;
    :func:`with_scope` then picks an encoder–decoder's encoder if asked), run with
    :data:`RUN_SETTINGS` (its saved config keeps its own)."""
    changed = _run_settings(model)
    return LoadedModel(model=model.eval(), module=model, prefix="", source=source, changed=changed)


def _encoder_decoder(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return bool(getattr(config, "is_encoder_decoder", False)) and _has_decoder(model)


def _run_settings(model: nn.Module) -> list[tuple[object, str, object]]:
    """Apply :data:`RUN_SETTINGS` to every config in ``model`` that has them; what was changed,
    with the values as loaded."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    changed = []
    for config in configs.values():
        if not isinstance(config, tf.PretrainedConfig):
            continue
        for name, value in RUN_SETTINGS.items():
            old = getattr(config, name, None)
            if hasattr(config, name) and old != value:
                setattr(config, name, value)
                changed.append((config, name, old))
    return changed


def _has_decoder(model: nn.Module) -> bool:
    """Whether ``model`` holds a decoder (``UMT5EncoderModel`` has an encoder-decoder config but
    no decoder: it is traced whole)."""
    get = getattr(model, "get_decoder", None)
    decoder = get() if callable(get) else None
    return isinstance(decoder, nn.Module) and decoder is not model


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
