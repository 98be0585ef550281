"""Step 4 of a fit: form the posterior from the sums and choose the prior precision (method.md §2.2, §2.5)."""

from __future__ import annotations

from ..estimation import KFACAccumulator
from ..marglik import factor_eigenvalues, optimize_prior_precision
from ..options import MargLikMode
from ..posterior import KronPosterior, Posterior
from .protocol import FittableModel


def form_posterior(acc: dict[str, KFACAccumulator], pseudo_count: float) -> Posterior:
    """The posterior with ``A = Σ ããᵀ/√N``, ``B = Σ H/√N`` per side (λ not yet set)."""
    sides = {}
    for side, a in acc.items():
        A, B, n_rows = a.factors()
        sides[side] = KronPosterior(A, B, pseudo_count=pseudo_count, num_pairs=n_rows)
    return Posterior(sides["image"], sides["text"])


def set_prior_precision(vlm: FittableModel, posterior: Posterior, prior_precision: float | tuple[float, float] | None,
                        marglik: MargLikMode) -> dict[str, list[list[float]]]:
    """Fixed ``λ`` (one value or (image, text)), or ``None``: the marginal-likelihood maximiser; returns
    the marginal-likelihood curves (empty for fixed values)."""
    if prior_precision is None:
        return optimize_posterior_prior(vlm, posterior, mode=marglik)
    lams = (prior_precision, prior_precision) if isinstance(prior_precision, int | float) else prior_precision
    posterior.image.prior_precision, posterior.text.prior_precision = map(float, lams)
    return {}


def optimize_posterior_prior(vlm: FittableModel, posterior: Posterior, *, mode: MargLikMode = "exact",
                             pseudo_count: float | None = None) -> dict[str, list[list[float]]]:
    """Set each side's ``λ`` to the marginal-likelihood maximiser (method.md §2.5); return the curves.

    ``‖θ*‖²`` is the squared norm of the MAP projection (bias included); ``mode="reference"`` reproduces
    the authors' objective with its wrong log-determinant, for comparison.
    """
    curves = {}
    for side, proj in (("image", vlm.adapter.image), ("text", vlm.adapter.text)):
        post = getattr(posterior, side)
        if pseudo_count is not None:
            post.pseudo_count = pseudo_count
        theta_sq = float(proj.weight_with_bias().detach().double().square().sum())
        lam, curve = optimize_prior_precision(factor_eigenvalues(post.A), factor_eigenvalues(post.B),
                                              post.pseudo_count, theta_sq, mode=mode)
        post.prior_precision = lam
        curves[side] = curve.tolist()
    return curves
