"""HuBERT base's permutation groups, exactly as the paper's hand-written graph has them."""

from __future__ import annotations

from tests.helpers import analysis_of


def test_hubert_base_groups() -> None:
    analysis = analysis_of("hubert-base")
    by_kind: dict[str, list] = {}
    for g in analysis.groups:
        by_kind.setdefault(g.kind, []).append(g)
    assert sorted(by_kind) == ["attn", "conv", "ffn", "residual"]
    assert [g.size for g in by_kind["conv"]] == [512] * 7
    assert [g.size for g in by_kind["ffn"]] == [3072] * 12
    assert len(by_kind["attn"]) == 12
    for g in by_kind["attn"]:
        assert (g.size, g.heads) == (768, 12)
        assert {(p.name, p.size, p.outer) for p in g.parts} == {
            ("heads", 12, None),
            ("qk", 64, "heads"),
            ("vo", 64, "heads"),
        }
    (residual,) = by_kind["residual"]
    assert residual.size == 768
    assert {(p.name, p.size, p.outer) for p in residual.parts} == {
        ("blocks", 16, None),
        ("channels", 48, "blocks"),
    }
    assert residual.structure == "16 blocks × 48"


def test_hubert_base_names_are_module_paths() -> None:
    names = [g.name for g in analysis_of("hubert-base").groups]
    assert names[:7] == [f"feature_extractor.conv_layers.{i}.conv" for i in range(7)]
    assert "residual" in names
    assert "encoder.layers.11.attention" in names and "encoder.layers.11.feed_forward" in names
    assert len(set(names)) == len(names)


def test_hubert_base_sites_follow_the_paper() -> None:
    """conv 0 after its GroupNorm, other convs after the conv, FFN at W2's input, attention
    before W_O."""
    groups = {g.name: g for g in analysis_of("hubert-base").groups}

    def modules(name: str, role: str) -> list[str]:
        return [s.module for s in groups[name].sites if s.role == role]

    assert modules("feature_extractor.conv_layers.0.conv", "pre") == [
        "feature_extractor.conv_layers.0.layer_norm"
    ]
    assert modules("feature_extractor.conv_layers.3.conv", "pre") == [
        "feature_extractor.conv_layers.3.conv"
    ]
    assert modules("encoder.layers.4.feed_forward", "post") == [
        "encoder.layers.4.feed_forward.output_dense"
    ]
    assert modules("encoder.layers.4.attention", "post") == ["encoder.layers.4.attention.out_proj"]
