"""``sinkhorn``: a soft permutation optimised on the correlations, hardened by an assignment
(the paper code's ``match_tensors_sinkhorn_cc``).

Per part, the logits of a soft permutation ``S`` (made doubly stochastic by Sinkhorn's
row/column normalisation at temperature τ, annealed exponentially from 1 to 0.01) are optimised
with Adam to maximise the matched correlation ``mean_i Σ_j S[i, j] C[i, j]`` while penalising
what is left off the diagonal of the aligned cross-correlation ``C Sᵀ`` (mean square, weight
:data:`OFF_DIAGONAL`); the best soft matrix is then hardened by a linear assignment. The
logits start from the correlations themselves, so a clear problem ends where the linear
assignment starts; the soft path can only differ where correlations are close. Unlike the
paper code it uses signed correlations (as ``activations`` does). Cost: ``STEPS × 2·ITERS``
normalisations of a ``D × D`` matrix per part (about a second for ``D = 768`` on a CPU core).

Example:
    >>> import torch
    >>> sinkhorn_match(torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.2, 0.1], [0.0, 0.1, 0.7]])).tolist()
    [1, 0, 2]
"""

from __future__ import annotations

import torch

from graphperm.solve.assignment import match
from graphperm.solve.methods import ActivationMatching, register_method

__all__ = ["ITERS", "OFF_DIAGONAL", "STEPS", "SinkhornMatching", "sinkhorn_match"]

STEPS = 300  # optimisation steps (the paper code's num_opt_steps)
ITERS = 20  # Sinkhorn normalisations per step (sinkhorn_iters)
LR = 0.01
TAU = (1.0, 0.01)  # temperature, annealed exponentially from the first to the second
OFF_DIAGONAL = 1.0  # weight of the off-diagonal penalty


def _normalise(log_alpha: torch.Tensor, iters: int) -> torch.Tensor:
    for _ in range(iters):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-2, keepdim=True)
    return log_alpha.exp()


def sinkhorn_match(
    corr: torch.Tensor,
    *,
    steps: int = STEPS,
    iters: int = ITERS,
    lr: float = LR,
    tau: tuple[float, float] = TAU,
    off_diagonal: float = OFF_DIAGONAL,
) -> torch.Tensor:
    """The permutation ``p`` (B's unit ``p[i]`` for A's unit ``i``, as :func:`match` returns)
    hardened from the soft permutation optimised on ``corr`` (A's units × B's). Deterministic:
    no random initialisation."""
    c = torch.nan_to_num(corr.detach().double().cpu())
    n = c.shape[0]
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    log_alpha = c.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([log_alpha], lr=lr)
    off = ~torch.eye(n, dtype=torch.bool)
    best, best_loss = log_alpha.detach().clone(), float("inf")
    with torch.enable_grad():
        for step in range(steps):
            t = tau[0] * (tau[1] / tau[0]) ** (step / max(1, steps - 1))
            s = _normalise(log_alpha / t, iters)
            aligned = c @ s.T  # [i, k]: A's unit i against the soft B-unit k
            loss = -aligned.diagonal().mean()
            if off_diagonal > 0:
                loss = loss + off_diagonal * aligned[off].pow(2).mean()
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([log_alpha], max_norm=10.0)
            optimiser.step()
            if loss.item() < best_loss:
                best_loss, best = loss.item(), log_alpha.detach().clone()
    with torch.no_grad():
        soft = _normalise(best / tau[1], 2 * iters)
    return match(soft)


@register_method
class SinkhornMatching(ActivationMatching):
    """Correlation of activations, a soft permutation per part (Sinkhorn, annealed), hardened
    by a linear assignment; heads first, as ``activations``."""

    name = "sinkhorn"
    needs = frozenset({"correlation"})
    description = "soft permutation on the correlations (Sinkhorn, annealed), then assignment"

    assign = staticmethod(lambda corr: sinkhorn_match(corr, steps=STEPS))
