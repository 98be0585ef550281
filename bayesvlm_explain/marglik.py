"""Prior-precision selection by the KFAC-Laplace marginal likelihood, for one side (method.md §2.4–2.5).

With stored factors A (p×p, eigenvalues α) and B (q×q, eigenvalues β), pseudo-count n and prior
precision λ, the damped factors are ``Ã = √n A + √λ I_p`` and ``B̃ = √n B + √λ I_q`` (§2.4), so

    logdet Ã = Σ_i log(√n α_i + √λ),     logdet B̃ = Σ_j log(√n β_j + √λ).

λ-dependent part of the log evidence, with d = p·q parameters and S = ‖θ*‖² (§2.5):

    exact:      F(λ) = −½ λ S + ½ d log λ − ½ (q · logdet Ã + p · logdet B̃)     (= −½ logdet(Ã ⊗ B̃))
    reference:  F(λ) = −½ λ S + ½ d log λ − (p · logdet Ã + q · logdet B̃)       (authors' bug B1)

The "reference" mode reproduces the λ of the shipped JSON files and of the paper (weights swapped, ½
missing); "exact" is the corrected objective. In t = log λ both are strictly concave (dF/dt is strictly
decreasing), so the maximiser over an interval is unique: we bracket it on a log-grid and solve
dF/dt = 0 by safeguarded Newton (bisection fallback) instead of the reference's fixed Adam steps (A9).
Everything is float64; eigenvalues come from one fp64 ``eigvalsh`` of the symmetrised factors (a
float32 factor is upcast first). Accuracy (docs/numerics.md): each eigenvalue is exact to ≈ 1e-16·‖F‖
absolute, so eigenvalues far below that (a B from a saturated softmax goes down to 1e-18·‖B‖) are lost,
but they enter only as log(√n β + √λ), which moves by ≤ √n·1e-16‖F‖/√λ; λ* agrees with the λ* of the
exact spectrum and with a 50-digit root to ≤ 1e-10 relative (tests/test_marglik.py). The root solve
subtracts O(d) terms at the optimum, an absolute error ≈ 1e-16·d in dF/dlog λ against a slope ≥ ½λS.
"""

from __future__ import annotations

import math

import torch

from .options import CHOICES
from .options import MargLikMode as Mode

MODES: tuple[str, ...] = CHOICES["mode"]

__all__ = [
    "MODES",
    "factor_eigenvalues",
    "implied_theta_sq_norm",
    "log_marginal_likelihood",
    "log_marginal_likelihood_grad",
    "optimize_prior_precision",
]


def factor_eigenvalues(factor: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
    """Eigenvalues [k] (float64, ascending) of the symmetrised square factor [k, k].

    Stored factors are PSD in exact arithmetic; the shipped B files have tiny negative eigenvalues
    (method.md bug B14, down to −5e-4), so by default they are clamped to 0.
    """
    if factor.ndim != 2 or factor.shape[0] != factor.shape[1]:
        raise ValueError(f"factor must be square 2-D, got {tuple(factor.shape)}")
    f = factor.detach().to("cpu", torch.float64)
    eig = torch.linalg.eigvalsh(0.5 * (f + f.T))
    return eig.clamp_min(0.0) if clamp else eig


def _setup(
    eig_A: torch.Tensor, eig_B: torch.Tensor, n: float, mode: str
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Stack both spectra into c_k = √n·eig_k with weights w_k and the log-det coefficient κ so that
    F(λ) = −½λS + ½ d log λ − κ Σ_k w_k log(c_k + √λ)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if n <= 0:
        raise ValueError(f"pseudo-count n must be > 0, got {n}")
    a = torch.as_tensor(eig_A, dtype=torch.float64).detach().cpu().reshape(-1)
    b = torch.as_tensor(eig_B, dtype=torch.float64).detach().cpu().reshape(-1)
    p, q = a.numel(), b.numel()
    if p == 0 or q == 0:
        raise ValueError("empty spectrum")
    sqn = math.sqrt(n)
    c = torch.cat([sqn * a, sqn * b])
    if mode == "exact":  # ½ (q·logdet Ã + p·logdet B̃)
        w = torch.cat(
            [torch.full((p,), float(q), dtype=torch.float64), torch.full((q,), float(p), dtype=torch.float64)]
        )
        kappa = 0.5
    else:  # reference (bug B1): p·logdet Ã + q·logdet B̃
        w = torch.cat(
            [torch.full((p,), float(p), dtype=torch.float64), torch.full((q,), float(q), dtype=torch.float64)]
        )
        kappa = 1.0
    return c, w, kappa, float(p * q)


def _lam_tensor(prior_precision: float | torch.Tensor) -> torch.Tensor:
    lam = torch.as_tensor(prior_precision, dtype=torch.float64).detach().cpu()
    if (lam <= 0).any():
        raise ValueError("prior precision must be > 0")
    return lam


def _out(x: torch.Tensor, scalar: bool) -> float | torch.Tensor:
    return float(x) if scalar else x


def log_marginal_likelihood(
    eig_A: torch.Tensor,
    eig_B: torch.Tensor,
    n: float,
    prior_precision: float | torch.Tensor,
    theta_sq_norm: float,
    *,
    mode: Mode = "exact",
) -> float | torch.Tensor:
    """λ-dependent log evidence F(λ) (module docstring; method.md §2.5).

    Args:
        eig_A: [p] eigenvalues of the stored input factor A (bias column included in p).
        eig_B: [q] eigenvalues of the stored output factor B.
        n: pseudo-count n' (§2.4).
        prior_precision: λ > 0, a float or a tensor of any shape (evaluated elementwise).
        theta_sq_norm: ‖θ*‖², squared norm of the MAP weights (bias included).
        mode: ``"exact"`` or ``"reference"`` (the authors' objective, bug B1).
    Returns: a float for scalar λ, else a float64 tensor shaped like λ.
    """
    c, w, kappa, d = _setup(eig_A, eig_B, n, mode)
    lam = _lam_tensor(prior_precision)
    s = lam.sqrt().reshape(-1, 1)
    logdet = (torch.log(c[None, :] + s) * w[None, :]).sum(1).reshape(lam.shape)
    f = -0.5 * lam * theta_sq_norm + 0.5 * d * torch.log(lam) - kappa * logdet
    return _out(f, lam.ndim == 0)


def log_marginal_likelihood_grad(
    eig_A: torch.Tensor,
    eig_B: torch.Tensor,
    n: float,
    prior_precision: float | torch.Tensor,
    theta_sq_norm: float,
    *,
    mode: Mode = "exact",
) -> float | torch.Tensor:
    """dF/d log λ = −½ λ S + ½ d − (κ/2) Σ_k w_k √λ / (c_k + √λ); zero at an interior optimum."""
    c, w, kappa, d = _setup(eig_A, eig_B, n, mode)
    lam = _lam_tensor(prior_precision)
    s = lam.sqrt().reshape(-1, 1)
    frac = ((s / (c[None, :] + s)) * w[None, :]).sum(1).reshape(lam.shape)
    g = -0.5 * lam * theta_sq_norm + 0.5 * d - 0.5 * kappa * frac
    return _out(g, lam.ndim == 0)


def _grad_and_curv(c: torch.Tensor, w: torch.Tensor, kappa: float, d: float, t: float, S: float) -> tuple[float, float]:
    """(dF/dt, d²F/dt²) at t = log λ; d²F/dt² = −½λS − (κ/4) Σ w c √λ / (c + √λ)² < 0."""
    lam = math.exp(t)
    s = math.sqrt(lam)
    den = c + s
    g = -0.5 * lam * S + 0.5 * d - 0.5 * kappa * float((w * (s / den)).sum())
    h = -0.5 * lam * S - 0.25 * kappa * float((w * c * s / den**2).sum())
    return g, h


def implied_theta_sq_norm(
    eig_A: torch.Tensor, eig_B: torch.Tensor, n: float, prior_precision: float, *, mode: Mode = "exact"
) -> float:
    """The ‖θ*‖² for which ``prior_precision`` is a stationary point of F (method.md §2.5):
    S = (d − κ Σ_k w_k √λ/(c_k + √λ)) / λ. Used to recover ‖θ*‖² from a shipped λ. A negative value
    means that no ‖θ*‖² ≥ 0 makes λ stationary (possible in "reference" mode for very large λ)."""
    c, w, kappa, d = _setup(eig_A, eig_B, n, mode)
    lam = float(prior_precision)
    if lam <= 0:
        raise ValueError("prior precision must be > 0")
    s = math.sqrt(lam)
    return (d - kappa * float((w * (s / (c + s))).sum())) / lam


def optimize_prior_precision(
    eig_A: torch.Tensor,
    eig_B: torch.Tensor,
    n: float,
    theta_sq_norm: float,
    *,
    mode: Mode = "exact",
    bounds: tuple[float, float] = (1e-4, 1e8),
    num_grid: int = 201,
    rtol: float = 1e-10,
    max_iter: int = 200,
) -> tuple[float, torch.Tensor]:
    """Maximise F(λ) over λ ∈ ``bounds`` (method.md §2.5).

    A log-spaced grid of ``num_grid`` points brackets the root of dF/d log λ (F is strictly concave in
    log λ); safeguarded Newton on log λ, falling back to bisection, refines it until the bracket or the
    step is below ``rtol`` in log λ (≈ relative tolerance in λ). If dF/d log λ has one sign over the
    whole interval the corresponding bound is returned.

    Returns:
        ``(lam, curve)``: the maximiser λ* (float) and ``curve`` [num_grid, 2] float64 with columns
        (λ, F(λ)) on the grid, for inspection or plotting.
    """
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (0 < lo < hi):
        raise ValueError(f"bounds must satisfy 0 < lo < hi, got {bounds}")
    if theta_sq_norm < 0:
        raise ValueError("theta_sq_norm must be >= 0")
    c, w, kappa, d = _setup(eig_A, eig_B, n, mode)
    if float(c.min()) + math.sqrt(lo) <= 0:
        raise ValueError("√n·eig + √λ must be > 0 on the whole interval; clamp negative eigenvalues")

    grid = torch.logspace(math.log10(lo), math.log10(hi), max(int(num_grid), 2), dtype=torch.float64)
    # a tensor λ gives tensors [num_grid]
    values = torch.as_tensor(log_marginal_likelihood(eig_A, eig_B, n, grid, theta_sq_norm, mode=mode))
    grads = torch.as_tensor(log_marginal_likelihood_grad(eig_A, eig_B, n, grid, theta_sq_norm, mode=mode))
    curve = torch.stack([grid, values], dim=1)

    # dF/dt is strictly decreasing: bracket its sign change.
    if float(grads[0]) <= 0:
        return lo, curve
    if float(grads[-1]) >= 0:
        return hi, curve
    k = int(torch.nonzero(grads < 0)[0])
    a, b = math.log(float(grid[k - 1])), math.log(float(grid[k]))  # g(a) > 0 > g(b)
    t = 0.5 * (a + b)
    for _ in range(max_iter):
        g, h = _grad_and_curv(c, w, kappa, d, t, theta_sq_norm)
        if g > 0:
            a = t
        elif g < 0:
            b = t
        else:
            break
        t_new = t - g / h if h < 0 else 0.5 * (a + b)
        if not (a < t_new < b):  # Newton left the bracket: bisect
            t_new = 0.5 * (a + b)
        step = abs(t_new - t)
        t = t_new
        if step <= rtol or (b - a) <= rtol:
            break
    return math.exp(t), curve
