"""From a policy and a model's groups to a plan: which part of which group is aligned where.

Example:
    >>> from graphperm.trace import load_model, trace
    >>> from graphperm.analysis import analyse
    >>> from graphperm.policy import load_policy
    >>> plan = resolve(load_policy("paper"), analyse(trace(load_model("builtin:hubert-tiny"))))
    >>> sorted({t.kind for t in plan.targets})
    ['attn', 'conv', 'ffn']
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from graphperm.analysis import Analysis, PermutationGroup, Site
from graphperm.errors import PolicyError
from graphperm.policy.model import Policy

log = logging.getLogger(__name__)

__all__ = ["Plan", "Target", "resolve"]

#: The paper's measurement points, per kind and part.
AUTO_SITE = {"conv": "pre", "ffn": "post", "residual": "post", "other": "pre"}
AUTO_PART_SITE = {"heads": "post", "vo": "post", "qk": "pre"}


@dataclass(frozen=True)
class Target:
    """One part of one group to align, measured at ``sites``."""

    group: str
    kind: str
    part: str
    role: str  # pre | post
    sites: tuple[Site, ...]
    transform: str = "perm"  # perm | orth (only where the part's family allows it) | zip


@dataclass
class Plan:
    """The resolved policy: targets per group, and what could not be measured."""

    policy: Policy
    targets: list[Target] = field(default_factory=list)
    unmeasured: list[str] = field(default_factory=list)
    rotated: set[tuple[str, str]] = field(default_factory=set)  # (group, part) to rotate
    zipped: set[tuple[str, str]] = field(default_factory=set)  # (group, part) to zip (ZipIt!)

    def by_group(self) -> dict[str, dict[str, Target]]:
        out: dict[str, dict[str, Target]] = {}
        for t in self.targets:
            out.setdefault(t.group, {})[t.part] = t
        return out

    def sites(self) -> list[Site]:
        """Every distinct site to collect statistics at."""
        seen: dict[tuple[str, int], Site] = {}
        for t in self.targets:
            for s in t.sites:
                seen.setdefault((s.key, s.dim), s)
        return list(seen.values())

    def to_dict(self) -> dict:
        return {
            "policy": self.policy.model_dump(mode="json"),
            "aligned": [
                {
                    "group": t.group,
                    "kind": t.kind,
                    "part": t.part,
                    "role": t.role,
                    **({"transform": t.transform} if t.transform != "perm" else {}),
                    "measured_at": sorted({s.module for s in t.sites}),
                }
                for t in self.targets
            ],
            "unmeasured": self.unmeasured,
        }


def _zippable(analysis: Analysis, group: PermutationGroup, part: str) -> bool:
    """Whether ZipIt! can act on ``part``: a free part always; a part inside blocks (channels of
    a head, channels of a residual stream cut into blocks) only where its family is ``orth``,
    i.e. where every tensor it lives in selects the block's matrix by an index it holds."""
    outer = next((p.outer for p in group.parts if p.name == part), None)
    return outer is None or analysis.symmetry(group.name, part).family == "orth"


def resolve(policy: Policy, analysis: Analysis, *, where: str = "policy") -> Plan:
    """Match the policy's ``align`` rules against ``analysis``'s groups."""
    plan = Plan(policy)
    chosen: dict[tuple[str, str], tuple[str, str]] = {}  # (group, part) -> (role, at)
    orth: set[tuple[str, str]] = set()
    zipped: set[tuple[str, str]] = set()
    names = [g.name for g in analysis.groups]
    for i, rule in enumerate(policy.align):
        matched = [
            g
            for g in analysis.groups
            if (rule.kind is None or g.kind == rule.kind)
            and any(fnmatchcase(g.name, pat) for pat in rule.groups)
        ]
        if not matched:
            raise PolicyError(f"{where}: align[{i}] selects no group{_hint(rule, names, analysis)}")
        for g in matched:
            parts = [p.name for p in g.parts]
            wanted = parts if rule.parts is None else [p for p in parts if p in rule.parts]
            outers = {p.outer for p in g.parts if p.outer}
            for part in wanted:
                chosen[(g.name, part)] = (_role(rule.role, g.kind, part), rule.at)
                rotate = rule.transform == "orth"
                if rotate and analysis.symmetry(g.name, part).family == "orth":
                    orth.add((g.name, part))
                else:
                    orth.discard((g.name, part))
                if rule.transform == "zip" and part not in outers:  # blocks stay permuted
                    if _zippable(analysis, g, part):
                        zipped.add((g.name, part))
                    else:
                        log.warning(
                            "%s/%s is permuted, not zipped: a part inside blocks is zipped "
                            "per block only where every tensor it lives in also holds the "
                            "block's index, as the analysis proves for parts that may rotate",
                            g.name,
                            part,
                        )
                        zipped.discard((g.name, part))
                else:
                    zipped.discard((g.name, part))
    plan.rotated = orth
    groups = {g.name: g for g in analysis.groups}
    for (gname, part), (role, at) in chosen.items():
        g = groups[gname]
        sites = _sites_for(g, part, role, at)
        if not sites:
            plan.unmeasured.append(f"{gname}/{part}")
            continue
        transform = "orth" if (gname, part) in orth else "perm"
        if (gname, part) in zipped:
            transform = "zip"
            plan.zipped.add((gname, part))
        plan.targets.append(Target(gname, g.kind, part, role, tuple(sites), transform))
    order = {n: i for i, n in enumerate(names)}
    plan.targets.sort(key=lambda t: (order[t.group], t.part))
    return plan


def _role(role: str, kind: str, part: str) -> str:
    if role != "auto":
        return role
    return AUTO_PART_SITE.get(part) or AUTO_SITE.get(kind, "pre")


def _sites_for(group: PermutationGroup, part: str, role: str, at: str = "all") -> list[Site]:
    """Sites of ``role`` that measure ``part`` (the other role if none has it), in graph order;
    only the first or the last of them with ``at``."""
    covering = [s for s in group.sites if part in s.part.split(",")]
    sites = [s for s in covering if s.role == role] or covering
    return {"first": sites[:1], "last": sites[-1:]}.get(at, sites)


def _glob(name: str) -> str:
    """``name`` with its layer numbers as ``*`` (``encoder.layer.*.attention``)."""
    return re.sub(r"\d+", "*", name)


def _hint(rule, names: list[str], analysis: Analysis) -> str:
    kinds = sorted({g.kind for g in analysis.groups})
    if rule.kind is not None and rule.kind not in kinds:
        return f": this model has no '{rule.kind}' groups (it has {', '.join(kinds)})"
    of_kind = [g.name for g in analysis.groups if rule.kind is None or g.kind == rule.kind]
    for pat in rule.groups:
        other = sorted({g.kind for g in analysis.groups if fnmatchcase(g.name, pat)})
        if other:  # the glob is right, the kind is not
            return (
                f": '{pat}' matches only {', '.join(other)} groups, not {rule.kind} ones; "
                f"change the kind or the glob (e.g. '{_glob(of_kind[0])}')"
                if of_kind
                else ""
            )
    candidates = sorted(set(of_kind) | {_glob(n) for n in of_kind})
    for pat in rule.groups:
        close = difflib.get_close_matches(pat, candidates, n=1, cutoff=0.5)
        if close and close[0] != pat:
            return f": '{pat}' matches no group name (did you mean '{close[0]}'?)"
    return f": check the group names with `graphperm trace` (e.g. '{names[0]}')" if names else ""
