"""How close a merged model is to its parents, on data: ``graphperm eval A B MERGED``.

Every model runs over the same batches; their main outputs (``last_hidden_state``) at every
valid position are compared by **linear CKA** (centred kernel alignment: 1.0 when one output
is an orthogonal transform of the other, up to scale, 0 when unrelated). CKA does not depend
on the basis, so the merged model (in A's basis) is compared with B as it is, and any merge can
be scored, made with graphperm or not. Models whose checkpoint has a masked-LM head also get
that head's own loss on the same texts, with the same tokens masked for every model.

Example:
    >>> x = torch.randn(50, 4, dtype=torch.float64)
    >>> q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    >>> m = Moments(2)
    >>> m.add([x, 3 * x @ q])
    >>> round(m.cka(0, 1), 6)
    1.0
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from graphperm.apply import outputs
from graphperm.errors import CalibrationError
from graphperm.inputs import ModelBatch, calibration_adapter, step_mask
from graphperm.policy import Calibration
from graphperm.runtime import resolve_device
from graphperm.trace import LoadedModel

__all__ = ["MLM_PROBABILITY", "Moments", "evaluate"]

log = logging.getLogger(__name__)

MLM_PROBABILITY = 0.15  # of the real tokens, as BERT was trained


class Moments:
    """Streaming sums for the linear CKA of every pair of ``models`` outputs: count, sums,
    Gram matrices and cross products (float64)."""

    def __init__(self, models: int) -> None:
        self.models = models
        self.n = 0
        self.sums: list[torch.Tensor | None] = [None] * models
        self.grams: list[torch.Tensor | None] = [None] * models
        self.cross: dict[tuple[int, int], torch.Tensor] = {}

    def add(self, rows: list[torch.Tensor]) -> None:
        """One (positions, features) block per model, the same positions."""
        rows = [r.double().cpu() for r in rows]
        self.n += rows[0].shape[0]
        for i, x in enumerate(rows):
            s, g = x.sum(0), x.T @ x
            self.sums[i] = s if self.sums[i] is None else self.sums[i] + s
            self.grams[i] = g if self.grams[i] is None else self.grams[i] + g
            for j in range(i + 1, self.models):
                c = x.T @ rows[j]
                self.cross[(i, j)] = c if (i, j) not in self.cross else self.cross[(i, j)] + c

    def _centred(self, i: int, j: int) -> torch.Tensor:
        raw = self.grams[i] if i == j else self.cross[(i, j)]
        return raw - torch.outer(self.sums[i], self.sums[j]) / self.n

    def cka(self, i: int, j: int) -> float:
        """Linear CKA of models ``i`` and ``j`` (``i < j``)."""
        cross = self._centred(i, j).square().sum()
        scale = self._centred(i, i).norm() * self._centred(j, j).norm()
        return float(cross / scale) if scale > 0 else 0.0


def evaluate(
    models: Sequence[LoadedModel],
    calib: Sequence[str | Path],
    *,
    settings: Calibration | None = None,
    device: str = "auto",
) -> dict:
    """Run every model (the two parents first, then merged ones) over ``calib`` and return
    ``{"items", "positions", "cka": {"i-j": value}, "mlm_loss": [per model] (or absent)}``."""
    settings = settings or Calibration(num_clips=64)
    device = resolve_device(device)
    adapter = calibration_adapter(models[0], settings, calib)
    data = adapter.calibration(calib)
    moments = Moments(len(models))
    heads = [_mlm_head(m) for m in models]
    mask_id = _mask_token(adapter) if any(heads) else None
    losses: list[list[tuple[float, int]]] = [[] for _ in models]  # (mean loss, masked tokens)
    items = 0
    generator = torch.Generator().manual_seed(settings.seed)
    for m in models:
        m.model.to(device)
    for batch in data.batches(settings.batch_size):
        items += batch.items
        inputs = {k: v.to(device) for k, v in batch.inputs.items()}
        outs = [outputs(m.module, inputs)[0] for m in models]
        moments.add(_valid_rows(outs, batch.mask.to(device)))
        if mask_id is not None and "input_ids" in inputs:
            masked, labels = _mlm_inputs(inputs, batch, mask_id, generator)
            count = int((labels != -100).sum())
            for k, (m, head) in enumerate(zip(models, heads)):
                if head and count:
                    with torch.no_grad():
                        loss = m.model(**masked, labels=labels.to(device)).loss
                    losses[k].append((float(loss), count))
    if items == 0:
        raise CalibrationError("the evaluation data gave no items; check --calib")
    out: dict = {
        "items": items,
        "positions": moments.n,
        "cka": {
            f"{i}-{j}": round(moments.cka(i, j), 6)
            for i in range(len(models))
            for j in range(i + 1, len(models))
        },
    }
    if any(losses):
        out["mlm_loss"] = [
            round(sum(x * c for x, c in v) / sum(c for _, c in v), 6) if v else None for v in losses
        ]
    return out


def _valid_rows(outs: list[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
    """Each model's output at the valid positions: (batch, steps, features) through the input
    mask laid over the steps; (batch, features) one row per real item."""
    first = outs[0]
    if first.ndim == 3:
        keep = step_mask(mask, first.shape[1])
        return [o[keep] for o in outs]
    keep = mask.any(1)
    return [o.reshape(o.shape[0], -1)[keep] for o in outs]


def _mlm_head(loaded: LoadedModel) -> bool:
    """Whether the checkpoint's own head is a masked-LM head (it takes ``labels``)."""
    model = loaded.model
    if "labels" not in inspect.signature(model.forward).parameters:
        return False
    return type(model).__name__.endswith("ForMaskedLM")


def _mask_token(adapter) -> int | None:
    tokenizer = getattr(adapter, "tokenizer", None)
    if tokenizer is None:
        return None
    try:
        return tokenizer().mask_token_id
    except CalibrationError:
        return None


def _mlm_inputs(
    inputs: dict[str, torch.Tensor], batch: ModelBatch, mask_id: int, generator: torch.Generator
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``MLM_PROBABILITY`` of the real tokens (not the first and last of each text: [CLS],
    [SEP]) replaced by the mask token; labels -100 elsewhere."""
    ids = inputs["input_ids"]
    real = batch.mask.clone()
    lengths = real.sum(1)
    real[:, 0] = False
    rows = torch.arange(real.shape[0])
    real[rows, (lengths - 1).clamp(min=0)] = False
    pick = (torch.rand(real.shape, generator=generator) < MLM_PROBABILITY) & real
    labels = torch.where(pick, ids.cpu(), torch.full_like(ids.cpu(), -100))
    masked = dict(inputs)
    masked["input_ids"] = torch.where(pick.to(ids.device), torch.full_like(ids, mask_id), ids)
    return masked, labels
