"""graphperm's ZipIt! matching against the paper code's ``match_tensors_zipit`` on the same
correlation matrices (offline; their code is read from a local copy, never shipped here):

    python examples/zipit/compare_with_paper.py COPY/s3prl/matching_functions.py

(COPY: a checkout of FabianRitter/speech-ssl-merging, commit aa1885f.)

Only their helpers and ``match_tensors_zipit`` are taken from the file (its other imports,
networkx and ipdb, are not needed). Prints, per case, whether the merge and unmerge matrices
are equal element for element.
"""

from __future__ import annotations

import ast
import contextlib
import io
import sys
from pathlib import Path

import numpy as np
import torch

from graphperm.solve.zipit import zip_match

WANTED = {"remove_col", "compute_correlation", "add_bias_to_mats", "match_tensors_zipit"}


def load_theirs(path: Path) -> dict:
    tree = ast.parse(path.read_text())
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in WANTED]
    namespace = {"torch": torch, "np": np}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


def pooled_correlation(models: int, width: int, seed: int) -> torch.Tensor:
    """Correlation of ``models`` models' units on shared inputs: each model a noisy,
    permuted copy of common features, with some units duplicated inside a model."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(2000, width, generator=g)
    feats = []
    for _ in range(models):
        noise = 0.7 * torch.randn(2000, width, generator=g)
        x = base[:, torch.randperm(width, generator=g)] + noise
        dup = torch.randperm(width, generator=g)[: width // 4]
        half = len(dup) // 2  # units dup[half + k] become near-copies of units dup[k]
        x[:, dup[half:]] = x[:, dup[:half]] + 0.3 * torch.randn(2000, half, generator=g)
        feats.append(x)
    return torch.corrcoef(torch.cat(feats, dim=1).T)


def main(path: str) -> int:
    theirs = load_theirs(Path(path))
    cases = [
        (models, width, alpha, beta, seed)
        for models, width in ((2, 32), (2, 96), (3, 48))
        for alpha, beta in ((0.3, 0.125), (0.5, 0.5), (1.0, 0.0), (0.0, 0.25), (0.3, 1.0))
        for seed in (0, 1)
    ]
    equal = 0
    for models, width, alpha, beta, seed in cases:
        corr = pooled_correlation(models, width, seed).float()
        with contextlib.redirect_stdout(io.StringIO()):  # their function prints
            m_t, u_t, *_ = theirs["match_tensors_zipit"](
                {"cossim": corr.clone()}, r=1 - 1 / models, a=alpha, b=beta
            )
        zipped = zip_match(corr, models, alpha=alpha, beta=beta)
        m_g, u_g = zipped
        same = torch.equal(m_t, m_g) and torch.equal(u_t, u_g)
        equal += same
        print(
            f"models {models} width {width:3d} alpha {alpha:.3f} beta {beta:.3f} seed {seed}: "
            f"{'equal' if same else 'DIFFERENT'} (within-model merges {zipped.within})"
        )
    print(f"{equal} of {len(cases)} cases equal element for element")
    return 0 if equal == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
