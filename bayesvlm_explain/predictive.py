"""Predictive distributions over prompts from Gaussian logits (method.md §4).

* ``"probit"`` (default): ``softmax_c(m_c / sqrt(1 + π/8 · v_c))`` per class, MacKay's scaling.
* ``"mc"``: the average softmax over Gaussian logit draws with the full class covariance.
* ``"map"``: the deterministic model, ``softmax(τ·cos_MAP + b)``.

"softmax" stands for the prediction's link (:func:`link_probabilities`): by default the model's own
class link (:func:`class_link`), a softmax for CLIP, the renormalised sigmoids for SigLIP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from .options import Likelihood, Link, Predictive, check_option
from .probcos import DEFAULT_MAX_MEMORY, CosineMoments

PredictiveMethod = Predictive


def class_link(likelihood: Likelihood) -> Link:
    """The link a model's own likelihood gives its class probabilities: ``"softmax"`` for a contrastive
    (InfoNCE) model, ``"normalized_sigmoid"`` for a sigmoid (SigLIP) one."""
    return "softmax" if check_option("likelihood", likelihood) == "infonce" else "normalized_sigmoid"


def link_log_probabilities(logits: torch.Tensor, link: Link) -> torch.Tensor:
    """Log-probabilities [..., C] of logits [..., C] under ``link``; the renormalised sigmoid is
    ``softmax(log σ(z))``, computed as such so that it stays finite when every sigmoid underflows."""
    if link == "softmax":
        return torch.log_softmax(logits, dim=-1)
    if link == "normalized_sigmoid":
        return torch.log_softmax(torch.nn.functional.logsigmoid(logits), dim=-1)
    check_option("link", link)  # an unknown link raises here
    return torch.nn.functional.logsigmoid(logits)


def link_probabilities(logits: torch.Tensor, link: Link) -> torch.Tensor:
    """Probabilities [..., C] of logits [..., C]: the one logits-to-probabilities map of the library
    (softmax over prompts, a sigmoid per pair, or the sigmoids renormalised over the prompts)."""
    if link == "softmax":
        return torch.softmax(logits, dim=-1)
    if link == "sigmoid":
        return torch.sigmoid(logits)
    return link_log_probabilities(logits, link).exp()



def probit_probs(mean: torch.Tensor, var: torch.Tensor, link: Link = "softmax") -> torch.Tensor:
    """Probit-approximate predictive [N, C] from logit means and variances [N, C]."""
    return link_probabilities(mean / torch.sqrt(1.0 + (math.pi / 8.0) * var), link)


def mc_probs(samples: torch.Tensor, link: Link = "softmax") -> torch.Tensor:
    """Monte Carlo predictive [N, C] from logit draws [S, N, C]."""
    return link_probabilities(samples, link).mean(0)


@dataclass
class Prediction:
    """Probabilistic logits of N images against C prompts, with predictives (all tensors on the CPU).

    ``mean``/``var`` are logits (scaled cosines) and their variances; ``var`` is the sum of
    ``var_image`` (image projection uncertainty), ``var_text`` and ``var_interaction``; ``cov`` is each
    image's C×C logit covariance (classes share the text projection).

    ``max_memory`` (bytes, default 2 GiB) bounds the C×C-per-image work: :attr:`cov` and the Monte Carlo
    predictive run in image chunks within it, and a request that cannot fit raises
    :class:`~bayesvlm_explain.probcos.MemoryBudgetError` before allocating (docs/scale.md).
    """

    moments: CosineMoments
    map_logits: torch.Tensor  # [N, C] deterministic τ·cos + b
    prompts: list[str]
    method: PredictiveMethod = "probit"
    num_samples: int = 1000
    link: Link = "softmax"
    seed: int | None = 0
    max_memory: int = DEFAULT_MAX_MEMORY

    def __post_init__(self) -> None:
        check_option("predictive", self.method)
        check_option("link", self.link)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, not {self.num_samples}")
        if isinstance(self.max_memory, bool) or not isinstance(self.max_memory, int) or self.max_memory < 1:
            raise ValueError(f"max_memory must be a positive number of bytes, not {self.max_memory!r}")
        self.moments.max_memory = self.max_memory
        self._draws: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def mean(self) -> torch.Tensor:
        return self.moments.mean

    @property
    def var(self) -> torch.Tensor:
        return self.moments.var

    @property
    def std(self) -> torch.Tensor:
        return self.moments.var.sqrt()

    @property
    def var_image(self) -> torch.Tensor:
        return self.moments.var_image

    @property
    def var_text(self) -> torch.Tensor:
        return self.moments.var_text

    @property
    def var_interaction(self) -> torch.Tensor:
        return self.moments.var_interaction

    @property
    def cov(self) -> torch.Tensor:
        """Each image's class covariance [N, C, C] (within ``max_memory``)."""
        return self.moments.cov

    @cached_property
    def probs(self) -> torch.Tensor:
        """The predictive chosen at ``predict`` time [N, C]."""
        return self.predictive(self.method)

    @property
    def map_probs(self) -> torch.Tensor:
        """Deterministic model's probabilities [N, C]."""
        return link_probabilities(self.map_logits, self.link)

    def predictive(self, method: PredictiveMethod = "probit", num_samples: int | None = None) -> torch.Tensor:
        """Predictive probabilities [N, C] by ``method`` (``"probit"``, ``"mc"`` or ``"map"``)."""
        check_option("predictive", method)
        if method == "probit":
            return probit_probs(self.mean, self.var, self.link)
        if method == "map":
            return self.map_probs
        s = num_samples or self.num_samples
        if (s * self.mean.numel() * self.mean.element_size() * 4 <= self.max_memory
                and len(self.moments.draw_chunks()) == 1):
            return mc_probs(self.mc_draws(s), self.link)  # the cached draws (also behind the entropies)
        # Image chunks within max_memory; the generator restarts for each chunk, and the noise depends
        # only on the prompts, so every chunking gives the same draws (those of `mc_draws`).
        seed = self.seed if self.seed is not None else int(torch.randint(1 << 62, ()).item())
        out = []
        for rows in self.moments.draw_chunks():
            part = self.moments.restrict(rows)
            gen = torch.Generator().manual_seed(seed)
            total = torch.zeros_like(part.mean)
            for k in self._sample_chunks(s):
                total += k * mc_probs(part.sample(k, gen), self.link)
            out.append(total / s)
        return torch.cat(out)

    def _sample_chunks(self, num_samples: int) -> list[int]:
        """Draws per step (~4M logits of the full N × C each), the same for streamed and cached draws."""
        chunk = max(1, (1 << 22) // self.mean.numel())
        return [min(chunk, num_samples - start) for start in range(0, num_samples, chunk)]

    def mc_draws(self, num_samples: int | None = None, seed: int | None | bool = True) -> torch.Tensor:
        """The Gaussian logit draws [S, N, C] behind ``predictive("mc")``, made once per (S, seed) and cached.

        ``seed=True`` (default) uses the prediction's seed; ``None`` draws afresh from the global generator
        (not cached). The MC predictive, :func:`~bayesvlm_explain.explain.decompose_uncertainty` (entropies,
        BALD) and the studio's tables all read these same draws (common random numbers, issue 22).
        """
        s = num_samples or self.num_samples
        seed = self.seed if seed is True else seed
        if seed is not None and (s, seed) in self._draws:
            return self._draws[(s, seed)]
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        draws = torch.cat([self.sample(k, gen) for k in self._sample_chunks(s)]).detach()
        if seed is not None:
            self._draws[(s, seed)] = draws
        return draws

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Gaussian logit draws with the full class covariance [S, N, C]."""
        return self.moments.sample(num_samples, generator)
