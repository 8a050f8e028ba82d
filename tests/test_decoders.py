"""Causal language models as a user saves them: KV cache on in the config, a tokenizer without
a pad token. graphperm runs them without the cache, calibrates on text with padding masked, and
saves the merged model with its own config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from graphperm.analysis import analyse
from graphperm.apply import verify
from graphperm.inputs import adapter_for
from graphperm.output import write_model
from graphperm.policy import SPECS, load_policy
from graphperm.trace import load_model, trace
from tests.helpers import graphperm_cli
from tests.textmodels import save_tiny_llama, words_of

DATA = Path(__file__).parent / "data"
TEXT = DATA / "text.txt"


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llama") / "a", words_of(TEXT))


def test_a_saved_causal_lm_with_its_cache_on_traces_and_verifies(llama) -> None:
    loaded = load_model(llama)
    assert json.loads((llama / "config.json").read_text())["use_cache"] is True
    assert loaded.config.use_cache is False  # what graphperm runs it with
    a = analyse(trace(loaded))
    counts = a.counts()
    assert counts["attn"] == 2 and counts["ffn"] == 2 and counts["residual"] == 1, counts
    attn = a.group(next(g.name for g in a.groups if g.kind == "attn"))
    # GQA: 2 key/value heads, each shared by 2 query heads; rotary qk channels stay in place
    assert [(p.name, p.size) for p in attn.parts] == [("heads0", 2), ("heads1", 2), ("vo", 8)]
    for seed in (0, 1, 2):
        assert verify(a, seed=seed).ok


def test_the_merged_model_is_saved_with_its_own_config(llama, tmp_path) -> None:
    loaded = load_model(llama)
    write_model(tmp_path, loaded, loaded.state_dict())
    assert json.loads((tmp_path / "config.json").read_text())["use_cache"] is True
    assert loaded.config.use_cache is False  # and graphperm still runs it without the cache


def test_text_calibration_pads_after_the_text_with_eos_and_masks_it(llama) -> None:
    policy = load_policy("fnn-attn").model_dump()
    policy["calibration"].update(max_tokens=12, batch_size=4, num_clips=None)
    adapter = adapter_for(load_model(llama), load_policy(policy).calibration)
    tok = adapter.tokenizer()
    assert tok.pad_token == "</s>" and tok.padding_side == "right"
    texts = ["the", "a b c d e f g h i j k l m n o p"]
    batch = adapter.batch(tok, texts, 4)
    ids, mask = batch.inputs["input_ids"], batch.mask
    assert ids.shape == (4, 12) and batch.items == 2
    assert mask[0].tolist() == [True] + [False] * 11  # one word, then padding, masked
    assert mask[1].all() and not mask[2:].any()
    assert (ids[0, 1:] == tok.pad_token_id).all()
    assert torch.equal(batch.inputs["attention_mask"][:2].bool(), mask[:2])


def test_merging_two_causal_lms_on_text(llama, tmp_path) -> None:
    b = save_tiny_llama(tmp_path / "b", words_of(TEXT), seed=1)
    out = tmp_path / "m"
    proc = graphperm_cli(
        "merge", str(llama), str(b), "--calib", str(TEXT), "--policy", "fnn-attn",
        "--out", str(out), "-q",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
    report = json.loads((out / "merge_report.json").read_text())
    assert report["verification"]["ok"], report["verification"]


def test_learned_lm_spec_merges_on_the_models_own_loss(llama, tmp_path) -> None:
    """`specs/learned-lm.yaml` (the merged model's own next-token loss on the text, no labels)
    from the command line, cut to a few steps: it runs, keeps the merge exact where B′ is
    checked, and reports its objective."""
    import yaml

    b = save_tiny_llama(tmp_path / "b", words_of(TEXT), seed=1)
    policy = yaml.safe_load((SPECS / "learned-lm.yaml").read_text())
    policy["learn"] |= {"steps": 4, "items": 8, "eval_every": 2}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(policy))
    out = tmp_path / "m"
    proc = graphperm_cli(
        "merge", str(llama), str(b), "--calib", str(TEXT), "--policy", str(path),
        "--out", str(out), "-q",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "merge_report.json").read_text())
    assert report["verification"]["ok"], report["verification"]
    learn = report["method_report"]["learn"]
    assert learn["objective"] == "next_token" and learn["steps"] == 4
    assert learn["heldout_after"] <= learn["heldout_before"]


def test_audio_calibration_for_a_causal_lm_is_one_line_exit_2(llama, tmp_path) -> None:
    audio = Path(__file__).parents[1] / "graphperm" / "assets" / "demo" / "calib" / "speech"
    out = tmp_path / "o"
    for calib in (audio, next(audio.glob("*.ogg"))):
        proc = graphperm_cli(
            "merge", str(llama), str(llama), "--calib", str(calib), "--policy", "fnn-attn",
            "--out", str(out),
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("graphperm: error: ") and "LlamaForCausalLM reads text" in last, last
        assert not out.exists() or not any(out.iterdir())


def test_a_fused_qkv_projection_measures_the_heads_query_key_channels(caplog) -> None:
    """GPT-2 computes queries, keys and values with one projection (``c_attn``), so the only
    site of the heads' qk channels is that fused output: its query and key segments are what
    measures them. B = A with every attention part permuted is found back exactly, qk too."""
    import copy
    import logging

    from transformers import GPT2Config, GPT2LMHeadModel

    from graphperm.apply import Indexer, Permutation, permute_state, random_permutation
    from graphperm.inputs import ModelBatch
    from graphperm.policy import resolve
    from graphperm.solve import solve
    from graphperm.stats import collect

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=4)
    a = load_model(GPT2LMHeadModel(config))
    ids = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    analysis = analyse(trace(a, {"input_ids": ids}))
    plan = resolve(load_policy({"version": 1, "align": [{"kind": "attn"}]}), analysis)
    indexer = Indexer(analysis)
    every = random_permutation(indexer.shapes(), seed=3)
    secret = Permutation()
    for t in plan.targets:
        secret.set(t.group, t.part, every.get(t.group, t.part))
    assert (secret.get("transformer.h.0.attn", "qk") != torch.arange(8)).any()
    b = copy.deepcopy(a)
    b.module.load_state_dict(permute_state(indexer, a.state_dict(), secret))
    states = [a.state_dict(), b.state_dict()]
    batches = [ModelBatch({"input_ids": ids}, torch.ones(8, 1, dtype=torch.bool), items=8)]
    stats = collect(analysis, plan.sites(), states, iter(batches))
    with caplog.at_level(logging.WARNING, logger="graphperm"):
        perm, _ = solve(plan, analysis, stats)
    assert "left in place" not in caplog.text
    back = permute_state(indexer, states[1], perm)
    for name, want in states[0].items():
        assert torch.allclose(back[name], want, atol=1e-6), name
