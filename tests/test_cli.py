"""The command line: trace and verify, and one clear line with exit code 2 for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from graphperm.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "graphperm", *args], capture_output=True, text=True, timeout=300
    )


def test_trace_table(capsys: pytest.CaptureFixture) -> None:
    assert main(["trace", "builtin:hubert-tiny"]) == 0
    out = capsys.readouterr().out
    assert "encoder.layers.0.attention" in out and "4 heads × (qk 16, vo 16)" in out
    assert "4 blocks × 16" in out and "groups (" in out
    assert "fixed axes" in out and "convolution slides over it" in out


def test_trace_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["trace", "builtin:whisper-tiny", "--scope", "encoder", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    attn = [g for g in data["groups"] if g["kind"] == "attn"]
    assert len(attn) == 2 and attn[0]["heads"] == 4 and attn[0]["size"] == 64
    # the encoder alone: its stream stays fixed, the decoder, which is not traced, reads it
    assert {g["kind"] for g in data["groups"]} == {"conv", "ffn", "attn"}
    for g in data["groups"]:
        assert {"name", "kind", "size"} <= set(g)
    # by default the whole model: the decoder's self- and cross-attention, both streams
    assert main(["trace", "builtin:whisper-tiny", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    kinds = [g["kind"] for g in data["groups"]]
    assert kinds.count("attn") == 4 and kinds.count("residual") == 2


def test_trace_dot_writes_graphviz_and_svg(tmp_path: Path) -> None:
    dot = tmp_path / "pics" / "hubert.dot"
    assert main(["trace", "builtin:hubert-tiny", "--dot", str(dot)]) == 0
    text = dot.read_text()
    assert text.startswith("digraph") and '"g:residual"' in text
    svg = dot.with_suffix(".svg").read_text()
    assert svg.startswith("<svg") and "encoder.layers.1.feed_forward" in svg


def test_verify_exits_zero_when_outputs_agree(capsys: pytest.CaptureFixture) -> None:
    assert main(["verify", "builtin:bert-tiny", "--seed", "3"]) == 0
    assert "OK: outputs agree" in capsys.readouterr().out


def test_verify_exits_one_when_a_rule_is_wrong(monkeypatch, capsys) -> None:
    from graphperm.analysis import rules

    def careless_sdpa(ctx):  # forgets that k's heads are q's heads
        q, k, v, out = ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.out
        ctx.tie(q[-1], k[-1], tag="qk")
        ctx.tie(v[-1], out[-1], tag="vo")
        ctx.tie(q[-2], out[-2])
        ctx.tie(k[-2], v[-2])
        for t in (q, v):
            for d in range(1, 4):
                ctx.tie(t[-d - 1], out[-d - 1])
        ctx.tie(k[0], out[0])
        ctx.free(k[1])

    monkeypatch.setitem(rules.RULES, "aten.scaled_dot_product_attention", careless_sdpa)
    assert main(["verify", "builtin:bert-tiny"]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["trace", "/nonexistent/model"], "is not a model"),
        (["trace", "builtin:hubrt-tiny"], "is not a built-in model"),
        (["verify", "builtin:hubert-tiny", "--inputs", "/nonexistent.safetensors"], "--inputs"),
    ],
)
def test_user_mistakes_get_one_line_and_exit_2(args: list[str], needle: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_folder_without_config_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    proc = run("trace", str(tmp_path))
    assert proc.returncode == 2 and "no config.json" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_without_weights_needs_random_init(tmp_path: Path) -> None:
    from graphperm.trace.builtin import builtin_config

    builtin_config("hubert-tiny").save_pretrained(tmp_path)
    proc = run("trace", str(tmp_path))
    assert proc.returncode == 2 and "--random-init" in proc.stderr
    proc = run("trace", str(tmp_path), "--random-init", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["counts"]["attn"] == 2
