"""Where does averaging break? For one pair and method: A everywhere but one block (or one
linear layer) averaged with B′ at 0.5, and that model's held-out loss; and how alike A's and
B's attention patterns are, head by head.

    python examples/barrier/diagnose.py --pair b --method orth-all-first

Writes results/diagnose-{pair}-{method}.json and prints a table. A block whose averaging alone
costs much more than the others' is where the two models have no counterparts for each other
(aligning cannot help there); a block that averages almost for free is already connected.
For pair (a) it also splits the barrier at 0.5 among the three terms of the speech loss
(masked and unmasked frames at the last layer's head, every frame at the conv front-end's).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import barrier  # noqa: E402


def block_of(key: str) -> str:
    """The block a state-dict key belongs to: up to a layer index (``vit.layers.0``), else its
    top-level module (``vit.embeddings``, ``classifier``)."""
    m = re.match(r"(.*?\.\d+)\.", key)
    if m:
        return m.group(1)
    parts = key.split(".")
    return ".".join(parts[:2] if len(parts) > 2 else parts[:1])


def layer_of(key: str) -> str:
    """The module a weight belongs to (``vit.layers.0.attention.q_proj``)."""
    return key.rsplit(".", 1)[0]


def averaged_losses(pair: barrier.Pair, merger: barrier.Merger) -> dict:
    """Held-out loss with every key of one block (or one linear layer) averaged, A elsewhere."""
    a, b = merger.module(1.0), merger.module(0.0)
    sa = {k: v.detach().clone() for k, v in a.state_dict().items()}
    sb = {k: v.detach().clone() for k, v in b.state_dict().items()}
    loss_b = round(pair.loss(b), 4)
    net = copy.deepcopy(a)

    def loss(chosen: set[str]) -> float:
        net.load_state_dict({k: (sa[k] + sb[k]) / 2 if k in chosen else sa[k] for k in sa})
        return round(pair.loss(net), 4)

    blocks: dict[str, set[str]] = {}
    modules: dict[str, set[str]] = {}
    for k in sa:
        blocks.setdefault(block_of(k), set()).add(k)
        modules.setdefault(layer_of(k), set()).add(k)
    # linear layers: the modules with a 2-D weight (averaged with their bias)
    layers = {n: keys for n, keys in modules.items() if any(sa[k].ndim == 2 for k in keys)}
    return {
        "A": loss(set()),
        "B'": loss_b,
        "all averaged": loss(set(sa)),
        "only": {name: loss(keys) for name, keys in blocks.items()},
        "all but": {name: loss(set(sa) - keys) for name, keys in blocks.items()},
        "only layer": {name: loss(keys) for name, keys in layers.items()},
    }


def head_similarity(a: torch.nn.Module, b: torch.nn.Module, batches: list[dict]) -> list[dict]:
    """Per layer, per head of A: the best correlation of its attention maps (over the
    calibration inputs, every query and key position) with any head of B's."""
    out = []
    x = {k: torch.cat([c[k] for c in batches]) for k in batches[0]}  # images, ids or audio
    if "input_values" in x:  # pair (a): the attention lives in the HuBERT inside the heads
        a, b = a.hubert, b.hubert
    a, b = copy.deepcopy(a).eval(), copy.deepcopy(b).eval()
    for m in (a, b):
        m.set_attn_implementation("eager")
    with torch.no_grad():
        maps_a = a(**x, output_attentions=True).attentions
        maps_b = b(**x, output_attentions=True).attentions
    for layer, (pa, pb) in enumerate(zip(maps_a, maps_b, strict=True)):
        fa, fb = (p.transpose(0, 1).flatten(1) for p in (pa, pb))  # (heads, images * q * k)
        fa, fb = (f - f.mean(1, keepdim=True) for f in (fa, fb))
        fa, fb = (f / f.norm(dim=1, keepdim=True) for f in (fa, fb))
        best = (fa @ fb.T).max(1).values
        out.append({"layer": layer, "best_match": [round(float(v), 3) for v in best]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", default="b", choices=sorted(barrier.PAIRS))
    parser.add_argument("--method", default="orth-all-first", choices=list(barrier.METHODS))
    args = parser.parse_args()
    torch.manual_seed(0)
    pair = barrier.PAIRS[args.pair]()
    a, b = pair.load()
    calib = pair.calib()
    task = barrier.speech.SpeechTask() if args.pair.startswith("a") else None
    probe = [{"input_values": task.batches[0][0]}] if task else calib[:8]
    heads = head_similarity(a.module, b.module, probe)
    merger = barrier.METHODS[args.method](a, b, calib)
    result = {"pair": args.pair, "method": args.method, **averaged_losses(pair, merger)}
    result["attention_best_match"] = heads
    if task:  # the loss's terms at both ends and at 0.5, and each term's part of the barrier
        terms = {lam: task.components(merger.module(lam)) for lam in (1.0, 0.5, 0.0)}
        weight = barrier.speech.TERM_WEIGHTS
        result["terms"] = {
            str(lam): {k: round(v, 4) for k, v in t.items()} for lam, t in terms.items()
        }
        result["barrier_by_term"] = {
            k: round(w * (terms[0.5][k] - (terms[1.0][k] + terms[0.0][k]) / 2), 4)
            for k, w in weight.items()
        }
    out = barrier.RESULTS / f"diagnose-{args.pair}-{args.method}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("loss: A", result["A"], "B'", result["B'"], "all averaged", result["all averaged"])
    if "barrier_by_term" in result:
        print("barrier at 0.5 by term of the loss:", result["barrier_by_term"])
    print(f"{'block':28s} {'only it averaged':>17s} {'all but it':>11s}")
    for name, value in result["only"].items():
        print(f"{name:28s} {value:17.3f} {result['all but'][name]:11.3f}")
    for name, value in result["only layer"].items():
        print(f"{name:40s} {value:8.3f}")
    for h in heads:
        print(f"layer {h['layer']}: best match of A's heads in B {h['best_match']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
