"""The analysis of one traced model: coupling, groups, sites, fixed axes and warnings.

Example:
    >>> from graphperm.trace import load_model, trace
    >>> a = analyse(trace(load_model("builtin:hubert-tiny")))
    >>> a.group("encoder.layers.0.attention").structure
    '4 heads × (qk 16, vo 16)'
"""

from __future__ import annotations

import difflib
import logging
import time
from dataclasses import dataclass, field

from graphperm.analysis.coupling import Coupling, couple
from graphperm.analysis.groups import FixedAxis, PermutationGroup, build_groups
from graphperm.analysis.sites import find_sites
from graphperm.analysis.symmetry import Symmetry, find_symmetries
from graphperm.errors import PolicyError
from graphperm.trace.export import Traced
from graphperm.trace.ties import same_tensor, tied_keys

__all__ = ["Analysis", "analyse"]

log = logging.getLogger(__name__)


@dataclass
class Analysis:
    """Everything graphperm knows about how a model's units may be permuted."""

    traced: Traced
    coupling: Coupling
    groups: list[PermutationGroup]
    fixed: list[FixedAxis]
    deps: dict[int, int]  # inner leaf class -> outer leaf class its permutation is indexed by
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    symmetries: dict[tuple[str, str], Symmetry] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)  # saved tensors the traced forward never reads

    def symmetry(self, group: str, part: str) -> Symmetry:
        """The widest family of exact transforms of one part (see :mod:`.symmetry`)."""
        return self.symmetries.get((group, part), Symmetry("perm", why="not analysed"))

    def families(self) -> dict[str, dict[str, str]]:
        """``group -> part -> "perm" | "orth"`` for every part."""
        return {
            g.name: {p.name: self.symmetry(g.name, p.name).family for p in g.parts}
            for g in self.groups
        }

    def group(self, name: str) -> PermutationGroup:
        """The group called ``name``; a :class:`PolicyError` with suggestions if there is none."""
        for g in self.groups:
            if g.name == name:
                return g
        close = difflib.get_close_matches(name, [g.name for g in self.groups], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PolicyError(f"no group named '{name}'{hint}; `graphperm trace` lists them")

    def counts(self) -> dict[str, int]:
        """Number of groups per kind."""
        out: dict[str, int] = {}
        for g in self.groups:
            out[g.kind] = out.get(g.kind, 0) + 1
        return out

    def to_dict(self) -> dict:
        """A JSON-ready description (what ``graphperm trace --json`` prints)."""
        return {
            "model": self.traced.loaded.source,
            "class": type(self.traced.loaded.module).__name__,
            "inputs": {k: list(v.shape) for k, v in self.traced.inputs.items()},
            "specialised": self.traced.specialised,
            "groups": [
                {
                    "name": g.name,
                    "kind": g.kind,
                    "size": g.size,
                    **({"heads": g.heads} if g.heads else {}),
                    "structure": g.structure,
                    "parts": [
                        {
                            "name": p.name,
                            "size": p.size,
                            **({"per": p.outer} if p.outer else {}),
                            **_family(self.symmetry(g.name, p.name)),
                        }
                        for p in g.parts
                    ],
                    "tensors": [f"{k}:{d}" for k, d in g.tensors],
                    "sites": [
                        {
                            "value": s.key,
                            "dim": s.dim,
                            "module": s.module,
                            "role": s.role,
                            **({"part": s.part} if s.part else {}),
                        }
                        for s in g.sites
                    ],
                }
                for g in self.groups
            ],
            "counts": self.counts(),
            "fixed": [
                {"tensor": f.key, "dim": f.dim, "size": f.size, "reasons": list(f.reasons)}
                for f in self.fixed
            ],
            "warnings": self.warnings,
            "seconds": {"trace": round(self.traced.seconds, 3), "analysis": round(self.seconds, 3)},
        }


def analyse(traced: Traced) -> Analysis:
    """Find the permutation groups of a traced model."""
    start = time.perf_counter()
    coupling = couple(traced.program)
    if traced.loaded.fixed_outputs:
        _pin_outputs(coupling, traced)
    if traced.loaded.partial:
        _pin_shared(coupling, traced)
    groups, fixed, deps = build_groups(coupling)
    groups = [find_sites(coupling, g) for g in groups]
    unused = _unused(coupling, traced)
    warnings = _warnings(coupling, fixed, unused)
    if traced.specialised:
        warnings.insert(
            0,
            f"torch.export could not capture {type(traced.loaded.module).__name__} in general: it "
            "is traced specialised to its example inputs ("
            + ", ".join(f"{k}{tuple(v.shape)}" for k, v in traced.inputs.items())
            + "); the groups hold for inputs like them, and verify checks them on those",
        )
    for w in warnings:
        log.info("%s", w)
    symmetries = find_symmetries(coupling, groups)
    seconds = time.perf_counter() - start
    log.info("analysed %d groups in %.2f s", len(groups), seconds)
    return Analysis(
        traced, coupling, groups, fixed, deps, warnings, seconds, symmetries, unused=unused
    )


def _pin_outputs(coupling: Coupling, traced: Traced) -> None:
    """Every axis of the outputs stays fixed: the untraced rest of the saved model reads them
    (an encoder–decoder's encoder), or they are a task head's (labels, tokens)."""
    loaded = traced.loaded
    if loaded.partial:
        why = (
            f"the rest of {type(loaded.model).__name__}, which is not traced, reads the output "
            f"of '{loaded.prefix.rstrip('.')}'"
        )
    else:
        why = f"it is an axis of {type(loaded.model).__name__}'s output (a task head's units)"
    names = output_names(traced.program)
    for k, name in enumerate(traced.program.graph_signature.user_outputs):
        if not loaded.partial and k < len(names) and "hidden_state" in names[k]:
            continue  # a hidden state beside the head's output (an encoder–decoder's encoder
            # output) moves with its stream, as a bare encoder's does
        if name in coupling.tensors:
            for c in coupling.classes(name):
                coupling.table.fix(c, why)


def output_names(program) -> list[str]:
    """The name of each user output of ``program`` in the model's output structure
    (``"['logits']"``, ``"['encoder_last_hidden_state']"``), in order; [] if unknown."""
    import torch.utils._pytree as pytree

    n = len(program.graph_signature.user_outputs)
    try:
        tree = pytree.tree_unflatten(list(range(n)), program.call_spec.out_spec)
        leaves = pytree.tree_flatten_with_path(tree)[0]
    except Exception:  # an output structure pytree cannot rebuild: every output counts
        return []
    return [pytree.keystr(path) for path, _ in leaves] if len(leaves) == n else []


def _pin_shared(coupling: Coupling, traced: Traced) -> None:
    """The traced module is part of the saved model: a tensor it shares with the untraced rest
    (tied embeddings) keeps every axis fixed."""
    loaded = traced.loaded
    outside = [t for k, t in loaded.model.state_dict().items() if not k.startswith(loaded.prefix)]
    by_target = {target: key for key, target in coupling.state.items()}
    for target, t in loaded.module.state_dict().items():
        key = by_target.get(target)
        if key in coupling.tensors and any(same_tensor(t, o) for o in outside):
            for c in coupling.classes(key):
                coupling.table.fix(
                    c,
                    f"'{target}' is shared with the rest of {type(loaded.model).__name__}, "
                    "which is not traced",
                )


def _family(s: Symmetry) -> dict:
    out: dict = {"family": s.family}
    if s.family == "orth":
        if s.keeps_ones:
            out["keeps_ones"] = True
        if s.folds:
            out["folds"] = len(s.folds)
    elif s.why:
        out["why"] = s.why
    return out


def _unused(coupling: Coupling, traced: Traced) -> list[str]:
    """Saved tensors of the traced module that the traced forward never reads (other names of
    a tensor it reads, tied embeddings, are read)."""
    seen = set(coupling.state.values())
    state = traced.loaded.module.state_dict()
    read = seen - set(coupling.unused)
    ties = tied_keys(state)
    tied = {k for a, f in ties.items() for k in (a, f)}
    out = []
    for key in coupling.unused + [k for k in state if k not in seen]:
        if key in tied and any(k in read and same_tensor(state[k], state[key]) for k in tied):
            continue
        out.append(key)
    return out


def _warnings(coupling: Coupling, fixed: list[FixedAxis], unused: list[str]) -> list[str]:
    out = []
    # ops without a rule that fixed an axis of a saved tensor
    costly = {r for f in fixed for r in f.reasons if r.startswith("no rule for ")}
    for op, nodes in sorted(coupling.unknown.items()):
        if f"no rule for {op}" not in costly:
            continue
        modules = sorted({coupling.module_of.get(n, "") or "<root>" for n in nodes})
        out.append(
            f"no rule for {op} (in {', '.join(modules[:3])}{' ...' if len(modules) > 3 else ''}): "
            "the axes it touches stay fixed; add a rule in graphperm/analysis/rules/"
        )
    for node, why in sorted(coupling.failed.items()):
        out.append(f"the rule for node {node} failed ({why}); its axes stay fixed")
    for key in unused:
        out.append(
            f"'{key}' is not used by the traced forward pass; it is written as it is, unchanged"
        )
    return out
