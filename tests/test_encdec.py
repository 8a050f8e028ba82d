"""Whole encoder–decoder models (issue 23 item 3): Whisper, T5 and BART traced as one graph,
encoder, decoder, cross-attention and head, with the decoder's inputs from the config.

Tiny random configs (``graphperm.trace.builtin.ZOO``, modality ``encoder-decoder``) and, when
``../shared`` has it, the real whisper-tiny.en.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from graphperm.analysis import analyse
from graphperm.apply import Indexer, Permutation, permute_state, random_permutation, verify
from graphperm.cli import main
from graphperm.data.synth import write_clips
from graphperm.errors import PolicyError
from graphperm.merge import align, merge_models, prepare
from graphperm.policy import load_policy
from graphperm.trace import example_inputs, load_model, trace
from tests.helpers import shared_path

WHOLE = ["whisper-lm", "t5", "bart"]


def _whole(name: str):
    return load_model(f"builtin:zoo/{name}", scope="whole")


@pytest.mark.parametrize("name", WHOLE)
def test_whole_model_takes_decoder_inputs_from_its_config(name: str) -> None:
    loaded = _whole(name)
    inputs = example_inputs(loaded, batch_size=2)
    start = loaded.config.decoder_start_token_id
    assert inputs["decoder_input_ids"].shape[0] == 2
    assert inputs["decoder_input_ids"][:, 0].tolist() == [start, start]
    if "input_ids" in inputs:  # text: the ids themselves, shifted right (teacher forcing)
        assert torch.equal(inputs["decoder_input_ids"][:, 1:], inputs["input_ids"][:, :-1])


@pytest.mark.parametrize("name", WHOLE)
def test_cross_attention_couples_the_encoder_stream_to_the_decoder(name: str) -> None:
    """The encoder's output stream is no longer pinned: its group reaches the decoder's
    cross-attention key and value projections (by the op rules alone)."""
    analysis = analyse(trace(_whole(name)))
    fixed = {(f.key, f.dim) for f in analysis.fixed}
    cross = [
        (g.name, key)
        for g in analysis.groups
        if g.kind == "residual"
        for key, dim in g.tensors
        if ("encoder_attn" in key or "EncDecAttention" in key)
        and key.endswith(("k_proj.weight", "v_proj.weight", ".k.weight", ".v.weight"))
        and dim == 1
    ]
    assert cross, [(g.name, g.kind) for g in analysis.groups]
    assert not [k for k in fixed if "encoder_attn.k_proj" in k[0] or "EncDecAttention.k" in k[0]]


@pytest.mark.parametrize("name", WHOLE)
def test_random_transforms_of_every_group_leave_the_whole_model_unchanged(name: str) -> None:
    report = verify(analyse(trace(_whole(name))), seed=3)
    assert report.ok, [(o.name, o.max_rel) for o in report.outputs]


def _transformed_copy(a, policy, seed: int = 5):
    _, analysis, plan = prepare(a, policy)
    indexer = Indexer(analysis)
    every = random_permutation(indexer.shapes(), seed=seed)
    secret = Permutation()
    for t in plan.targets:
        secret.set(t.group, t.part, every.get(t.group, t.part))
    decoder = [t.group for t in plan.targets if "decoder" in t.group]
    assert decoder, "the decoder's groups must be aligned too"
    b = copy.deepcopy(a)
    b.module.load_state_dict(permute_state(indexer, a.state_dict(), secret))
    return b


def _distance(result, a) -> float:
    return max(float((result.state[k] - v).abs().max()) for k, v in a.state_dict().items())


@pytest.mark.parametrize("name", WHOLE)
def test_merging_a_with_a_transformed_copy_gives_back_a_data_free(name: str) -> None:
    a = _whole(name)
    policy = load_policy("weights")
    b = _transformed_copy(a, policy)
    assert any(not torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    result = merge_models(align(a, b, policy), a, b, weight_a=0.5)
    assert result.rest is None or not result.rest  # nothing left untraced
    assert _distance(result, a) < 1e-5
    assert result.check is not None and result.check.max_rel < 1e-4


def test_whisper_merge_back_on_audio_calibration(tmp_path) -> None:
    """Activations measured on audio, through encoder and decoder, with the weights' cost beside
    them (``hybrid``: the decoder reads its start token alone, one position per window, too few
    to tell its units apart by correlation alone); every group of the whole model recovered."""
    write_clips(tmp_path, count=16, seconds=1.0)
    a = _whole("whisper-lm")
    policy = load_policy(
        {
            "align": [{}],
            "method": "hybrid",
            "weight_a": 0.5,
            "calibration": {"clip_seconds": 1.0, "num_clips": 16},
        }
    )
    b = _transformed_copy(a, policy)
    result = merge_models(align(a, b, policy, [tmp_path]), a, b, weight_a=0.5)
    assert _distance(result, a) < 1e-5


def test_encoder_scope_keeps_todays_groups() -> None:
    """scope 'encoder' is what graphperm did before whole models: the encoder alone, its
    output stream pinned (no residual group), the decoder untraced."""
    loaded = load_model("builtin:zoo/whisper-lm", scope="encoder")
    assert loaded.partial and loaded.prefix == "model.encoder."
    assert analyse(trace(loaded)).counts() == {"attn": 2, "ffn": 2, "conv": 1}


def test_a_policy_scope_must_fit_the_model() -> None:
    with pytest.raises(PolicyError, match="loaded with scope 'whole'"):
        prepare(_whole("t5"), load_policy({"scope": "encoder", "align": [{}]}))
    with pytest.raises(PolicyError, match="has no decoder"):
        prepare(load_model("builtin:zoo/llama"), load_policy({"scope": "whole", "align": [{}]}))


# ------------------------------------------------------------------------ the command line
def _one_line_exit_2(capsys, args: list[str], out: Path) -> str:
    code = main([*args, "--out", str(out), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert not out.exists()
    return err[0]


def test_scope_on_a_decoder_only_model_is_one_line(tmp_path, capsys) -> None:
    args = ["merge", "builtin:zoo/llama", "builtin:zoo/llama", "--random-init", "--scope", "whole"]
    line = _one_line_exit_2(capsys, args, tmp_path / "m")
    assert "not an encoder–decoder" in line and "--scope" in line


def test_whole_policy_on_a_decoder_only_model_is_one_line(tmp_path, capsys) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("scope: whole\nmethod: weights\nalign: [{}]\n")
    args = ["merge", "builtin:zoo/gpt2", "builtin:zoo/gpt2", "--random-init", "--policy", policy]
    line = _one_line_exit_2(capsys, [str(a) for a in args], tmp_path / "m")
    assert "scope 'whole' is for encoder–decoder models" in line


def test_decoder_only_b_with_an_encoder_decoder_a_is_one_line(tmp_path, capsys) -> None:
    args = ["merge", "builtin:zoo/bart", "builtin:zoo/gpt2", "--random-init", "--policy", "weights"]
    line = _one_line_exit_2(capsys, args, tmp_path / "m")
    assert "differ in architecture" in line


def test_a_causal_lm_with_audio_calibration_is_one_line(tmp_path, capsys) -> None:
    write_clips(tmp_path / "clips", count=2, seconds=1.0)
    args = ["merge", "builtin:zoo/llama", "builtin:zoo/llama", "--random-init"]
    line = _one_line_exit_2(capsys, [*args, "--calib", str(tmp_path / "clips")], tmp_path / "m")
    assert "audio" in line and "reads text" in line


def test_cli_merges_whole_by_default_and_records_the_scope(tmp_path, capsys) -> None:
    import yaml

    args = ["merge", "builtin:zoo/t5", "builtin:zoo/t5", "--random-init", "--policy", "weights"]
    assert main([*args, "--out", str(tmp_path / "m"), "-q"]) == 0
    assert yaml.safe_load((tmp_path / "m" / "policy.yaml").read_text())["scope"] == "whole"
    assert main([*args, "--scope", "encoder", "--out", str(tmp_path / "e"), "-q"]) == 0
    assert yaml.safe_load((tmp_path / "e" / "policy.yaml").read_text())["scope"] == "encoder"


# ------------------------------------------------------------------- the real whisper-tiny.en
@pytest.mark.slow
def test_real_whisper_tiny_whole_merge_back_transcribes_as_a() -> None:
    """B = A under random permutations of every group of encoder and decoder; merged with A at
    0.5 (weight matching) it gives A back, and generates A's tokens on the shared speech."""
    import soundfile as sf
    import transformers as tf

    folder = shared_path("models", "whisper-tiny.en")
    speech = shared_path("data", "audio", "speech", "goforward.flac")
    torch.set_num_threads(2)
    a = load_model(folder, scope="whole")
    policy = load_policy("weights")
    b = _transformed_copy(a, policy)
    result = merge_models(align(a, b, policy), a, b, weight_a=0.5)
    rel = max(
        float((result.state[k] - v).abs().max() / v.abs().max().clamp_min(1e-12))
        for k, v in a.state_dict().items()
    )
    assert rel < 1e-4
    merged = copy.deepcopy(a.model)
    merged.load_state_dict(result.state)
    wave, rate = sf.read(speech, dtype="float32")
    assert rate == 16000
    extractor = tf.WhisperFeatureExtractor(feature_size=a.config.num_mel_bins)
    features = extractor(wave[: 4 * rate], sampling_rate=rate, return_tensors="pt").input_features
    with torch.no_grad():
        want = a.model.generate(input_features=features, max_new_tokens=24)
        got = merged.generate(input_features=features, max_new_tokens=24)
    assert want.shape[1] > 3 and torch.equal(got, want)


def _save_tiny_bart(folder: Path, words: list[str]) -> Path:
    """A ``BartForConditionalGeneration`` with a word-level tokenizer whose special ids are the
    config's (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2)."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = ["<s>", "<pad>", "</s>", "<unk>", *sorted(set(words))]
    config = tf.BartConfig(
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        vocab_size=len(vocab),
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    tf.BartForConditionalGeneration(config).eval().save_pretrained(folder)
    inner = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = tf.PreTrainedTokenizerFast(
        tokenizer_object=inner,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    tok.save_pretrained(folder)
    return folder


def test_bart_merge_back_on_text_calibration_through_the_cli(tmp_path) -> None:
    """Text calibration of a whole BART: the decoder reads the text shifted right (teacher
    forcing); B = A with every group permuted, merged with A by `graphperm merge` on
    activations, gives A's logits back from the written folder."""
    import transformers as tf

    text = Path(__file__).parent / "data" / "text.txt"
    words = text.read_text().replace('"', " ").split()
    pa = _save_tiny_bart(tmp_path / "a", words)
    a = load_model(pa, scope="whole")
    b = _transformed_copy(a, load_policy("all"))
    b.model.save_pretrained(tmp_path / "b")
    args = ["merge", str(pa), str(tmp_path / "b"), "--policy", "all", "--calib", str(text)]
    assert main([*args, "--out", str(tmp_path / "m"), "-q"]) == 0
    merged = tf.BartForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    vocab = a.config.vocab_size
    ids = torch.randint(4, vocab, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = a.model(input_ids=ids, decoder_input_ids=ids).logits
        got = merged(input_ids=ids, decoder_input_ids=ids).logits
    assert float((got - want).abs().max()) / float(want.abs().max()) < 1e-4
