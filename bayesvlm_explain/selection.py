"""Acquisition functions for support-set selection (active learning, method.md §6), on posterior draws.

Every function takes class probabilities under S posterior samples, ``probs`` [S, N, C] (e.g.
``softmax(vlm.sample_logits(...))``: the same weight draw ``s`` for all images, so draws are *joint*
across images). Entropies are in nats and use ``xlogy`` (``0 log 0 = 0``, no NaN when a probability
underflows, unlike the reference's B9).

* :func:`map_entropy` ``H[p(y|x, W*)]``: the entropy of the deterministic (MAP) prediction, [N, C] -> [N];
  the paper's "Entropy" baseline (method.md §6), blind to the posterior.
* :func:`predictive_entropy` ``H[E_s p_s(y|x)]``: total uncertainty under the posterior.
* :func:`bald` ``H[E_s p_s] − E_s H[p_s]``: the mutual information between the label and the weights.
* :func:`epig` ``E_{x*} I(y; y* | x, x*)``: expected information gained about the labels of target inputs
  ``x*`` (Bickford Smith et al., 2023), with the joint ``p(y, y*) = E_s p_s(y|x) p_s(y*|x*)`` taken over
  the *same* draws for pool and targets. The reference drew pool and target logits independently (B4),
  which makes every EPIG ≈ 0 up to Monte Carlo bias; here sharing the draws is part of the contract.
* :func:`targeted_picks`: the paper's targeted strategies: the best-scored *target* inputs, each mapped to
  its nearest still unlabelled pool input, by :func:`neighbour_distances`: ``"cosine"`` (of the mean
  embeddings) or ``"wasserstein"`` (the squared 2-Wasserstein distance between the Gaussian embedding
  posteriors, the reference's default ``--knn_method``, method.md §6).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from .numerics import categorical_entropy
from .options import Likelihood
from .predictive import class_link, link_probabilities

if TYPE_CHECKING:
    from .model import BayesVLM


SCORES: tuple[str, ...] = ("map_entropy", "entropy", "bald", "epig")
"""The pool scores :func:`pool_scores` computes."""

NEIGHBOUR_DISTANCES: tuple[str, ...] = ("cosine", "wasserstein")
"""The distances :func:`neighbour_distances` offers for mapping targets to pool inputs."""


def _check_draws(probs: torch.Tensor, name: str) -> None:
    if probs.ndim != 3:
        raise ValueError(f"{name} must be [S, N, C] class probabilities under posterior draws, "
                         f"got {tuple(probs.shape)}")


def class_probabilities(logits: torch.Tensor, likelihood: Likelihood = "infonce") -> torch.Tensor:
    """Class probabilities [..., C] from logits [..., C] by the model's own link: the softmax for contrastive
    (InfoNCE) models; for sigmoid models (SigLIP) the per-class sigmoids renormalised over the classes.

    The one logits-to-class-probabilities map of ``evaluate`` (BALD), active learning and the studio's
    Select tab; ``likelihood`` is the model's (``vlm.adapter.likelihood``)."""
    return link_probabilities(logits, class_link(likelihood))


def map_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the MAP class probabilities, [N, C] -> [N] (nats)."""
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C] MAP class probabilities, got {tuple(probs.shape)}")
    return categorical_entropy(probs)


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the Monte Carlo predictive, [S, N, C] -> [N] (nats)."""
    _check_draws(probs, "probs")
    return categorical_entropy(probs.mean(0))


def bald(probs: torch.Tensor) -> torch.Tensor:
    """BALD, the mutual information between label and weights: [S, N, C] -> [N] (nats, >= 0)."""
    _check_draws(probs, "probs")
    return (predictive_entropy(probs) - categorical_entropy(probs).mean(0)).clamp_min(0.0)


def epig(pool_probs: torch.Tensor, target_probs: torch.Tensor, *, chunk_elements: int = 1 << 24) -> torch.Tensor:
    """Expected predictive information gain of each pool input about the target inputs.

    Args:
        pool_probs: [S, N, C] class probabilities of the N pool inputs under S posterior draws.
        target_probs: [S, M, C'] of the M target inputs under the *same* S draws (draw s of both comes
            from one weight sample).
        chunk_elements: memory bound for the [n, M, C, C'] joint tables (pool rows are chunked).
    Returns:
        [N] EPIG in nats: the mean over targets of ``H[y] + H[y*] − H[y, y*]``.
    """
    _check_draws(pool_probs, "pool_probs")
    _check_draws(target_probs, "target_probs")
    if pool_probs.shape[0] != target_probs.shape[0]:
        raise ValueError(f"pool and target need the same posterior draws: S = {pool_probs.shape[0]} vs "
                         f"{target_probs.shape[0]}")
    s, n, c = pool_probs.shape
    m, c_t = target_probs.shape[1:]
    h_pool = categorical_entropy(pool_probs.mean(0))  # [N]
    h_target = categorical_entropy(target_probs.mean(0))  # [M]
    rows = max(1, chunk_elements // max(1, m * c * c_t))
    out = []
    for start in range(0, n, rows):
        p = pool_probs[:, start:start + rows]  # [S, n, C]
        joint = torch.einsum("snc,smk->nmck", p, target_probs) / s  # p(y, y*) [n, M, C, C']
        h_joint = categorical_entropy(joint.flatten(-2))  # [n, M]
        out.append(h_pool[start:start + rows, None] + h_target[None, :] - h_joint)
    return torch.cat(out).mean(1).clamp_min(0.0)


def top_k(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the ``k`` highest scores [N] (ties broken by index), skipping ``exclude`` (indices)."""
    if scores.ndim != 1:
        raise ValueError(f"scores must be [N], got {tuple(scores.shape)}")
    masked = scores.clone().to(torch.float64)
    if exclude is not None and len(exclude):
        masked[exclude] = -math.inf
    available = int(torch.isfinite(masked).sum())
    if k > available:
        raise ValueError(f"cannot select {k} of {available} available inputs")
    return torch.sort(masked, descending=True, stable=True).indices[:k]


def cosine_distances(target_embeddings: torch.Tensor, pool_embeddings: torch.Tensor) -> torch.Tensor:
    """``1 − cos`` of every target [M, D] and pool [N, D] embedding: [M, N] in [0, 2]."""
    t = torch.nn.functional.normalize(target_embeddings.double(), dim=-1)
    return 1.0 - t @ torch.nn.functional.normalize(pool_embeddings.double(), dim=-1).T


def wasserstein_distances(target_mean: torch.Tensor, target_scale: torch.Tensor, pool_mean: torch.Tensor,
                          pool_scale: torch.Tensor, trace: float) -> torch.Tensor:
    """Squared 2-Wasserstein distances [M, N] between Gaussian embeddings ``N(μ, s·B̃⁻¹)`` of the targets
    (``target_mean`` [M, D], ``target_scale`` [M] = ``s``) and the pool ([N, D], [N]); ``trace`` = tr(B̃⁻¹).

    Under the Kronecker posterior an image's embedding has covariance ``s·B̃⁻¹`` with ``s = x̃ᵀÃ⁻¹x̃``; two
    such covariances are proportional, so ``W₂² = ||μ₁ − μ₂||² + tr(B̃⁻¹)(√s₁ − √s₂)²`` exactly. The reference
    keeps only the diagonal, ``||μ₁ − μ₂||² + ||σ₁ − σ₂||²`` with ``σ_d = √(s β_d)``, which is the same value
    (method.md §6, §3.1). Means are the un-normalised embeddings."""
    if target_scale.shape != target_mean.shape[:1] or pool_scale.shape != pool_mean.shape[:1]:
        raise ValueError(f"scales must be [M] and [N] for means [M, D] and [N, D], got {tuple(target_scale.shape)}, "
                         f"{tuple(pool_scale.shape)} for {tuple(target_mean.shape)}, {tuple(pool_mean.shape)}")
    if trace < 0 or (target_scale < 0).any() or (pool_scale < 0).any():
        raise ValueError("variance scales and the trace must be non-negative")
    mean_part = torch.cdist(target_mean.double(), pool_mean.double()).square()
    spread = target_scale.double().sqrt()[:, None] - pool_scale.double().sqrt()[None, :]
    return mean_part + trace * spread.square()


def neighbour_distances(vlm: BayesVLM, target: Any, pool: Any, distance: str = "cosine") -> torch.Tensor:
    """Distances [M, N] from the target to the pool image features (``Features``) under ``vlm``:
    ``"cosine"`` (:func:`cosine_distances` of the mean embeddings, blind to the posterior) or ``"wasserstein"``
    (:func:`wasserstein_distances` of the embedding posteriors under ``vlm``'s image posterior)."""
    if distance == "cosine":
        return cosine_distances(target.embeddings, pool.embeddings)
    if distance != "wasserstein":
        raise ValueError(f"unknown neighbour distance {distance!r}; expected one of {NEIGHBOUR_DISTANCES}")
    side = vlm.require_posterior().image
    augment = vlm.adapter.image.augment
    trace = float(side.covariance_factors()[1].diagonal().sum())
    return wasserstein_distances(target.embeddings, side.input_scales(augment(target.activations.double())),
                                 pool.embeddings, side.input_scales(augment(pool.activations.double())), trace)


def targeted_picks(target_scores: torch.Tensor, distances: torch.Tensor, k: int,
                   exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``k`` distinct pool indices: the targets in decreasing score, each mapped to its nearest available pool
    input (smallest distance; a pool input already taken or in ``exclude`` is skipped).

    Args:
        target_scores: [M] scores of the target inputs (higher = more useful to cover).
        distances: [M, N] from every target to every pool input (:func:`neighbour_distances`).
        k: how many pool inputs to return (at most the number available; targets are reused in score
            order when there are fewer than ``k``).
    """
    if target_scores.ndim != 1 or distances.ndim != 2 or distances.shape[0] != target_scores.shape[0]:
        raise ValueError(f"target_scores [M] and distances [M, N] disagree: {tuple(target_scores.shape)} "
                         f"vs {tuple(distances.shape)}")
    n = distances.shape[1]
    taken = torch.zeros(n, dtype=torch.bool)
    if exclude is not None and len(exclude):
        taken[exclude] = True
    if k > int((~taken).sum()):
        raise ValueError(f"cannot select {k} of {int((~taken).sum())} available inputs")
    order = torch.sort(target_scores.double(), descending=True, stable=True).indices
    picks: list[int] = []
    while len(picks) < k:
        for t in order.tolist():
            j = int(distances[t].double().masked_fill(taken, math.inf).argmin())
            picks.append(j)
            taken[j] = True
            if len(picks) == k:
                break
    return torch.tensor(picks, dtype=torch.long)


def pool_scores(vlm: BayesVLM, pool: Any, txt: Any, num_samples: int, generator: torch.Generator,
                target: Any = None, which: tuple[str, ...] = SCORES) -> dict[str, torch.Tensor]:
    """The scores ``which`` (some of :data:`SCORES`: ``map_entropy``, ``entropy``, ``bald``, ``epig``), each [N]
    in nats, of the pool's image features under ``vlm`` and its posterior.

    ``map_entropy`` uses the deterministic (MAP) prediction, no draws. The others use ``num_samples``
    posterior draws; with ``epig``, pool and EPIG targets (default: the pool) are drawn jointly: one
    ``vlm.sample_logits_features`` call on their concatenated :class:`~bayesvlm_explain.adapters.Features`,
    so draw ``s`` of every image uses the same weight sample. Probabilities use the model's own link
    (:func:`class_probabilities`). ``txt``: the prompt features.
    """
    from .adapters import Features

    unknown = [w for w in which if w not in SCORES]
    if unknown:
        raise ValueError(f"unknown scores {unknown}; expected some of {SCORES}")
    out: dict[str, torch.Tensor] = {}
    if "map_entropy" in which:
        out["map_entropy"] = map_entropy(class_probabilities(vlm.map_logits(pool, txt), vlm.adapter.likelihood))
    if not {"entropy", "bald", "epig"} & set(which):
        return out
    n = int(pool.embeddings.shape[0])
    both = pool
    if "epig" in which:
        target = pool if target is None else target
        both = Features(torch.cat([pool.activations, target.activations]),
                        torch.cat([pool.embeddings, target.embeddings]))
    probs = class_probabilities(vlm.sample_logits_features(both, txt, num_samples, generator),
                                vlm.adapter.likelihood)
    if "entropy" in which:
        out["entropy"] = predictive_entropy(probs[:, :n])
    if "bald" in which:
        out["bald"] = bald(probs[:, :n])
    if "epig" in which:
        out["epig"] = epig(probs[:, :n], probs[:, n:])
    return {w: out[w] for w in which}
