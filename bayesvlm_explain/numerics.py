"""Small numeric helpers shared by the posterior algebra, the predictives and the explanations (pure torch)."""

from __future__ import annotations

import functools

import torch


def symmetrize(m: torch.Tensor) -> torch.Tensor:
    """``(M + Mᵀ) / 2`` of a square matrix (or a batch of them, [..., n, n])."""
    return 0.5 * (m + m.transpose(-1, -2))


def psd_root(k: torch.Tensor) -> torch.Tensor:
    """``R`` with ``R Rᵀ = K`` for a symmetric PSD (possibly singular) ``K`` [..., C, C] (eigen-root)."""
    evals, evecs = torch.linalg.eigh(symmetrize(k))
    return evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)


def categorical_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) over the last axis of probabilities [..., C]; ``0 log 0 = 0``."""
    return -torch.xlogy(probs, probs).sum(-1)


def bernoulli_entropy(p: torch.Tensor) -> torch.Tensor:
    """Elementwise entropy (nats) of Bernoulli probabilities ``p``; ``0 log 0 = 0``."""
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def log_categorical_entropy(logp: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) over the last axis from log-probabilities [..., C] (finite gradients at p = 0)."""
    return -(logp.exp() * logp).sum(-1)


def variance_shares(*parts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each variance part divided by their sum (elementwise; a zero total gives zero shares)."""
    total = functools.reduce(torch.add, parts)
    total = total.clamp_min(torch.finfo(total.dtype).tiny)
    return tuple(p / total for p in parts)
