"""A small probe: frozen encoder, a learned softmax-weighted sum of its layers, a linear classifier.

The downstream models of SUPERB/MARBLE (and the paper's) learn a weighted sum of the encoder's
layers; this is that idea at its smallest, so the demo can score four encoders in seconds.

Example:
    >>> import torch
    >>> x = torch.randn(40, 3, 8)                  # (clips, layers, dim) pooled features
    >>> y = (x[:, 2, 0] > 0).long()
    >>> train = torch.arange(40) < 30
    >>> probe_accuracy(x, y, train, classes=2) > 50
    True
"""

from __future__ import annotations

import torch


@torch.inference_mode()
def layer_features(
    model: torch.nn.Module, clips: torch.Tensor, batch_size: int = 64
) -> torch.Tensor:
    """Per-layer features mean-pooled over time, ``(clips, layers + 1, dim)``.

    Each clip is normalised to zero mean and unit variance first (the encoders' convention).
    """
    model.eval()
    out = []
    for i in range(0, len(clips), batch_size):
        wave = clips[i : i + batch_size]
        wave = wave - wave.mean(dim=1, keepdim=True)
        wave = wave / (wave.var(dim=1, keepdim=True) + 1e-7).sqrt()
        hidden = model(wave, output_hidden_states=True).hidden_states
        out.append(torch.stack([h.mean(dim=1) for h in hidden], dim=1).float())
    return torch.cat(out)


def probe_accuracy(
    features: torch.Tensor,
    labels: torch.Tensor,
    train: torch.Tensor,
    classes: int,
    *,
    steps: int = 300,
    seed: int = 0,
) -> float:
    """Test accuracy (%) of a layer-weighted linear probe trained full-batch on ``train``."""
    generator = torch.Generator().manual_seed(seed)
    x_train, x_test = features[train], features[~train]
    mean, std = x_train.mean(dim=0), x_train.std(dim=0) + 1e-5
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    layer_logits = torch.zeros(features.shape[1], requires_grad=True)
    head = torch.nn.Linear(features.shape[2], classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.01)
        head.bias.zero_()
    params = [layer_logits, *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)

    def predict(x: torch.Tensor) -> torch.Tensor:
        return head(torch.einsum("nld,l->nd", x, torch.softmax(layer_logits, dim=0)))

    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(predict(x_train), labels[train])
            loss = loss + 1e-3 * head.weight.pow(2).sum()
            loss.backward()
            opt.step()
    with torch.no_grad():
        hits = predict(x_test).argmax(dim=1) == labels[~train]
    return 100.0 * hits.float().mean().item()
