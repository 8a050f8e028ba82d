"""REPAIR (Jordan et al., ICLR 2023): after merging, reset the statistics of each aligned hidden
unit before its nonlinearity to the interpolation of its parents'.

Interpolating two aligned models shrinks the variance of hidden units (two imperfectly
correlated units averaged), and the shrinkage compounds layer after layer. For every aligned
group of hidden units (``ffn`` and ``conv`` groups) the layers that write them — linear and
convolution modules whose weight's output axis the group moves — are measured on calibration
data in A, in B′ and in the merged model; each unit's weight row and bias are then rescaled so
that its mean and standard deviation in the merged model become ``λ·(A's) + (1 − λ)·(B′'s)``:
``w ← w·σ_t/σ_m``, ``b ← (b − μ_m)·σ_t/σ_m + μ_t``. Layers without a bias get the scale only.
The merged model is measured again after each correction pass (``passes``), so later layers
see the corrected earlier ones.

REPAIR is not an exact transform of either parent: the report says how many units moved and how
far the merged statistics were from their targets before and after.

Example:
    >>> from graphperm.trace import load_model
    >>> from graphperm.merge import align, merge_models
    >>> a, b = load_model("builtin:bert-tiny"), load_model("builtin:bert-tiny", seed=1)
    >>> result = merge_models(align(a, b, "linear"), a, b, weight_a=0.5)
    >>> batches = [{"input_ids": torch.randint(5, 90, (2, 12))} for _ in range(2)]
    >>> analysis = result.alignment.analysis
    >>> targets = repair_targets(analysis, a.module, [a.state_dict(), b.state_dict()], batches,
    ...                          weights=[0.5, 0.5])
    >>> state, report = repair_state(a.module, result.state, targets, batches)
    >>> report["units"] > 0 and report["mismatch_after"] < report["mismatch_before"]
    True
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from graphperm.analysis import Analysis

__all__ = ["REPAIRED_KINDS", "RepairTargets", "repair_state", "repair_targets", "writers"]

log = logging.getLogger(__name__)

#: Group kinds whose units are hidden units read through a nonlinearity.
REPAIRED_KINDS = ("ffn", "conv")

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _out_dim(layer: nn.Module) -> int:
    """The weight's output axis: 0 for ``nn.Linear`` and convolutions, 1 for a linear layer
    that stores its weight ``(in, out)`` (GPT-2's ``Conv1D``, ``x @ W + b``)."""
    return 0 if isinstance(layer, _LAYERS) else 1


def _channels_last(layer: nn.Module) -> bool:
    """Whether the layer's output has its channels on the last axis (linear layers)."""
    return not isinstance(layer, nn.Conv1d | nn.Conv2d)


def writers(analysis: Analysis, module: nn.Module, groups: set[str]) -> dict[str, str]:
    """Module path -> group name, for every linear or convolution layer of ``module`` whose
    weight's output axis is moved by one of ``groups`` (of a kind in :data:`REPAIRED_KINDS`):
    ``nn.Linear``, ``nn.Conv1d/2d``, and a module holding a 2-d ``(in, out)`` weight and a
    bias whose output axis the group moves (``x @ W + b``: GPT-2's ``Conv1D``)."""
    out_axes = {
        (key, dim): g.name
        for g in analysis.groups
        if g.name in groups and g.kind in REPAIRED_KINDS
        for key, dim in g.tensors
    }
    found = {}
    for name, m in module.named_modules():
        key = f"{name}.weight"
        if isinstance(m, _LAYERS):
            if (key, 0) in out_axes:
                found[name] = out_axes[(key, 0)]
        elif (
            isinstance(getattr(m, "weight", None), torch.Tensor)
            and m.weight.ndim == 2
            and isinstance(getattr(m, "bias", None), torch.Tensor)
            and m.bias.shape == m.weight.shape[1:]
            and (key, 1) in out_axes
            and (key, 0) not in out_axes
        ):
            found[name] = out_axes[(key, 1)]
    return found


def _moments(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    layers: Sequence[str],
    batches: Sequence[dict[str, torch.Tensor]],
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, each output channel's mean and standard deviation over every position."""
    sums: dict[str, list] = {}
    hooks = []

    def hook(name: str, layer: nn.Module):
        def record(_mod, _inp, out):
            x = out.detach().double()
            x = x if _channels_last(layer) else x.movedim(1, -1)
            x = x.reshape(-1, x.shape[-1])
            s = sums.setdefault(name, [0, 0.0, 0.0])
            s[0] += x.shape[0]
            s[1] = s[1] + x.sum(0)
            s[2] = s[2] + x.pow(2).sum(0)

        return record

    for name in layers:
        layer = module.get_submodule(name)
        hooks.append(layer.register_forward_hook(hook(name, layer)))
    try:
        with torch.no_grad():
            for batch in batches:
                # tied tensors (an LM head and its embedding) come under both names, as
                # separate (equal) values in a merged state: set each name on its own
                functional_call(
                    module, state, (), dict(getattr(batch, "inputs", batch)), tie_weights=False
                )
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, (n, s, q) in sums.items():
        mean = s / n
        out[name] = (mean, (q / n - mean.pow(2)).clamp_min(0).sqrt())
    return out


@dataclass
class RepairTargets:
    """The layers REPAIR corrects and each one's target mean and standard deviation per unit
    (the parents' interpolated), measured before the merge overwrites anything."""

    layers: dict[str, str]  # module path -> group
    target: dict[str, tuple[torch.Tensor, torch.Tensor]]


def repair_targets(
    analysis: Analysis,
    module: nn.Module,
    states: Sequence[dict[str, torch.Tensor]],
    batches: Sequence[dict[str, torch.Tensor]],
    *,
    weights: Sequence[float],
    groups: set[str] | None = None,
) -> RepairTargets:
    """Measure every model (``states``: weights in A's basis, A first) at the writers of
    ``groups`` (default: every group) and interpolate their statistics with ``weights``."""
    groups = groups if groups is not None else {g.name for g in analysis.groups}
    layers = writers(analysis, module, groups)
    if not layers or not batches:
        return RepairTargets({}, {})
    measured = [_moments(module, s, list(layers), batches) for s in states]
    target = {
        name: (
            sum(w * m[name][0] for w, m in zip(weights, measured)),
            sum(w * m[name][1] for w, m in zip(weights, measured)),
        )
        for name in layers
    }
    return RepairTargets(layers, target)


def repair_state(
    module: nn.Module,
    merged: dict[str, torch.Tensor],
    targets: RepairTargets,
    batches: Sequence[dict[str, torch.Tensor]],
    *,
    passes: int = 2,
) -> tuple[dict[str, torch.Tensor], dict]:
    """``merged`` (keys relative to the traced module ``module``) with REPAIR's correction
    folded into the writers' weights and biases, and a report."""
    layers = list(targets.layers)
    if not layers:
        return dict(merged), {"layers": 0, "units": 0, "passes": 0}
    out = dict(merged)
    before = None
    scales: dict[str, torch.Tensor] = {}
    for k in range(max(1, passes)):
        got = _moments(module, out, layers, batches)
        if k == 0:
            before = _mismatch(got, targets.target)
        for name in layers:
            mean_m, std_m = got[name]
            mean_t, std_t = targets.target[name]
            scale = torch.where(std_m > 1e-12, std_t / std_m.clamp_min(1e-12), 1.0)
            w_key, b_key = f"{name}.weight", f"{name}.bias"
            w = out[w_key]
            dim = _out_dim(module.get_submodule(name))
            shape = [1] * w.ndim
            shape[dim] = -1
            out[w_key] = (w.double() * scale.reshape(shape)).to(w.dtype)
            if b_key in out:
                b = out[b_key].double()
                out[b_key] = ((b - mean_m) * scale + mean_t).to(out[b_key].dtype)
            scales[name] = scales.get(name, torch.ones_like(scale)) * scale
    after = _mismatch(_moments(module, out, layers, batches), targets.target)
    units = sum(int(s.numel()) for s in scales.values())
    report = {
        "layers": len(layers),
        "units": units,
        "passes": max(1, passes),
        "without_bias": sorted(n for n in layers if f"{n}.bias" not in out),
        "mismatch_before": round(before, 6),
        "mismatch_after": round(after, 6),
        "mean_scale": round(float(torch.cat([s.flatten() for s in scales.values()]).mean()), 6),
        "exact": False,
        "note": "REPAIR is not an exact transform: the merged model's hidden units were "
        "rescaled toward their parents' interpolated statistics",
    }
    log.info(
        "REPAIR: %d units in %d layers; statistics mismatch %.4g -> %.4g",
        units,
        len(layers),
        before,
        after,
    )
    return out, report


def _mismatch(got: dict, target: dict) -> float:
    """Mean over units of |σ_m/σ_t − 1| + |μ_m − μ_t|/σ_t: how far the merged statistics are
    from their targets."""
    total, n = 0.0, 0
    for name, (mean_t, std_t) in target.items():
        mean_m, std_m = got[name]
        s = std_t.clamp_min(1e-12)
        total += float(((std_m / s - 1).abs() + (mean_m - mean_t).abs() / s).sum())
        n += mean_t.numel()
    return total / max(1, n)
