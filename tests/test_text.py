"""Text calibration: the model's tokenizer, fixed-length batches, padding never counted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graphperm.errors import CalibrationError
from graphperm.inputs import adapter_for
from graphperm.merge import align, merge_models
from graphperm.merge.pipeline import prepare
from graphperm.policy import load_policy
from graphperm.stats import calibrate
from graphperm.trace import load_model
from tests.helpers import graphperm_cli
from tests.textmodels import save_tiny_bert, words_of

DATA = Path(__file__).parent / "data"
TEXT = DATA / "text.txt"


@pytest.fixture(scope="module")
def berts(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("berts")
    words = words_of(TEXT)
    return save_tiny_bert(root / "a", words, seed=0), save_tiny_bert(root / "b", words, seed=1)


def _policy(max_tokens: int, batch_size: int):
    policy = load_policy("fnn-attn").model_dump()
    policy["calibration"].update(
        max_tokens=max_tokens, batch_size=batch_size, num_clips=None, split_half=False
    )
    policy["calibration"]["precision"] = "fp64"
    return load_policy(policy)


def _raw(models, policy, source: Path) -> dict:
    """Uncentred totals per site: count, Σx per model, Σ x_A x_Bᵀ."""
    adapter, analysis, plan = prepare(models[0], policy)
    stats, _ = calibrate(analysis, plan, models, adapter, [source], device="cpu")
    out = {}
    for key in stats.site_keys():
        s = stats.site(key)
        raw_sum = s.sums + s.n * s.shift
        (i, j), cross = s.pairs[0], s.cross[0].double()
        raw_cross = (
            cross
            + torch.outer(s.shift[i], s.sums[j])
            + torch.outer(s.sums[i], s.shift[j])
            + s.n * torch.outer(s.shift[i], s.shift[j])
        )
        out[key] = (s.n, raw_sum, raw_cross)
    return out


def _tokens(folder: Path, text: str) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(folder)(text)["input_ids"])


def test_padding_never_enters_a_statistic(berts, tmp_path) -> None:
    """short alone at its own length + long alone at its own length == both in one batch,
    padded to 32 tokens (and a padding row): counts, sums and cross sums."""
    a, b = berts
    models = [load_model(a), load_model(b)]
    short, long = "the cat sat on the mat", "a dog ran far away from the big house"
    files = {}
    for name, lines in {"short": [short], "long": [long], "both": [short, long]}.items():
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text("\n".join(lines) + "\n")
    alone_short = _raw(models, _policy(_tokens(a, short), 1), files["short"])
    alone_long = _raw(models, _policy(_tokens(a, long), 1), files["long"])
    padded = _raw(models, _policy(32, 3), files["both"])
    assert padded.keys() == alone_short.keys() and padded
    for key, (n, total, cross) in padded.items():
        n1, s1, c1 = alone_short[key]
        n2, s2, c2 = alone_long[key]
        assert n == n1 + n2, key
        torch.testing.assert_close(total, s1 + s2, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(cross, c1 + c2, rtol=1e-6, atol=1e-6)
    # the per-token sites really count tokens only: the short text has fewer than 32
    assert max(n for n, _, _ in padded.values()) == _tokens(a, short) + _tokens(a, long)


def test_batches_carry_the_attention_mask(berts) -> None:
    a, _ = berts
    policy = _policy(16, 4)
    adapter = adapter_for(load_model(a), policy.calibration)
    data = adapter.calibration([DATA / "text.jsonl"])
    (batch,) = list(data.batches(4))
    assert set(batch.inputs) == {"input_ids", "attention_mask"}
    assert batch.inputs["input_ids"].shape == (4, 16) and batch.items == 2
    assert batch.mask[2:].sum() == 0 and batch.mask[:2].sum() == 8 + 9  # [CLS] words [SEP]
    torch.testing.assert_close(batch.mask[:2].long(), batch.inputs["attention_mask"][:2])


def test_merging_two_berts_on_text(berts, tmp_path) -> None:
    a, b = berts
    ma, mb = load_model(a), load_model(b)
    policy = _policy(16, 2).model_dump()
    result = merge_models(align(ma, mb, policy, [TEXT]), ma, mb, weight_a=0.5)
    assert result.check is not None and result.check.ok
    assert result.alignment.calibration["texts"] == 12
    assert result.alignment.calibration["tokens"] > 12 * 4


def test_no_tokenizer_is_one_clear_error(tmp_path) -> None:
    folder = save_tiny_bert(tmp_path / "m", ["x"], tokenizer=False)
    adapter = adapter_for(load_model(folder), load_policy("paper").calibration)
    with pytest.raises(CalibrationError, match="has no tokenizer"):
        adapter.calibration([TEXT])


cli = graphperm_cli


def _bad(args: list[str], needle: str, out: Path) -> None:
    proc = cli("merge", *args, "--out", str(out))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("graphperm: error: ") and needle in last, proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_cli_text_for_an_audio_model(tmp_path) -> None:
    _bad(
        [
            "builtin:hubert-tiny",
            "builtin:hubert-tiny",
            "--random-init",
            "--calib",
            str(TEXT),
        ],
        "is a text file, but HubertModel reads audio",
        tmp_path / "o",
    )


def test_cli_builtin_bert_has_no_tokenizer(tmp_path) -> None:
    _bad(
        [
            "builtin:bert-tiny",
            "builtin:bert-tiny",
            "--random-init",
            "--calib",
            str(TEXT),
            "--policy",
            "fnn-attn",
        ],
        "has no tokenizer",
        tmp_path / "o",
    )


def test_cli_merges_two_berts(berts, tmp_path) -> None:
    a, b = berts
    out = tmp_path / "m"
    proc = cli(
        "merge",
        str(a),
        str(b),
        "--calib",
        str(TEXT),
        "--policy",
        "fnn-attn",
        "--out",
        str(out),
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").is_file() and (out / "permutations.safetensors").is_file()


def test_key_mask_is_the_padding_over_the_keys(berts) -> None:
    """``calibration.attention_mask: keys``: the same batches with the mask as an additive
    (batch, 1, 1, tokens) mask over the keys; the model computes the same on every real token."""
    a, _ = berts
    policy = _policy(16, 4)
    keys = policy.model_copy(
        update={"calibration": policy.calibration.model_copy(update={"attention_mask": "keys"})}
    )
    model = load_model(a)
    (plain,) = list(adapter_for(model, policy.calibration).calibration([TEXT]).batches(4))[:1]
    (keyed,) = list(adapter_for(model, keys.calibration).calibration([TEXT]).batches(4))[:1]
    mask = keyed.inputs["attention_mask"]
    assert mask.shape == (4, 1, 1, 16) and mask.dtype == torch.float32
    assert torch.equal(mask[:, 0, 0] == 0, plain.inputs["attention_mask"].bool())
    assert torch.equal(keyed.mask, plain.mask) and torch.equal(
        keyed.inputs["input_ids"], plain.inputs["input_ids"]
    )
    with torch.no_grad():
        want = model.module(**plain.inputs).last_hidden_state[plain.mask]
        got = model.module(**keyed.inputs).last_hidden_state[keyed.mask]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    example = adapter_for(model, keys.calibration).example(2)
    assert example["attention_mask"].shape == (2, 1, 1, 16)


def test_key_mask_is_refused_where_the_mask_is_more_than_padding() -> None:
    """A causal model's mask hides later tokens: a mask over the keys alone would not."""
    from graphperm.policy.model import Calibration

    adapter = adapter_for(load_model("builtin:zoo/gpt2"), Calibration(attention_mask="keys"))
    with pytest.raises(CalibrationError, match=r"attention_mask 'keys' changes what .*'padding'"):
        adapter.example(1)
