"""Moments of the probabilistic cosine similarity under Kronecker posteriors (method.md §3).

For image ``n`` with embedding ``u_n ~ N(μ_n, s_n Σ_i)`` and prompts with embeddings ``v_c`` that share
the text projection, ``Cov(v_c, v_c') = T_cc' Σ_t``, the inner product ``z_nc = u_nᵀ v_c`` has the exact
moments (method.md §3.2–3.3)

    E z_nc             = μ_nᵀ μ_c
    Cov(z_nc, z_nc')   = s_n μ_cᵀ Σ_i μ_c'  +  T_cc' μ_nᵀ Σ_t μ_n  +  s_n T_cc' tr(Σ_i Σ_t)
                         └── image part ──┘    └─── text part ───┘    └──── interaction ────┘

with ``Σ_i = B̃_img⁻¹``, ``Σ_t = B̃_txt⁻¹``, ``s_n = f̃_nᵀ Ã_img⁻¹ f̃_n`` and ``T = G̃ Ã_txt⁻¹ G̃ᵀ``. The logit
is ``τ`` times the inner product normalised by the expected norms ``E||u||² = ||μ||² + s tr(Σ_i)`` (the
paper's ProbCosine), plus the logit bias. Three variance modes (``VARIANCES``):

* ``"expected_norm"`` (alias ``"exact"``): the exact moments above of that normalised inner product. The
  three parts are exact *for the scaled inner product*; the true cosine's variance is smaller when the
  posterior is tight, because a perturbation along an embedding's own direction leaves a cosine unchanged.
* ``"projected"``: the same, with the other side's mean projected by ``Q_u = I − ρ_u ûûᵀ`` in the image
  part (``ρ_u = ||μ_u||² / E||u||²``) and by ``Q_v = I − ρ_v v̂v̂ᵀ`` in the text part. For tight posteriors
  (``ρ → 1``) it is the delta-method variance of the true cosine; for broad ones (``ρ → 0``) the
  expected-norm variance. Same O(N D² + C D² + N C D) cost; each image's class covariance is then
  its own C×C matrix (formed from O(N C) vectors and fixed C×C matrices).
* ``"diagonal"``: expected-norm with only the diagonals of ``Σ_i``, ``Σ_t`` (the reference's formula).

Nothing here forms a per-(image, prompt) D×D product.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .numerics import psd_root, symmetrize
from .options import check_option, variance_mode

_JITTERS = (0.0, 1e-12, 1e-10, 1e-8, 1e-6)


@dataclass
class ProjectionTerms:
    """Per-image and per-pair vectors of the ``"projected"`` variance (see :func:`cosine_moments`).

    Image side (``Q_n μ_c`` in ``Σ_i``): ``rho_img`` [N], ``alpha`` = ``ûᵀm̂_c`` [N, C],
    ``beta`` = ``ûᵀΣ_i m̂_c`` [N, C], ``gamma`` = ``ûᵀΣ_i û`` [N], with ``m̂_c = μ_c / sqrt(E||v_c||²)``.
    Text side (``Q_c μ_n`` in ``Σ_t``): ``h`` = ``ρ_c v̂_cᵀμ_n`` [N, C], ``e`` = ``v̂_cᵀΣ_t μ_n`` [N, C],
    ``unit_cov`` = ``v̂_cᵀ Σ_t v̂_c'`` [C, C], ``a`` = ``μ_nᵀΣ_tμ_n`` [N], ``w_base`` = ``τ² / E||u_n||²`` [N].
    """

    rho_img: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    gamma: torch.Tensor
    h: torch.Tensor
    e: torch.Tensor
    unit_cov: torch.Tensor
    a: torch.Tensor
    w_base: torch.Tensor


@dataclass
class CosineMoments:
    """Mean, variance parts and class covariance of ``N × C`` probabilistic logits.

    In the expected-norm and diagonal modes every image's class covariance is ``w_img[n]·K_img +
    w_txt[n]·K_txt`` for two fixed C×C matrices (method.md §3.3); in the projected mode each image adds
    its own corrections (``projection``). The [N, C, C] tensor is only formed on request (:attr:`cov`).
    """

    mean: torch.Tensor  # [N, C] logits
    var_image: torch.Tensor  # [N, C] from the image projection's posterior alone
    var_text: torch.Tensor  # [N, C] from the text projection's posterior alone
    var_interaction: torch.Tensor  # [N, C] the product term s_n t_c tr(Σ_i Σ_t)
    w_img: torch.Tensor  # [N] τ² s_n / E||u_n||²
    w_txt: torch.Tensor  # [N] τ² μ_nᵀ Σ_t μ_n / E||u_n||²
    txt_mean_scaled: torch.Tensor  # [C, D] μ_c / sqrt(E||v_c||²)
    txt_act_scaled: torch.Tensor  # [C, p_t] g̃_c / sqrt(E||v_c||²)
    img_cov_out: torch.Tensor  # [D, D] Σ_i
    txt_cov_in: torch.Tensor  # [p_t, p_t] Ã_txt⁻¹
    trace_term: torch.Tensor  # [] tr(Σ_i Σ_t)
    projection: ProjectionTerms | None = None  # set in the "projected" mode

    @property
    def var(self) -> torch.Tensor:
        """Total logit variance [N, C] (= image + text + interaction parts)."""
        return self.var_image + self.var_text + self.var_interaction

    @property
    def structured(self) -> bool:
        """True when each image's covariance is a mix of the two fixed :attr:`class_factors`."""
        return self.projection is None

    @cached_property
    def class_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K_img, K_txt)`` [C, C]: ``K_img = M̂ Σ_i M̂ᵀ + tr(Σ_iΣ_t) T̂`` and ``K_txt = T̂``."""
        m, g = self.txt_mean_scaled, self.txt_act_scaled
        t_hat = g @ self.txt_cov_in @ g.T
        k_hat = m @ self.img_cov_out @ m.T
        return symmetrize(k_hat + self.trace_term * t_hat), symmetrize(t_hat)

    @cached_property
    def cov(self) -> torch.Tensor:
        """Full class covariance of each image's logits [N, C, C]."""
        k_img, k_txt = self.class_factors
        if self.projection is None:
            return self.w_img[:, None, None] * k_img + self.w_txt[:, None, None] * k_txt
        pt = self.projection
        al, be = pt.alpha, pt.beta
        rho = pt.rho_img[:, None, None]
        image = k_img[None] - rho * (al[:, :, None] * be[:, None, :] + be[:, :, None] * al[:, None, :]) \
            + (rho.square() * pt.gamma[:, None, None]) * al[:, :, None] * al[:, None, :]
        eh = pt.e * pt.h
        text = k_txt[None] * (pt.a[:, None, None] - eh[:, :, None] - eh[:, None, :]
                              + pt.h[:, :, None] * pt.h[:, None, :] * pt.unit_cov[None])
        return self.w_img[:, None, None] * image + pt.w_base[:, None, None] * text

    @cached_property
    def _roots(self) -> tuple[torch.Tensor, ...]:
        if self.projection is None:
            return tuple(psd_root(k) for k in self.class_factors)
        return (_cholesky_root(self.cov),)

    def class_noise(self, num_samples: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """Standard normal draws for :meth:`draws`, depending only on the prompts (common random numbers).

        Structured modes: correlated ``(E₁, E₂)`` [S, C] with ``Cov(E₁) = K_img``, ``Cov(E₂) = K_txt``;
        projected mode: ``(ε,)`` [S, C] white noise, coloured per image by :meth:`draws`.
        """
        c = self.mean.shape[1]
        kw = {"dtype": self.mean.dtype, "generator": generator}
        if self.projection is not None:
            return (torch.randn(num_samples, c, **kw).to(self.mean.device),)
        r_img, r_txt = self._roots
        e1 = torch.randn(num_samples, c, **kw).to(self.mean.device) @ r_img.T
        e2 = torch.randn(num_samples, c, **kw).to(self.mean.device) @ r_txt.T
        return e1, e2

    def draws(self, noise: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Gaussian logits [S, N, C] with each image's class covariance, for noise from :meth:`class_noise`."""
        if self.projection is not None:
            (eps,) = noise
            return self.mean[None] + torch.einsum("sc,nkc->snk", eps, self._roots[0])
        e1, e2 = noise
        return (self.mean[None]
                + self.w_img.sqrt()[None, :, None] * e1[:, None, :]
                + self.w_txt.sqrt()[None, :, None] * e2[:, None, :])

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Gaussian logit draws with the full class covariance: [S, N, C].

        Draws are exact per image (marginally); the same standard normals are reused across images,
        which is fine for per-image predictives but carries no cross-image correlation.
        """
        return self.draws(self.class_noise(num_samples, generator))


def _cholesky_root(cov: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factors [N, C, C] of PSD covariances, with the smallest jitter that succeeds.

    Differentiable (used by the entropy attribution targets); the jitter is relative to the mean variance.
    """
    scale = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1).clamp_min(torch.finfo(cov.dtype).tiny)
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    for jitter in _JITTERS:
        root, info = torch.linalg.cholesky_ex(cov + jitter * scale[:, None, None] * eye)
        if not bool(info.any()):
            return root
    raise torch.linalg.LinAlgError("class covariance is not positive semi-definite (even with jitter)")


def cosine_moments(
    img_mean: torch.Tensor,
    img_scale: torch.Tensor,
    txt_mean: torch.Tensor,
    txt_act: torch.Tensor,
    img_cov_out: torch.Tensor,
    txt_cov_out: torch.Tensor,
    txt_cov_in: torch.Tensor,
    logit_scale: float,
    logit_bias: float = 0.0,
    *,
    variance: str = "projected",
) -> CosineMoments:
    """Moments of the logits ``τ·cos(u_n, v_c) + b`` for all image/prompt pairs.

    Args:
        img_mean: [N, D] mean image embeddings ``μ_n`` (un-normalised, residual included).
        img_scale: [N] ``s_n = f̃_nᵀ Ã_img⁻¹ f̃_n``.
        txt_mean: [C, D] mean prompt embeddings ``μ_c``.
        txt_act: [C, p_t] text activations ``g̃_c`` entering the text projection (with the constant 1
            appended when it has a bias).
        img_cov_out, txt_cov_out: [D, D] ``B̃_img⁻¹``, ``B̃_txt⁻¹``.
        txt_cov_in: [p_t, p_t] ``Ã_txt⁻¹``.
        logit_scale: ``τ = exp(logit_scale parameter)``.
        logit_bias: added to the mean (SigLIP); 0 for CLIP.
        variance: ``"projected"`` (default), ``"expected_norm"`` (``"exact"``) or ``"diagonal"``; see the
            module doc.
    """
    mode = variance_mode(check_option("variance", variance))
    if mode == "diagonal":
        img_cov_out, txt_cov_out = torch.diag(img_cov_out.diagonal()), torch.diag(txt_cov_out.diagonal())
    t_diag = ((txt_act @ txt_cov_in) * txt_act).sum(-1)  # t_c [C]
    img_sq = img_mean.square().sum(-1) + img_scale * img_cov_out.diagonal().sum()  # E||u||² [N]
    txt_sq = txt_mean.square().sum(-1) + t_diag * txt_cov_out.diagonal().sum()  # E||v||² [C]
    inv_u, inv_v = img_sq.rsqrt(), txt_sq.rsqrt()
    tau2 = logit_scale**2

    mean = logit_scale * (img_mean @ txt_mean.T) * inv_u[:, None] * inv_v[None, :] + logit_bias
    m_hat = txt_mean * inv_v[:, None]  # [C, D]
    k_c = ((m_hat @ img_cov_out) * m_hat).sum(-1)  # m̂_cᵀ Σ_i m̂_c [C]
    sig_t_mu = img_mean @ txt_cov_out  # Σ_t μ_n [N, D]
    a_n = (sig_t_mu * img_mean).sum(-1)  # μ_nᵀ Σ_t μ_n [N]
    kappa = (img_cov_out * txt_cov_out).sum()  # tr(Σ_i Σ_t), both symmetric
    t_hat = t_diag * inv_v.square()  # [C]
    w_base = tau2 * inv_u.square()  # τ² / E||u_n||² [N]
    w_img = w_base * img_scale  # [N]
    w_txt = w_base * a_n  # [N]
    projection = None
    if mode == "projected":
        projection = _projection_terms(img_mean, img_sq, txt_mean, txt_sq, m_hat, img_cov_out, sig_t_mu,
                                       txt_cov_out, a_n, w_base)
        pt = projection
        var_image = w_img[:, None] * (k_c[None, :] - 2 * pt.rho_img[:, None] * pt.alpha * pt.beta
                                      + (pt.rho_img.square() * pt.gamma)[:, None] * pt.alpha.square())
        var_text = w_base[:, None] * t_hat[None, :] * (
            a_n[:, None] - 2 * pt.h * pt.e + pt.h.square() * pt.unit_cov.diagonal()[None, :])
    else:
        var_image = w_img[:, None] * k_c[None, :]
        var_text = w_txt[:, None] * t_hat[None, :]
    return CosineMoments(
        mean=mean,
        var_image=var_image,
        var_text=var_text,
        var_interaction=kappa * w_img[:, None] * t_hat[None, :],
        w_img=w_img,
        w_txt=w_txt,
        txt_mean_scaled=m_hat,
        txt_act_scaled=txt_act * inv_v[:, None],
        img_cov_out=img_cov_out,
        txt_cov_in=txt_cov_in,
        trace_term=kappa,
        projection=projection,
    )


def _projection_terms(img_mean: torch.Tensor, img_sq: torch.Tensor, txt_mean: torch.Tensor, txt_sq: torch.Tensor,
                      m_hat: torch.Tensor, img_cov_out: torch.Tensor, sig_t_mu: torch.Tensor,
                      txt_cov_out: torch.Tensor, a_n: torch.Tensor, w_base: torch.Tensor) -> ProjectionTerms:
    """The vectors of the projected variance: O(N D² + C D² + N C D + C² D)."""
    tiny = torch.finfo(img_mean.dtype).tiny
    u_norm2 = img_mean.square().sum(-1)
    v_norm2 = txt_mean.square().sum(-1)
    u_hat = img_mean * u_norm2.clamp_min(tiny).rsqrt()[:, None]  # [N, D]
    v_hat = txt_mean * v_norm2.clamp_min(tiny).rsqrt()[:, None]  # [C, D]
    sig_i_u = u_hat @ img_cov_out  # (Σ_i û_n)ᵀ [N, D]
    rho_txt = v_norm2 / txt_sq  # [C]
    return ProjectionTerms(
        rho_img=u_norm2 / img_sq,
        alpha=u_hat @ m_hat.T,
        beta=sig_i_u @ m_hat.T,
        gamma=(sig_i_u * u_hat).sum(-1),
        h=rho_txt[None, :] * (img_mean @ v_hat.T),
        e=sig_t_mu @ v_hat.T,
        unit_cov=symmetrize(v_hat @ txt_cov_out @ v_hat.T),
        a=a_n,
        w_base=w_base,
    )
