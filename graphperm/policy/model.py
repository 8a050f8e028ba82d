"""The policy file: which groups to align, where to measure them, how to interpolate.

A policy is a frozen pydantic model; unknown keys are errors. It is loaded from YAML or JSON and
validated with messages that name the file, the field and the reason.

Example:
    >>> p = Policy.model_validate({"align": [{"kind": "ffn"}], "weight_a": 0.8})
    >>> p.align[0].kind, p.weight_a, p.calibration.clip_seconds
    ('ffn', 0.8, 4.0)
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["AlignRule", "Calibration", "Policy", "WeightOverride"]

Kind = Literal["conv", "ffn", "attn", "residual", "other"]
Site = Literal["auto", "pre", "post"]
_PART = re.compile(r"^(heads|qk|vo|blocks|channels)\d*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AlignRule(_Strict):
    """Align the groups matching ``kind`` and the ``groups`` globs (all of them by default)."""

    kind: Kind | None = Field(None, description="group kind: conv, ffn, attn, residual, other")
    groups: list[str] = Field(
        default_factory=lambda: ["*"],
        description="globs on group names (as `graphperm trace` prints them)",
    )
    parts: list[str] | None = Field(
        None,
        description="parts to align: heads, qk, vo (attention), blocks, channels; default all",
    )
    site: Site = Field(
        "auto",
        description="where to measure: 'pre' = after the producing layer (and its norm), before "
        "the nonlinearity; 'post' = the input of the consuming layer; 'auto' = the paper's "
        "choice (conv: pre, ffn: post, attention heads/vo: post, qk: pre, residual: post)",
    )

    @field_validator("groups", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("parts")
    @classmethod
    def _known_parts(cls, v: list[str] | None) -> list[str] | None:
        for p in v or []:
            if not _PART.match(p):
                raise ValueError(f"'{p}' is not a part name (heads, qk, vo, blocks, channels)")
        return v


class WeightOverride(_Strict):
    """A different interpolation weight of model A for some tensors."""

    modules: list[str] = Field(description="globs on state-dict keys, e.g. 'encoder.layers.0.*'")
    weight_a: float = Field(ge=0.0, le=1.0)

    @field_validator("modules", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v


class Calibration(_Strict):
    """How much calibration audio to use and how to cut it."""

    num_clips: int | None = Field(256, ge=1, description="clips to use (null: every clip)")
    clip_seconds: float = Field(4.0, gt=0.0, le=600.0)
    batch_size: int = Field(
        2,
        ge=1,
        description="clips per forward pass; larger batches are no faster on a CPU and cost "
        "memory (8 clips of 4 s of HuBERT base: 1 GB more than 2), on a GPU try 8-32",
    )
    sample_rate: int | None = Field(
        None, ge=1000, description="resample to this rate (null: the model's sampling_rate)"
    )
    seed: int = Field(0, description="seed of the clip shuffle")
    max_frame_rate: float | None = Field(
        400.0,
        gt=0.0,
        description="frames per second of audio kept at each site; sites faster than this (the "
        "first conv layers, at up to 3200 Hz) are subsampled evenly (null: keep every frame)",
    )
    split_half: bool = Field(
        True,
        description="keep the statistics in two halves (alternate batches), solve each, and "
        "report how far the two permutations agree per group (enough data?)",
    )
    stop_agreement: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="stop reading calibration audio once every aligned group's split-half "
        "agreement is at least this at two checks in a row (null: use every clip)",
    )
    check_every: int = Field(32, ge=1, description="clips between two stop_agreement checks")
    precision: Literal["fp32", "bf16", "fp64"] = Field(
        "fp32",
        description="arithmetic of the calibration pass: 'fp32' (sums kept around a shift, so it "
        "places units as the float64 reference does), 'bf16' (forwards under bf16 autocast and "
        "bf16 products: about twice as fast on CPUs and GPUs with bf16 units, but it places a "
        "few percent of units differently), 'fp64' (the reference)",
    )


class Policy(_Strict):
    """A merge recipe (see ``specs/`` for the paper's Table I)."""

    version: Literal[1] = 1
    description: str = ""
    align: list[AlignRule] = Field(default_factory=list)
    weight_a: float = Field(0.9, ge=0.0, le=1.0, description="interpolation weight of model A")
    weights: list[WeightOverride] = Field(default_factory=list)
    calibration: Calibration = Field(default_factory=Calibration)
    verify: bool = Field(True, description="check that the permuted B computes what B computed")

    def weight_for(self, key: str) -> float:
        """Weight of A for state-dict ``key``: the last matching override, else ``weight_a``."""
        from fnmatch import fnmatchcase

        w = self.weight_a
        for o in self.weights:
            if any(fnmatchcase(key, g) for g in o.modules):
                w = o.weight_a
        return w
