"""The policy file: which groups to align, where to measure them, how to interpolate.

A policy is a frozen pydantic model; unknown keys are errors. It is loaded from YAML or JSON and
validated with messages that name the file, the field and the reason.

Example:
    >>> p = Policy.model_validate({"align": [{"kind": "ffn"}], "weight_a": 0.8})
    >>> p.align[0].kind, p.weight_a, p.calibration.clip_seconds
    ('ffn', 0.8, 4.0)
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from graphperm.analysis import KINDS, PART_NAMES

__all__ = [
    "ROLES",
    "AlignRule",
    "Calibration",
    "Combine",
    "Learn",
    "Policy",
    "Repair",
    "WeightOverride",
    "ZipIt",
]

Kind = Literal[KINDS]  # type: ignore[valid-type]
ROLES = ("auto", "pre", "post")
Role = Literal[ROLES]  # type: ignore[valid-type]
_PART = re.compile(rf"^({'|'.join(PART_NAMES)})\d*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AlignRule(_Strict):
    """Align the groups matching ``kind`` and the ``groups`` globs (all of them by default)."""

    kind: Kind | None = Field(None, description="group kind: " + ", ".join(KINDS))
    groups: list[str] = Field(
        default_factory=lambda: ["*"],
        description="globs on group names (as `graphperm trace` prints them)",
    )
    parts: list[str] | None = Field(
        None,
        description="parts to align: " + ", ".join(PART_NAMES) + "; default all",
    )
    role: Role = Field(
        "auto",
        validation_alias=AliasChoices("role", "site"),
        description="where to measure: 'pre' = after the producing layer (and its norm), before "
        "the nonlinearity; 'post' = the input of the consuming layer; 'auto' = the paper's "
        "choice (conv: pre, ffn: post, attention heads/vo: post, qk: pre, residual: post)",
    )
    at: Literal["all", "first", "last"] = Field(
        "all",
        description="which of the part's sites of that role to measure, in graph order: 'all' "
        "(default; their statistics are combined), 'first' or 'last'. A residual stream's "
        "first site reads it as the embedding wrote it, before any layer added to it "
        "(examples/barrier: better on some pre-LN pairs, worse on post-LN HuBERT)",
    )
    transform: Literal["perm", "orth", "zip"] = Field(
        "perm",
        description="'perm': permute units; 'orth': rotate them (any orthogonal matrix) where "
        "the analysis proves it exact (`graphperm trace` shows each part's family), permute the "
        "other parts; 'zip': ZipIt! (the units of all models pooled and the most correlated "
        "pairs merged, A moved too; not exact, see `zipit`); blocks (attention heads) are "
        "still permuted and the channels zipped within matched heads",
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
                raise ValueError(f"'{p}' is not a part name ({', '.join(PART_NAMES)})")
        return v


class WeightOverride(_Strict):
    """A different interpolation weight of model A for some tensors."""

    modules: list[str] = Field(description="globs on state-dict keys, e.g. 'encoder.layers.0.*'")
    weight_a: float = Field(ge=0.0, le=1.0)

    @field_validator("modules", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v


class Combine(_Strict):
    """How the aligned models are combined, element by element (``graphperm.merge.combine``).

    Example:
        >>> Combine.model_validate("ties").method, Combine(method="dare", drop=0.3).drop
        ('ties', 0.3)
    """

    method: str = Field(
        "interpolate",
        description="'interpolate' (default): Σ_m w_m·model_m, or with a base θ_base + "
        "scale·Σ_m w_m·(model_m − θ_base); 'ties': the paper code's TIES after alignment (where "
        "|B′ − A| is below the quantile or the signs of A and B′ differ, keep A's value), with a "
        "base TIES-merging of the task vectors (trim, elect sign, disjoint mean); 'dare': drop "
        "each entry of every model's difference from A (or the base) with probability `drop` "
        "and rescale the rest by 1/(1 − drop)",
    )
    quantile: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="ties: differences smaller in magnitude than this quantile of their tensor's "
        "are trimmed (0.8 keeps the largest 20%, the paper code's --quantile)",
    )
    disagree: Literal["a", "larger"] = Field(
        "a",
        description="ties after alignment: where an entry is trimmed or the signs disagree, take "
        "A's value ('a', the paper code's --maintain_hubert_behavior) or the value of larger "
        "magnitude ('larger')",
    )
    drop: float = Field(0.5, ge=0.0, lt=1.0, description="dare: probability of dropping an entry")
    seed: int = Field(0, ge=0, description="dare: seed of the drop masks (per tensor and model)")
    scale: float = Field(
        1.0,
        gt=0.0,
        le=4.0,
        description="task arithmetic (a base model): factor of the combined task vectors",
    )

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, v: object) -> object:
        return {"method": v} if isinstance(v, str) else v


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
    max_tokens: int = Field(
        128,
        ge=2,
        le=8192,
        description="text encoders: every text is cut or padded to this many tokens (one "
        "fixed shape serves every batch; padding never enters a statistic)",
    )
    attention_mask: Literal["padding", "keys"] = Field(
        "padding",
        description="text encoders: the attention mask as the tokenizer gives it, (batch, "
        "tokens) of 0/1 ('padding'), or as an additive mask over the keys, (batch, 1, 1, "
        "tokens) with 0 on tokens and the lowest float on padding ('keys'): transformers passes "
        "a 4-D mask on unchanged, and this one broadcasts onto any number of queries "
        "(Nystromformer's landmark scores cannot take the (batch, 1, tokens, tokens) mask it "
        "builds from a 2-D one); not for causal or encoder-decoder models, whose masks are "
        "more than their padding",
    )
    max_frame_rate: float | None = Field(
        400.0,
        gt=0.0,
        description="frames per second of audio kept at each site; sites faster than this (the "
        "first conv layers, at up to 3200 Hz) are subsampled evenly (null: keep every frame)",
    )
    wide_site_stride: dict[int, int] = Field(
        {},
        description="{channels: k}: at sites at least `channels` wide keep every k-th of their "
        "frames (time steps, tokens, patches; after max_frame_rate). A site's cross products cost "
        "channels² per frame, so the FFN sites (4x the model width) cost as much as both models' "
        "FFN forwards; e.g. {2048: 2} halves that. Empty: every frame "
        "(examples/benchmarks/reductions.py measures what it changes)",
    )
    split_half: bool = Field(
        False,
        description="keep the statistics in two halves (alternate batches), solve each, and "
        "report how far the two permutations agree per group (enough data?); costs two more "
        "solves and twice the statistics' memory, so it is off unless asked for",
    )
    stop_agreement: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="stop reading calibration audio once every aligned group's split-half "
        "agreement is at least this at two checks in a row (null: use every clip)",
    )
    check_every: int = Field(32, ge=1, description="clips between two stop_agreement checks")
    pack: bool = Field(
        True,
        description="for encoders with a fixed input window (Whisper: 30 s), lay several clips "
        "end to end in one window (their boundaries kept out of the statistics) instead of "
        "padding each clip to the whole window; batch_size then counts windows",
    )
    precision: Literal["fp32", "bf16", "fp64"] = Field(
        "fp32",
        description="arithmetic of the calibration pass: 'fp32' (sums kept around a shift, so it "
        "places units as the float64 reference does), 'bf16' (forwards under bf16 autocast and "
        "bf16 products: about twice as fast on CPUs and GPUs with bf16 units, but it places a "
        "few percent of units differently), 'fp64' (the reference)",
    )

    @field_validator("wide_site_stride")
    @classmethod
    def _strides(cls, v: dict[int, int]) -> dict[int, int]:
        bad = {c: k for c, k in v.items() if c < 1 or k < 1}
        if bad:
            raise ValueError(f"channels and strides must be positive integers, got {bad}")
        return v


class Learn(_Strict):
    """Settings of ``method: learned``: the transforms of another method optimised end to end
    through the merged model on calibration data (:mod:`graphperm.learn`)."""

    start: str = Field(
        "hybrid",
        description="the alignment method whose transforms learning starts from "
        "('activations', 'hybrid', 'weights')",
    )
    steps: int = Field(200, ge=0, le=100_000, description="gradient steps (0: the start)")
    lr: float = Field(
        0.02,
        gt=0.0,
        le=10.0,
        description="Adam's step size on the permutations' scores (a starting permutation has "
        "score 1 on its entries) and the rotations' angles",
    )
    schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="the step size over the steps: 'constant' (lr throughout) or 'cosine' "
        "(from lr down to 0 at the last step, so the transforms settle)",
    )
    estimator: Literal["scores", "weights"] = Field(
        "scores",
        description="how gradients reach the permutations: 'scores' (a score matrix per part, "
        "its assignment in the forward pass, straight through) or 'weights' (git re-basin: "
        "proxy weights for B′, the permutation that weight-matches B to them in the forward "
        "pass, straight through)",
    )
    proxy: Literal["start", "a"] = Field(
        "start",
        description="where estimator 'weights' starts its proxy weights: 'start' (B under "
        "the starting transforms, so learning begins where learn.start left off) or 'a' (A's "
        "weights, as git re-basin does: the first step's assignment weight-matches B to A, "
        "whatever the start; the starting transforms still compete on held-out data)",
    )
    objective: Literal["outputs", "sites", "next_token"] = Field(
        "outputs",
        description="'outputs' (no labels): the merged model's outputs should be the parents' "
        "outputs interpolated in A's basis, at weights drawn around weight_a; 'sites': the "
        "same, and also the activations at every site the alignment measures (each layer "
        "gets its own signal); 'next_token' (causal language models with their head): the "
        "merged model's own loss on the calibration text, each token given those before it "
        "(no labels either); a user's own loss goes through the Python API "
        "(graphperm.learn.learn_alignment(loss_fn=...))",
    )
    items: int = Field(
        32, ge=2, description="calibration items kept in memory for learning (the first ones)"
    )
    holdout: float = Field(
        0.25,
        gt=0.0,
        lt=1.0,
        description="fraction of those batches held out; the transforms that do best there "
        "(the starting ones included) are kept",
    )
    spread: float = Field(
        0.1, ge=0.0, le=0.5, description="each step draws A's weight from weight_a ± spread"
    )
    eval_every: int = Field(10, ge=1, description="steps between two held-out evaluations")
    budget: float | None = Field(
        None,
        gt=0.0,
        description="cap on learning's cost, as a multiple of the calibration's forward passes "
        "(items × models), in floating-point operations (matrix products and convolutions) "
        "counted as learning runs them: the parents' reference outputs, the evaluations, and "
        "each step with its transforms of B's weights and its backward pass (the first step is "
        "counted, the others cost the same); steps beyond the cap are not run (null: `steps` "
        "alone). Counted, not timed, so the result stays deterministic",
    )
    seed: int = Field(0, description="seed of the batch and weight draws")


class ZipIt(_Strict):
    """Settings of ``transform: zip`` (ZipIt!, Stoica et al. 2024; the paper code's
    ``--zipit_a``/``--zipit_b``)."""

    alpha: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="repeat-match decay: a merged unit's correlations are multiplied by this "
        "(0: a merged unit is never matched again with either member's model)",
    )
    beta: float = Field(
        0.125,
        ge=0.0,
        le=1.0,
        description="share of each model's merges that may pair two of its own units",
    )
    items: int = Field(
        8,
        ge=1,
        description="calibration items (the first ones) on which each model's merged-then-"
        "unmerged output is compared with its own, for the report",
    )


class Repair(_Strict):
    """REPAIR (Jordan et al. 2023) after merging: each aligned hidden unit's mean and standard
    deviation before its nonlinearity reset to its parents' interpolated ones, folded into the
    weights of the layer that writes it (:mod:`graphperm.learn.repair`). Not an exact
    transform; the report says how far the statistics moved."""

    enabled: bool = Field(False, description="apply REPAIR after interpolating")
    passes: int = Field(
        2, ge=1, le=20, description="measure-and-correct passes (later layers see earlier fixes)"
    )
    items: int = Field(32, ge=1, description="calibration items it measures on (the first ones)")


class Policy(_Strict):
    """A merge recipe (see ``specs/`` for the paper's Table I)."""

    version: Literal[1] = 1
    description: str = ""
    scope: Literal["whole", "encoder"] | None = Field(
        None,
        description="encoder–decoder models (Whisper, T5, BART) only: 'whole' = encoder, "
        "decoder and head traced, aligned and merged as one graph (cross-attention couples "
        "the encoder's output stream to the decoder's keys and values); 'encoder' = the "
        "encoder alone (its outputs keep their order; the decoder is interpolated plainly). "
        "null: as the model was loaded (graphperm commands: --scope, default whole)",
    )
    align: list[AlignRule] = Field(default_factory=list)
    method: str = Field(
        "activations",
        description="alignment method (`graphperm.solve.METHODS`): 'activations' = correlation "
        "of activations on calibration data + linear assignment (the paper)",
    )
    tie_margin: float = Field(
        1e-3,
        ge=0.0,
        description="units whose matched correlation is not ahead of every other candidate by "
        "this much (dead or duplicated units) are matched on their weights; 0: never",
    )
    consensus_rounds: int = Field(
        0,
        ge=0,
        le=100,
        description="three or more models: after each is aligned against A, this many rounds "
        "re-align each model to the weighted average of the others (git re-basin's MergeMany; "
        "A stays fixed). With a correlation method it needs the statistics of every pair of "
        "models (memory grows with the square of their number); 0: off",
    )
    weight_a: float = Field(0.9, ge=0.0, le=1.0, description="interpolation weight of model A")
    model_weights: list[float] | None = Field(
        None,
        description="interpolation weights of every model, A first (they sum to 1); for two "
        "models the same as weight_a. null: weight_a for A, the rest shared equally",
    )
    weights: list[WeightOverride] = Field(default_factory=list)
    combine: Combine = Field(
        default_factory=Combine,
        description="how the aligned models are combined with those weights: a name "
        "(interpolate, ties, dare) or its settings",
    )
    calibration: Calibration = Field(default_factory=Calibration)
    learn: Learn = Field(
        default_factory=Learn, description="settings of method: learned (ignored otherwise)"
    )
    zipit: ZipIt = Field(
        default_factory=ZipIt, description="settings of transform: zip (ignored otherwise)"
    )
    repair: Repair = Field(
        default_factory=Repair,
        description="REPAIR after interpolating (`repair: true` or its settings); needs --calib",
    )

    @field_validator("repair", mode="before")
    @classmethod
    def _repair_switch(cls, v: object) -> object:
        return {"enabled": v} if isinstance(v, bool) else v

    verify: bool = Field(True, description="check that the permuted B computes what B computed")

    @field_validator("model_weights")
    @classmethod
    def _sum_to_one(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if len(v) < 2 or any(not 0.0 <= w <= 1.0 for w in v):
            raise ValueError("give one weight in [0, 1] per model, at least two")
        if not math.isclose(sum(v), 1.0, abs_tol=1e-6):
            raise ValueError(f"the weights must sum to 1 (they sum to {sum(v):g})")
        return v

    def with_weights(self, weights: list[float]) -> Policy:
        """This policy with ``model_weights`` (and ``weight_a``) set to ``weights``."""
        return self.model_copy(update={"model_weights": list(weights), "weight_a": weights[0]})

    def weight_for(self, key: str) -> float:
        """Weight of A for state-dict ``key``: the last matching override, else ``weight_a``."""
        from fnmatch import fnmatchcase

        w = self.model_weights[0] if self.model_weights else self.weight_a
        for o in self.weights:
            if any(fnmatchcase(key, g) for g in o.modules):
                w = o.weight_a
        return w

    def weights_for(self, key: str, models: int = 2) -> list[float]:
        """Weights of every model for state-dict ``key``: A's from :meth:`weight_for`, the
        rest of 1 shared as ``model_weights`` shares it (equally when it is not given).

        Example:
            >>> Policy(model_weights=[0.5, 0.25, 0.25]).weights_for("x", 3)
            [0.5, 0.25, 0.25]
        """
        return self._share(self.weight_for(key), models)

    def base_weights(self, models: int = 2) -> list[float]:
        """Weights of every model before per-module overrides."""
        w = self.model_weights[0] if self.model_weights else self.weight_a
        return self._share(w, models)

    def _share(self, w: float, models: int) -> list[float]:
        if self.model_weights is not None:
            if len(self.model_weights) != models:
                raise ValueError(
                    f"model_weights has {len(self.model_weights)} weights for {models} models"
                )
            rest = self.model_weights[1:]
            total = sum(rest)
            shares = [r / total for r in rest] if total > 0 else [1 / (models - 1)] * (models - 1)
        else:
            shares = [1 / (models - 1)] * (models - 1)
        return [w, *((1.0 - w) * s for s in shares)]
