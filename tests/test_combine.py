"""Combinations after alignment: TIES, DARE and task arithmetic checked by hand on small tensors,
the default unchanged to the bit, and every bad setting refused."""

from __future__ import annotations

import pytest
import torch

from graphperm.errors import PolicyError
from graphperm.merge import interpolate
from graphperm.merge.combine import (
    combine,
    drop_and_rescale,
    get_combination,
    magnitude_threshold,
    tensor_generator,
)
from graphperm.policy import Combine, load_policy

F64 = torch.float64


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=F64)


def test_magnitude_threshold_is_torch_quantile_of_the_magnitudes() -> None:
    x = torch.randn(101, generator=torch.Generator().manual_seed(0), dtype=F64)
    for q in (0.0, 0.2, 0.5, 0.8, 0.97, 1.0):
        assert torch.equal(magnitude_threshold(x, q), torch.quantile(x.abs(), q))


def test_ties_after_alignment_keeps_a_where_trimmed_or_signs_disagree() -> None:
    a = t(1.0, -2.0, 3.0, 0.5, -1.0)
    b = t(3.0, 2.0, 3.5, 4.5, -1.1)
    # |b - a| = 2, 4, 0.5, 4, 0.1; its 0.5 quantile is 2: entries 0, 1, 3 survive the trim;
    # the signs of a and b disagree at entry 1; so only 0 and 3 are averaged (0.75·a + 0.25·b)
    got = get_combination("ties").tensor("w", [a, b], [0.75, 0.25], None, Combine(quantile=0.5))
    assert torch.equal(got, t(1.5, -2.0, 3.0, 1.5, -1.0))


def test_ties_disagree_larger_takes_the_value_of_larger_magnitude() -> None:
    a = t(1.0, -2.0, 3.0, 0.5, -1.0)
    b = t(3.0, 2.0, 3.5, 4.5, -1.1)
    settings = Combine(method="ties", quantile=0.5, disagree="larger")
    got = get_combination("ties").tensor("w", [a, b], [0.75, 0.25], None, settings)
    # entry 1: |2| = |-2|, A's kept; entry 2: trimmed, B's 3.5 larger; entry 4: B's -1.1 larger
    assert torch.equal(got, t(1.5, -2.0, 3.5, 1.5, -1.1))


def test_ties_matches_the_paper_code_rule_on_random_tensors() -> None:
    """The paper code's TIESMerging.merge (maintain_hubert_behavior=True), written out."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(40, 30, generator=g, dtype=F64), torch.randn(40, 30, generator=g, dtype=F64)
    delta = b - a
    mask = (delta.abs() >= torch.quantile(delta.abs(), 0.8)) & (a.sign() == b.sign())
    want = torch.where(mask, 0.9 * a + 0.1 * b, a)
    got = get_combination("ties").tensor("w", [a, b], [0.9, 0.1], None, Combine())
    assert torch.allclose(got, want, rtol=0, atol=1e-15)
    assert 0 < int(mask.sum()) < mask.numel() // 5  # some entries averaged, most kept


def test_ties_on_task_vectors_trims_elects_and_takes_the_disjoint_mean() -> None:
    base = t(0.0, 0.0, 0.0, 0.0)
    x = t(1.0, -4.0, 0.1, 2.0)  # τ_x trimmed at its 0.25 quantile (0.775): drops 0.1
    y = t(3.0, 1.0, -2.0, -0.5)  # τ_y's 0.25 quantile is 0.875: drops -0.5
    settings = Combine(method="ties", quantile=0.25, scale=2.0)
    got = get_combination("ties").tensor("w", [x, y], [0.5, 0.5], base, settings)
    # entry 0: both +, mean 2; entry 1: sum -1.5 elects -, only x agrees: -4; entry 2: only y
    # left: -2; entry 3: only x left: 2; then times the scale 2
    assert torch.equal(got, t(4.0, -8.0, -4.0, 4.0))


def test_dare_drops_with_the_seeded_mask_and_rescales() -> None:
    delta = torch.arange(1.0, 1001.0, dtype=F64)
    got = drop_and_rescale(delta, 0.75, tensor_generator(3, "w", 1))
    keep = torch.rand(1000, generator=tensor_generator(3, "w", 1), dtype=F64) >= 0.75
    assert torch.equal(got, torch.where(keep, delta * 4.0, 0.0))
    assert 0.2 < keep.double().mean() < 0.3
    again = drop_and_rescale(delta, 0.75, tensor_generator(3, "w", 1))
    other = drop_and_rescale(delta, 0.75, tensor_generator(4, "w", 1))
    assert torch.equal(got, again) and not torch.equal(got, other)


def test_dare_after_alignment_adds_the_dropped_differences_to_a() -> None:
    a, b = t(1.0, 2.0, 3.0, 4.0), t(3.0, 2.0, 1.0, 0.0)
    settings = Combine(method="dare", drop=0.5, seed=7)
    got = get_combination("dare").tensor("w", [a, b], [0.8, 0.2], None, settings)
    keep = torch.rand(4, generator=tensor_generator(7, "w", 1), dtype=F64) >= 0.5
    assert torch.equal(got, a + 0.2 * torch.where(keep, (b - a) * 2.0, 0.0))


def test_task_arithmetic_of_one_model_at_scale_one_is_that_model() -> None:
    g = torch.Generator().manual_seed(2)
    base = {"w": torch.randn(8, 8, generator=g), "n": torch.tensor(3)}
    model = {"w": base["w"] + 0.01 * torch.randn(8, 8, generator=g), "n": torch.tensor(3)}
    for name in ("interpolate", "ties", "dare"):
        settings = Combine(method=name, quantile=0.0, drop=0.0)
        got = combine([model], lambda k: [1.0], settings, base=base)
        assert torch.equal(got["w"], model["w"]), name


def test_default_combination_is_interpolate_to_the_bit() -> None:
    g = torch.Generator().manual_seed(3)
    states = [{"w": torch.randn(5, 7, generator=g)} for _ in range(3)]
    weights = lambda k: [0.5, 0.3, 0.2]  # noqa: E731
    want = interpolate(states, weights)["w"]
    assert torch.equal(combine(states, weights)["w"], want)
    zero_drop = combine(states, weights, Combine(method="dare", drop=0.0))["w"]
    assert torch.allclose(zero_drop, want, atol=1e-6)


def test_tied_tensors_are_combined_once_in_place() -> None:
    shared = torch.tensor([1.0, -1.0])
    a = {"emb": shared, "head": shared}
    b = {"emb": torch.tensor([3.0, 1.0]), "head": torch.tensor([3.0, 1.0])}
    out = combine([a, b], lambda k: [0.5, 0.5], Combine(method="ties", quantile=0.0), inplace=True)
    assert torch.equal(out["emb"], torch.tensor([2.0, -1.0]))
    assert torch.equal(out["head"], torch.tensor([2.0, -1.0]))


@pytest.mark.parametrize(
    ("combine_", "needle"),
    [
        ({"method": "ties", "quantile": 1.5}, "combine.quantile"),
        ({"method": "dare", "drop": 1.0}, "combine.drop"),
        ({"method": "dare", "drop": -0.1}, "combine.drop"),
        ({"scale": 0.0}, "combine.scale"),
        ({"scale": 9.0}, "combine.scale"),
        ({"method": "ties", "q": 0.5}, "combine.q"),
    ],
)
def test_settings_out_of_range_are_one_line_policy_errors(combine_: dict, needle: str) -> None:
    with pytest.raises(PolicyError, match=needle) as err:
        load_policy({"combine": combine_})
    assert "\n" not in str(err.value)


def test_unknown_combination_suggests_the_closest() -> None:
    with pytest.raises(PolicyError, match="did you mean 'ties'"):
        get_combination("tie")


def test_scale_without_a_base_is_refused() -> None:
    states = [{"w": torch.ones(2)}, {"w": torch.zeros(2)}]
    with pytest.raises(PolicyError, match="needs a base model"):
        combine(states, lambda k: [0.5, 0.5], Combine(method="dare", scale=2.0))


def test_merge_with_ties_policy_applies_the_rule_to_every_tensor() -> None:
    from graphperm.merge import align, merge_models
    from graphperm.trace import load_model

    a, b = load_model("builtin:hubert-tiny"), load_model("builtin:hubert-tiny", seed=1)
    policy = load_policy("linear").model_copy(update={"combine": Combine(method="ties")})
    result = merge_models(align(a, b, policy), a, b, weight_a=0.9)
    key = "encoder.layers.0.feed_forward.output_dense.weight"
    wa, wb = a.state_dict()[key].double(), b.state_dict()[key].double()
    mask = ((wb - wa).abs() >= torch.quantile((wb - wa).abs(), 0.8)) & (wa.sign() == wb.sign())
    mean = (wa * 0.9).add_(wb, alpha=1.0 - 0.9)  # interpolate's order of operations
    want = torch.where(mask, mean, wa).float()
    assert torch.equal(result.state[key], want)
    assert not torch.equal(want, mean.float())  # the rule changed something
