"""examples/table1's probe statistics: McNemar, the paired bootstrap, Benjamini–Hochberg."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "table1"))
probe = pytest.importorskip("probe")


def test_benjamini_hochberg_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04, 0.2 -> ×4/rank 0.04, 0.06, 0.0533, 0.2 -> running min from the top
    q = probe.benjamini_hochberg([0.01, 0.04, 0.03, 0.2])
    assert q == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])
    assert probe.benjamini_hochberg([0.9, 0.8]) == pytest.approx([0.9, 0.9])


def _pair(both: int, neither: int, only_a: int, only_b: int) -> tuple[list[int], list[int]]:
    a = [1] * both + [0] * neither + [1] * only_a + [0] * only_b
    b = [1] * both + [0] * neither + [0] * only_a + [1] * only_b
    return a, b


def test_paired_bootstrap_agrees_with_mcnemar_on_its_scale() -> None:
    a, b = _pair(250, 100, 35, 15)  # McNemar: binomial test of 35 of 50, p = 0.0066
    p_boot, p_mc = probe.paired_bootstrap(a, b), probe.mcnemar(a, b)
    assert p_mc == pytest.approx(0.0066, abs=5e-4)
    assert p_boot < 0.02 and abs(p_boot - p_mc) < 0.01
    a, b = _pair(250, 100, 22, 18)  # a small difference: neither test calls it
    assert probe.paired_bootstrap(a, b) > 0.4 and probe.mcnemar(a, b) > 0.4
    assert probe.paired_bootstrap(a, a) == 1.0
