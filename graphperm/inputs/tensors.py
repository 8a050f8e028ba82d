"""Ready-made calibration batches: ``--calib FILE.safetensors`` for any encoder.

The file holds one tensor per model input (``forward()`` argument), each with the items along
its first dim and every other dim of the shape the model is exported on (what its adapter's
``example()`` makes: e.g. ``calibration.max_tokens`` tokens, ``clip_seconds`` of audio, the
config's image size). The statistics' validity mask is the optional key ``mask`` (``(items,
positions)`` bool, not passed to the model), else ``attention_mask``, else one valid position
per item. Several files are concatenated.

A model with no input recipe of its own (a custom module, an unusual architecture) is traced on
the file's first items too (:func:`calibration_adapter`), so ``--calib FILE.safetensors`` is all
it needs.

Example:
    >>> import tempfile, torch
    >>> from safetensors.torch import save_file
    >>> from graphperm.trace import load_model
    >>> from graphperm.policy import Calibration
    >>> model = load_model("builtin:vit-tiny")
    >>> path = tempfile.mkdtemp() + "/batches.safetensors"
    >>> save_file({"pixel_values": torch.randn(3, 3, 32, 32)}, path)
    >>> data = tensor_calibration(adapter_for(model, Calibration()), [path])
    >>> [(b.items, tuple(b.inputs["pixel_values"].shape)) for b in data.batches(2)]
    [(2, (2, 3, 32, 32)), (1, (2, 3, 32, 32))]
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from graphperm.errors import CalibrationError, ModelLoadError
from graphperm.inputs.base import CalibrationData, InputAdapter, ModelBatch, adapter_for

if TYPE_CHECKING:
    from graphperm.policy import Calibration
    from graphperm.trace import LoadedModel

__all__ = [
    "MASK_KEY",
    "TensorAdapter",
    "adapter_for",
    "calibration_adapter",
    "is_tensor_source",
    "tensor_calibration",
]

MASK_KEY = "mask"


def is_tensor_source(sources: Sequence[str | Path]) -> bool:
    """Whether ``sources`` are ``.safetensors`` files of ready-made batches."""
    return bool(sources) and all(str(s).endswith(".safetensors") for s in sources)


def _forward_arguments(adapter: InputAdapter) -> set[str] | None:
    try:
        params = inspect.signature(adapter.loaded.module.forward).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def read_tensors(sources: Sequence[str | Path]) -> dict[str, torch.Tensor]:
    """Every tensor of the ``.safetensors`` ``sources``, files concatenated along dim 0."""
    from safetensors.torch import load_file

    tensors: dict[str, list[torch.Tensor]] = {}
    for src in sources:
        if not Path(src).is_file():
            raise CalibrationError(f"calibration source '{src}' does not exist")
        try:
            for k, v in load_file(str(src)).items():
                tensors.setdefault(k, []).append(v)
        except Exception as err:  # safetensors raises its own error types
            raise CalibrationError(f"'{src}' is not a safetensors file: {err}") from err
    if not tensors:
        raise CalibrationError("the calibration .safetensors files hold no tensor")
    return {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in tensors.items()}


class TensorAdapter(InputAdapter):
    """Inputs of a model with no recipe of its own: the ready-made batches themselves. The
    model is exported on the first items of the files (repeated to fill a batch).

    Example:
        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> from graphperm.trace import load_model
        >>> path = tempfile.mkdtemp() + "/x.safetensors"
        >>> save_file({"x": torch.randn(3, 5, 8)}, path)
        >>> adapter = TensorAdapter(load_model(torch.nn.Linear(8, 8)), None, [path])
        >>> tuple(adapter.example(4)["x"].shape)
        (4, 5, 8)
    """

    kind = "tensors"

    def __init__(
        self,
        loaded: LoadedModel,
        settings: Calibration | None,
        sources: Sequence[str | Path],
    ) -> None:
        super().__init__(loaded, settings)
        self.sources = list(sources)
        self._data = read_tensors(self.sources)

    def example(
        self, batch_size: int = 1, length: int | None = None, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        items = {int(v.shape[0]) for v in self._data.values()}
        if len(items) != 1 or 0 in items:
            raise CalibrationError(
                "the calibration tensors differ in their first (item) dim or hold no item: "
                + ", ".join(f"{k} {tuple(v.shape)}" for k, v in self._data.items())
            )
        index = torch.arange(batch_size) % items.pop()
        return {k: v[index] for k, v in self._data.items() if k != MASK_KEY}

    def calibration(
        self, sources: Sequence[str | Path], *, shard: tuple[int, int] | None = None
    ) -> CalibrationData:
        return tensor_calibration(self, sources, shard=shard)


def calibration_adapter(
    loaded: LoadedModel, settings: Calibration | None, sources: Sequence[str | Path] = ()
) -> InputAdapter:
    """The adapter registered for ``loaded`` (:func:`adapter_for`); for a model with none, a
    :class:`TensorAdapter` on ``sources`` when they are ``.safetensors`` batches (else the
    one-line :class:`~graphperm.errors.ModelLoadError`)."""
    try:
        return adapter_for(loaded, settings)
    except ModelLoadError:
        if not is_tensor_source(sources):
            raise
    return TensorAdapter(loaded, settings, sources)


def tensor_calibration(
    adapter: InputAdapter,
    sources: Sequence[str | Path],
    *,
    shard: tuple[int, int] | None = None,
) -> CalibrationData:
    """The batches in the ``.safetensors`` ``sources``, checked against the inputs ``adapter``
    exports the model on (names and per-item shapes), cut to ``calibration.num_clips`` items."""
    data = read_tensors(sources)
    example = adapter.example(1)
    given = set(data) - {MASK_KEY}
    forward = _forward_arguments(adapter)
    if forward is not None and not given <= forward:
        unknown = ", ".join(sorted(given - forward))
        raise CalibrationError(
            f"calibration tensors {unknown} are not arguments of "
            f"{adapter.describe_model()}.forward ({', '.join(sorted(forward))})"
        )
    if given != set(example):
        raise CalibrationError(
            f"the calibration tensors are {', '.join(sorted(given))} but the model is exported "
            f"on {', '.join(sorted(example))}; give exactly those keys "
            f"(plus an optional '{MASK_KEY}')"
        )
    items = {int(v.shape[0]) for v in data.values()}
    if len(items) != 1:
        raise CalibrationError(
            "the calibration tensors differ in their first (item) dim: "
            + ", ".join(f"{k} {tuple(v.shape)}" for k, v in data.items())
        )
    n = items.pop()
    for k, v in example.items():
        if tuple(data[k].shape[1:]) != tuple(v.shape[1:]):
            raise CalibrationError(
                f"calibration tensor {k} is {tuple(data[k].shape)}; every item must be "
                f"{tuple(v.shape[1:])}, the shape the model is exported on"
            )
    mask = data.pop(MASK_KEY, None)
    if mask is None:
        mask = data["attention_mask"] if "attention_mask" in data else torch.ones(n, 1)
    mask = mask.bool().reshape(n, -1)
    settings = adapter.settings
    order = list(range(n))
    if settings is not None and settings.num_clips is not None:
        order = order[: settings.num_clips]
    if shard is not None:
        order = order[shard[0] :: shard[1]]

    def stream(batch_size: int) -> Iterator[ModelBatch]:
        for i in range(0, len(order), batch_size):
            rows = order[i : i + batch_size]
            # padding rows repeat the first row (no all-masked row reaches the model) and are
            # masked out of every statistic
            index = torch.tensor(rows + [rows[0]] * (batch_size - len(rows)))
            inputs = {k: v[index] for k, v in data.items()}
            m = mask[index].clone()
            m[len(rows) :] = False
            yield ModelBatch(inputs, m, len(rows))

    summary = {
        "files": len(sources),
        "skipped_files": [],
        "description": f"{len(order)} of {n} ready-made items from {len(sources)} file(s)",
    }
    return CalibrationData(stream, len(order), summary)
