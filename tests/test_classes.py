"""The axis-class table: ties, block structures, refinement and conflicts."""

from __future__ import annotations

import pytest

from graphperm.analysis.classes import ClassTable, Concat, SizeMismatch


def test_union_merges_and_keeps_fixed_reasons() -> None:
    t = ClassTable()
    a, b = t.new(8), t.new(8)
    t.fix(b, "why")
    t.union(a, b)
    assert t.find(a) == t.find(b)
    assert t.fixed_reasons(a) == ["why"]


def test_union_of_different_sizes_is_refused() -> None:
    t = ClassTable()
    with pytest.raises(SizeMismatch):
        t.union(t.new(4), t.new(5))


def test_equal_products_tie_factor_by_factor() -> None:
    t = ClassTable()
    x, y = t.new(768), t.new(768)
    hx, dx, hy, dy = t.new(12), t.new(64), t.new(12), t.new(64)
    t.product(x, [hx, dx])
    t.product(y, [hy, dy])
    t.union(x, y)
    assert t.find(hx) == t.find(hy) and t.find(dx) == t.find(dy)


def test_nested_products_are_refined() -> None:
    """Blocks of 48 and blocks of 24 on one axis: 16 × 2 × 24."""
    t = ClassTable()
    x, y = t.new(768), t.new(768)
    t.product(x, [t.new(16), t.new(48)])
    t.product(y, [t.new(32), t.new(24)])
    t.union(x, y)
    assert [t.size(f) for f in t.factors(x)] == [16, 2, 24]
    assert not t.fixed_reasons(x)


def test_incompatible_products_fix_the_axis() -> None:
    t = ClassTable()
    x, y = t.new(768), t.new(768)
    y_heads, y_dims = t.new(12), t.new(64)
    t.product(x, [t.new(16), t.new(48)])
    t.product(y, [y_heads, y_dims])
    t.union(x, y)
    assert "clash" in t.fixed_reasons(x)[0]
    # the structure the class does not keep is fixed too: its parts must not float free
    assert t.fixed_reasons(y_heads) and t.fixed_reasons(y_dims)


def test_size_one_factors_are_dropped() -> None:
    t = ClassTable()
    x, g, one = t.new(512), t.new(512), t.new(1)
    t.product(x, [g, one])
    assert t.find(x) == t.find(g)


def test_concats_with_different_cuts_are_refined() -> None:
    t = ClassTable()
    x, y = t.new(10), t.new(10)
    t.concat(x, [t.new(4), t.new(6)])
    t.concat(y, [t.new(4), t.new(2), t.new(4)])
    t.union(x, y)
    d = t.decomp(x)
    assert isinstance(d, Concat) and [t.size(s) for s in d.segments] == [4, 2, 4]


def test_product_against_concat_fixes_the_axis() -> None:
    t = ClassTable()
    x, y = t.new(8), t.new(8)
    t.product(x, [t.new(2), t.new(4)])
    t.concat(y, [t.new(4), t.new(4)])
    t.union(x, y)
    assert t.fixed_reasons(x)
