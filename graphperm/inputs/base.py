"""The input-adapter seam: what a model eats, for tracing and for calibration.

An adapter is chosen by a model's main input (``input_values``, ``input_features``,
``input_ids``, ``pixel_values``, ...) and answers two questions:

- :meth:`InputAdapter.example`: inputs of a given batch size to export the model on;
- :meth:`InputAdapter.calibration`: calibration data read from the user's files, as
  :class:`ModelBatch` es of that same fixed shape.

A batch carries a validity mask per input position (samples, frames, tokens, patches), so the
statistics never see padding and count positions, whatever the modality.

Example:
    >>> from graphperm.trace import load_model
    >>> adapter = adapter_for(load_model("builtin:bert-tiny"))
    >>> adapter.kind, {k: tuple(v.shape) for k, v in adapter.example(2, length=8).items()}
    ('tokens', {'input_ids': (2, 8), 'attention_mask': (2, 8)})
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from graphperm.errors import CalibrationError, ModelLoadError

if TYPE_CHECKING:
    from graphperm.policy import Calibration
    from graphperm.trace import LoadedModel

__all__ = [
    "ADAPTERS",
    "DECODER_TOKENS",
    "CalibrationData",
    "InputAdapter",
    "ModelBatch",
    "adapter_for",
    "decoder_inputs",
    "main_input_name",
    "register_adapter",
]

log = logging.getLogger(__name__)


@dataclass
class ModelBatch:
    """Model inputs for one forward pass and which of their positions hold real data.

    ``mask`` is ``(batch, positions)`` bool along the adapter's position axis (audio samples,
    feature frames, tokens, or one position per image); rows of padding are all False. A site
    whose time axis has ``T`` steps keeps step ``t`` only when every input position it spans
    (``t·P/T`` to ``(t+1)·P/T``) is valid.

    Example:
        >>> mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]]).bool()
        >>> b = ModelBatch({"x": torch.zeros(2, 4)}, mask, items=1)
        >>> b.positions, b.items
        (3, 1)
    """

    inputs: dict[str, torch.Tensor]
    mask: torch.Tensor
    items: int  # real (not padding) examples: clips, texts, images

    @property
    def positions(self) -> int:
        """Valid input positions in the batch."""
        return int(self.mask.sum())


@dataclass
class CalibrationData:
    """Calibration data planned from the user's sources, streamed as :class:`ModelBatch` es.

    ``stream(batch_size)`` yields batches; ``planned`` is the number of items planned;
    ``summary`` describes what was found (files, skipped files, a one-line description; an
    adapter may complete it once the stream is spent). ``dynamic``, when set, is the
    ``dynamic_shapes`` argument of :func:`torch.export.export` for inputs whose batch and length
    vary from batch to batch (each item run at its own length, nothing padded inside a row);
    None: every batch has the shape of :meth:`InputAdapter.example`.
    """

    stream: Callable[[int], Iterator[ModelBatch]]
    planned: int
    summary: dict[str, Any] = field(default_factory=dict)
    dynamic: dict[str, Any] | None = None

    def batches(self, batch_size: int) -> Iterator[ModelBatch]:
        return self.stream(batch_size)

    def __len__(self) -> int:
        return self.planned


class InputAdapter:
    """Base class of input adapters (see the module docstring).

    ``unit`` and ``per_unit`` turn position counts into what users think in (``s`` of audio at
    ``per_unit`` samples per second; ``tokens``; ``images``).
    """

    kind: ClassVar[str] = "inputs"
    item: ClassVar[str] = "items"  # what one example is called in reports: clips, texts, ...
    unit: ClassVar[str] = "positions"
    per_unit: float = 1.0

    def __init__(self, loaded: LoadedModel, settings: Calibration | None = None) -> None:
        self.loaded = loaded
        self.input_name = main_input_name(loaded)
        self.settings = settings

    def example(
        self, batch_size: int = 1, length: int | None = None, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """Inputs of the fixed shape every calibration batch is padded to (for export)."""
        raise NotImplementedError

    def calibration(
        self, sources: Sequence[str | Path], *, shard: tuple[int, int] | None = None
    ) -> CalibrationData:
        """The calibration data in ``sources`` (files or folders)."""
        raise CalibrationError(
            f"calibration from files is not supported for {self.describe_model()} "
            f"(main input '{self.input_name}')"
        )

    def padded(self, batch: ModelBatch, batch_size: int) -> ModelBatch:
        """``batch`` (from a stream with :attr:`CalibrationData.dynamic` axes) padded to
        :meth:`example`'s shape, for a model that cannot be exported with those axes."""
        raise NotImplementedError

    def max_steps(self, rate: float | None) -> int | None:
        """Steps per batch row that ``rate`` steps per ``unit`` allow (None: keep all)."""
        return None

    def amount(self, positions: float) -> str:
        """``positions`` in the adapter's unit, for reports (``"12.0 s"``)."""
        value = positions / self.per_unit
        return f"{value:.1f} {self.unit}" if self.unit == "s" else f"{value:.0f} {self.unit}"

    def describe_model(self) -> str:
        return type(self.loaded.module).__name__


#: (main input name, predicate on the loaded model, adapter class), tried in order.
ADAPTERS: list[tuple[str, Callable[[LoadedModel], bool], type[InputAdapter]]] = []


def register_adapter(
    main_input: str, when: Callable[[LoadedModel], bool] | None = None
) -> Callable[[type[InputAdapter]], type[InputAdapter]]:
    """Register an adapter class for models whose main input is ``main_input`` (and for which
    ``when(loaded)`` holds, if given). Later registrations are tried first, so a package can
    override a built-in adapter."""

    def deco(cls: type[InputAdapter]) -> type[InputAdapter]:
        ADAPTERS.insert(0, (main_input, when or (lambda _: True), cls))
        return cls

    return deco


def main_input_name(loaded: LoadedModel) -> str:
    """The name of the model's main ``forward`` argument (transformers' ``main_input_name``)."""
    return getattr(loaded.module, "main_input_name", None) or getattr(
        loaded.model, "main_input_name", "input_ids"
    )


def adapter_for(loaded: LoadedModel, settings: Calibration | None = None) -> InputAdapter:
    """The adapter registered for ``loaded``'s main input; ``settings`` are the policy's
    calibration settings (clip length, sample rate, ...), defaults when None."""
    name = main_input_name(loaded)
    if loaded.config is not None:
        for main_input, when, cls in ADAPTERS:
            if main_input == name and when(loaded):
                return (_whole(cls) if loaded.whole_encoder_decoder else cls)(loaded, settings)
    raise ModelLoadError(
        f"no example-input recipe for {type(loaded.module).__name__} (main input '{name}'); "
        "pass --inputs FILE.safetensors with one tensor per forward() argument"
    )


def step_mask(mask: torch.Tensor, steps: int) -> torch.Tensor:
    """``(rows, steps)``: step ``t`` of an axis of ``steps`` laid over ``mask``'s positions is
    valid when every position it spans is.

    Example:
        >>> step_mask(torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]]).bool(), 4).int().tolist()
        [[1, 1, 0, 0]]
    """
    rows, n = mask.shape
    bad = torch.zeros(rows, n + 1, dtype=torch.long, device=mask.device)
    torch.cumsum((~mask).long(), dim=1, out=bad[:, 1:])
    t = torch.arange(steps, device=mask.device)
    lo = (t * n) // steps
    hi = ((t + 1) * n + steps - 1) // steps
    return (bad[:, hi] - bad[:, lo]) == 0


#: Decoder positions per row of an audio encoder–decoder (Whisper) with a language-model head:
#: the prompt, then the model's own greedy continuation up to this many tokens.
DECODER_TOKENS = 16


def decoder_inputs(loaded: LoadedModel, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``inputs`` with the decoder's inputs of a whole encoder–decoder model added (unless
    given): for token ids (T5, BART), the ids shifted right behind the config's
    ``decoder_start_token_id`` (teacher forcing on the text itself: the decoder's positions
    then line up with the encoder's, and the batch's mask serves both); for any other input
    (Whisper's log-mel window), the start token and the generation config's forced prompt
    tokens, followed, when the model has a language-model head, by its own greedy transcript
    of each row (:data:`DECODER_TOKENS` in all): what its decoder reads when it transcribes
    that audio. The model that builds them is the one ``loaded`` holds (model A), so every
    model is measured on the same decoder inputs.

    Example:
        >>> from graphperm.trace import load_model
        >>> t5 = load_model("builtin:zoo/t5", scope="whole")
        >>> ids = torch.tensor([[5, 6, 7]])
        >>> decoder_inputs(t5, {"input_ids": ids})["decoder_input_ids"].tolist()
        [[0, 5, 6]]
        >>> whisper = load_model("builtin:zoo/whisper-lm", scope="whole")
        >>> features = torch.randn(2, 16, 100)
        >>> tuple(decoder_inputs(whisper, {"input_features": features})["decoder_input_ids"].shape)
        (2, 16)
    """
    if "decoder_input_ids" in inputs:
        return inputs
    config = loaded.config
    start = getattr(config, "decoder_start_token_id", None)
    generation = getattr(loaded.model, "generation_config", None)
    if start is None:
        start = getattr(generation, "decoder_start_token_id", None)
    if not isinstance(start, int):
        raise ModelLoadError(
            f"{type(loaded.model).__name__} from '{loaded.source}' has no decoder_start_token_id "
            "in its config, so graphperm cannot build its decoder's inputs; set it in "
            "config.json, pass --inputs FILE.safetensors with decoder_input_ids, or merge the "
            "encoder alone with --scope encoder"
        )
    name = main_input_name(loaded)
    main = inputs[name]
    rows = main.shape[0]
    if not main.is_floating_point():  # token ids: shifted right behind the start token
        ids = torch.cat([torch.full((rows, 1), start, dtype=main.dtype), main[:, :-1]], dim=1)
        pad = getattr(config, "pad_token_id", None)
        mask = inputs.get("attention_mask")
        if mask is not None and isinstance(pad, int):
            shifted = torch.cat([torch.ones_like(mask[:, :1]), mask[:, :-1]], dim=1)
            ids = ids.masked_fill(shifted == 0, pad)
        return {**inputs, "decoder_input_ids": ids}
    forced = getattr(generation, "forced_decoder_ids", None) or []
    prompt = torch.tensor([[start] + [int(token) for _, token in sorted(forced)]] * rows)
    most = getattr(config, "max_target_positions", None) or DECODER_TOKENS
    steps = min(DECODER_TOKENS, most) - prompt.shape[1]
    return {**inputs, "decoder_input_ids": _greedy(loaded, name, main, prompt, steps)}


def _greedy(
    loaded: LoadedModel, name: str, main: torch.Tensor, prompt: torch.Tensor, steps: int
) -> torch.Tensor:
    """``prompt`` followed by ``steps`` tokens the model picks greedily for ``main`` (the
    prompt alone for a model without a language-model head)."""
    model = loaded.model
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or steps <= 0:
        return prompt
    param = next(model.parameters())
    x = main.to(param.device, param.dtype)
    ids = prompt.to(param.device)
    with torch.no_grad():
        encoded = model.get_encoder()(**{name: x})
        for _ in range(steps):
            logits = model(encoder_outputs=encoded, decoder_input_ids=ids).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids.cpu()


_WHOLE: dict[type, type] = {}


def _whole(cls: type[InputAdapter]) -> type[InputAdapter]:
    """``cls`` whose inputs carry :func:`decoder_inputs` (a whole encoder–decoder model)."""
    if cls in _WHOLE:
        return _WHOLE[cls]

    class Whole(cls):  # type: ignore[valid-type, misc]
        def example(self, batch_size=1, length=None, seed=0):
            return decoder_inputs(self.loaded, super().example(batch_size, length, seed))

        def calibration(self, sources, *, shard=None):
            data = super().calibration(sources, shard=shard)
            stream = data.stream

            def with_decoder(batch_size: int) -> Iterator[ModelBatch]:
                for b in stream(batch_size):
                    yield ModelBatch(decoder_inputs(self.loaded, b.inputs), b.mask, b.items)

            data.stream = with_decoder
            if data.dynamic is not None:  # the decoder's ids: as long as the token ids, or fixed
                axes = data.dynamic.get(self.input_name, {})
                text = self.kind == "tokens"
                data.dynamic = {
                    **data.dynamic,
                    "decoder_input_ids": dict(axes) if text else {0: axes[0]} if 0 in axes else {},
                }
            return data

        def padded(self, batch, batch_size):
            b = super().padded(batch, batch_size)
            inputs = {k: v for k, v in b.inputs.items() if k != "decoder_input_ids"}
            return ModelBatch(decoder_inputs(self.loaded, inputs), b.mask, b.items)

    Whole.__name__ = Whole.__qualname__ = cls.__name__
    Whole.__doc__ = cls.__doc__
    _WHOLE[cls] = Whole
    return Whole
