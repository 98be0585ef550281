"""Moments of the probabilistic cosine similarity under Kronecker posteriors (method.md §3).

For image ``n`` with embedding ``u_n ~ N(μ_n, s_n Σ_i)`` and prompts with embeddings ``v_c`` that share
the text projection, ``Cov(v_c, v_c') = T_cc' Σ_t``, the inner product ``z_nc = u_nᵀ v_c`` has the exact
moments (method.md §3.2–3.3)

    E z_nc             = μ_nᵀ μ_c
    Cov(z_nc, z_nc')   = s_n μ_cᵀ Σ_i μ_c'  +  T_cc' μ_nᵀ Σ_t μ_n  +  s_n T_cc' tr(Σ_i Σ_t)
                         └── image part ──┘    └─── text part ───┘    └──── interaction ────┘

with ``Σ_i = B̃_img⁻¹``, ``Σ_t = B̃_txt⁻¹``, ``s_n = f̃_nᵀ Ã_img⁻¹ f̃_n`` and ``T = G̃ Ã_txt⁻¹ G̃ᵀ``. The logit
is the cosine scaled by ``τ`` and normalised by the expected norms, ``E||u||² = ||μ||² + s tr(Σ_i)``,
as in the paper (the norm's own fluctuation is ignored; see :func:`cosine_moments`). Nothing here
forms a per-(image, prompt) D×D product: the cost is O(N D² + C D² + N C D) for mean and variance,
plus O(C² (D + p_t)) once and O(N C²) for the full class covariance.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass
class CosineMoments:
    """Mean, variance parts and structured class covariance of ``N × C`` probabilistic logits.

    Every image's class covariance is ``w_img[n] · K_img + w_txt[n] · K_txt`` for two fixed C×C
    matrices (method.md §3.3), so the [N, C, C] tensor is only formed on request (:attr:`cov`).
    """

    mean: torch.Tensor  # [N, C] logits, τ·E[uᵀv]/sqrt(E||u||² E||v||²) + bias
    var_image: torch.Tensor  # [N, C] from the image projection's posterior alone
    var_text: torch.Tensor  # [N, C] from the text projection's posterior alone
    var_interaction: torch.Tensor  # [N, C] the product term s_n t_c tr(Σ_i Σ_t)
    w_img: torch.Tensor  # [N] τ² s_n / E||u_n||²
    w_txt: torch.Tensor  # [N] τ² μ_nᵀ Σ_t μ_n / E||u_n||²
    txt_mean_scaled: torch.Tensor  # [C, D] μ_c / sqrt(E||v_c||²)
    txt_act_scaled: torch.Tensor  # [C, p_t] g̃_c / sqrt(E||v_c||²)
    img_cov_out: torch.Tensor  # [D, D] Σ_i
    txt_cov_in: torch.Tensor  # [p_t, p_t] Ã_txt⁻¹
    trace_term: float  # tr(Σ_i Σ_t)

    @property
    def var(self) -> torch.Tensor:
        """Total logit variance [N, C] (= image + text + interaction parts)."""
        return self.var_image + self.var_text + self.var_interaction

    @cached_property
    def class_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K_img, K_txt)`` [C, C]: ``K_img = M̂ Σ_i M̂ᵀ + tr(Σ_iΣ_t) T̂`` and ``K_txt = T̂``."""
        m, g = self.txt_mean_scaled, self.txt_act_scaled
        t_hat = g @ self.txt_cov_in @ g.T
        k_hat = m @ self.img_cov_out @ m.T
        return _sym(k_hat + self.trace_term * t_hat), _sym(t_hat)

    @cached_property
    def cov(self) -> torch.Tensor:
        """Full class covariance of each image's logits [N, C, C]."""
        k_img, k_txt = self.class_factors
        return self.w_img[:, None, None] * k_img + self.w_txt[:, None, None] * k_txt

    @cached_property
    def _class_roots(self) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(_psd_root(k) for k in self.class_factors)  # type: ignore[return-value]

    def class_noise(self, num_samples: int, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Correlated standard draws ``(E₁, E₂)`` [S, C] with ``Cov(E₁) = K_img``, ``Cov(E₂) = K_txt``.

        They depend only on the prompts, so a fixed pair serves as common random numbers for any image.
        """
        r_img, r_txt = self._class_roots
        c = self.mean.shape[1]
        kw = {"dtype": self.mean.dtype, "generator": generator}
        e1 = torch.randn(num_samples, c, **kw).to(self.mean.device) @ r_img.T
        e2 = torch.randn(num_samples, c, **kw).to(self.mean.device) @ r_txt.T
        return e1, e2

    def draws(self, noise: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Logits ``m + √w_img E₁ + √w_txt E₂`` [S, N, C] for noise from :meth:`class_noise`."""
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


def _sym(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x + x.T)


def _psd_root(k: torch.Tensor) -> torch.Tensor:
    """``R`` with ``R Rᵀ = K`` for a symmetric PSD (possibly singular) ``K`` [C, C]."""
    evals, evecs = torch.linalg.eigh(k)
    return evecs * evals.clamp_min(0).sqrt()


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
    diagonal: bool = False,
) -> CosineMoments:
    """Moments of ``τ·cos(u_n, v_c) + b`` for all image/prompt pairs.

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
        diagonal: use only the diagonals of ``B̃⁻¹``: reproduces the reference implementation's
            approximation (method.md §3.1, A7) for comparison.
    """
    if diagonal:
        img_cov_out, txt_cov_out = torch.diag(img_cov_out.diagonal()), torch.diag(txt_cov_out.diagonal())
    t_diag = ((txt_act @ txt_cov_in) * txt_act).sum(-1)  # [C]
    img_sq = img_mean.square().sum(-1) + img_scale * img_cov_out.diagonal().sum()  # E||u||² [N]
    txt_sq = txt_mean.square().sum(-1) + t_diag * txt_cov_out.diagonal().sum()  # E||v||² [C]
    inv_u, inv_v = img_sq.rsqrt(), txt_sq.rsqrt()
    tau2 = logit_scale**2

    mean = logit_scale * (img_mean @ txt_mean.T) * inv_u[:, None] * inv_v[None, :] + logit_bias
    k_c = ((txt_mean @ img_cov_out) * txt_mean).sum(-1) * inv_v.square()  # μ_cᵀ Σ_i μ_c / E||v||²
    a_n = ((img_mean @ txt_cov_out) * img_mean).sum(-1)  # μ_nᵀ Σ_t μ_n
    kappa = float((img_cov_out * txt_cov_out).sum())  # tr(Σ_i Σ_t), both symmetric
    t_hat = t_diag * inv_v.square()  # [C]
    w_img = tau2 * img_scale * inv_u.square()  # [N]
    w_txt = tau2 * a_n * inv_u.square()  # [N]
    return CosineMoments(
        mean=mean,
        var_image=w_img[:, None] * k_c[None, :],
        var_text=w_txt[:, None] * t_hat[None, :],
        var_interaction=kappa * w_img[:, None] * t_hat[None, :],
        w_img=w_img,
        w_txt=w_txt,
        txt_mean_scaled=txt_mean * inv_v[:, None],
        txt_act_scaled=txt_act * inv_v[:, None],
        img_cov_out=img_cov_out,
        txt_cov_in=txt_cov_in,
        trace_term=kappa,
    )
