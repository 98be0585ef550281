"""Where the uncertainty comes from: variance parts, entropy parts, and the prompts that drive it.

For every image × prompt the logit variance splits exactly into the image-projection part, the
text-projection part and their interaction (method.md §3.3). The predictive entropy over the prompts
splits into an aleatoric part, the expected entropy ``E_z H[p(z)]``, and an epistemic part, the mutual
information between the prediction and the projection weights (BALD), ``H[E_z p(z)] − E_z H[p(z)]``.
Both are Monte Carlo over Gaussian logit draws with the full class covariance, the same draws as
``Prediction.predictive("mc")`` (same seed, same number), so ``total_entropy`` is exactly the entropy of
that predictive.

Which prompts drive the uncertainty of an image? Default (``rank_by="epistemic_drop"``): the drop in
mutual information when the prompt is removed from the candidate set, ``MI(all) − MI(all ∖ c)``, with
the same draws restricted to the remaining prompts (their exact marginal). Positive: the prompt adds
epistemic uncertainty; negative: without it the remaining prompts are *more* uncertain (typically a
confidently rejected or accepted prompt). ``"entropy_drop"`` ranks by the change in total entropy
instead, and ``"variance"`` by the prompt's share of the image's summed logit variance (cheap, but blind
to whether the prompt matters for the prediction at all). The leave-one-out scores cost O(N S C²) time
(chunked; memory O(S C²) at most 2²² entries per chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import bernoulli_entropy, categorical_entropy, variance_shares
from ..options import CHOICES, Link, RankBy, check_option
from ..predictive import Prediction
from .targets import entropy_terms

RANK_BY: tuple[str, ...] = CHOICES["rank_by"]
_CHUNK_ELEMENTS = 1 << 22


@dataclass
class UncertaintyDecomposition:
    """Uncertainty parts of N images × C prompts (float64, CPU).

    Variances are in squared logit units, entropies in nats.
    """

    prompts: list[str]
    var_image: torch.Tensor  # [N, C]
    var_text: torch.Tensor  # [N, C]
    var_interaction: torch.Tensor  # [N, C]
    share_image: torch.Tensor  # [N, C] var_image / var, in [0, 1]
    share_text: torch.Tensor  # [N, C]
    share_interaction: torch.Tensor  # [N, C]
    total_entropy: torch.Tensor  # [N] H[E p]
    aleatoric: torch.Tensor  # [N] E[H[p]]
    epistemic: torch.Tensor  # [N] mutual information (BALD)
    variance_contribution: torch.Tensor  # [N, C] var[n, c] / Σ_c var[n, c]
    entropy_drop: torch.Tensor | None  # [N, C] H(all) − H(all ∖ c); None without leave-one-out
    epistemic_drop: torch.Tensor | None  # [N, C] MI(all) − MI(all ∖ c)
    rank_by: str
    ranking: torch.Tensor  # [N, C] prompt indices, the most uncertainty-driving first
    num_samples: int
    seed: int | None
    link: str

    @property
    def var(self) -> torch.Tensor:
        """Total logit variance [N, C]."""
        return self.var_image + self.var_text + self.var_interaction

    @property
    def prompt_scores(self) -> torch.Tensor:
        """The score [N, C] the ranking sorts by (``rank_by``)."""
        return _score(self, self.rank_by)

    def top_prompts(self, image_index: int = 0, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` prompts that drive image ``image_index``'s uncertainty, with their scores."""
        scores = self.prompt_scores[image_index]
        return [(self.prompts[c], float(scores[c])) for c in self.ranking[image_index, :k].tolist()]


def _score(dec: UncertaintyDecomposition, rank_by: str) -> torch.Tensor:
    if rank_by == "variance":
        return dec.variance_contribution
    value = dec.epistemic_drop if rank_by == "epistemic_drop" else dec.entropy_drop
    if value is None:
        raise ValueError(f"rank_by={rank_by!r} needs leave_one_out=True")
    return value


def decompose_uncertainty(
    pred: Prediction,
    *,
    num_samples: int | None = None,
    seed: int | None = None,
    rank_by: RankBy = "epistemic_drop",
    leave_one_out: bool = True,
) -> UncertaintyDecomposition:
    """Decompose the uncertainty of a :class:`Prediction`.

    Args:
        pred: from ``BayesVLM.predict`` / ``predict_features`` (its ``link`` is used).
        num_samples: Gaussian logit draws (default ``pred.num_samples``).
        seed: draw seed (default ``pred.seed``, so ``total_entropy`` is the entropy of
            ``pred.predictive("mc")``); None draws from the global generator.
        rank_by: ``"epistemic_drop"`` (default), ``"entropy_drop"`` or ``"variance"``; see the module doc.
        leave_one_out: compute the leave-one-out drops (O(N S C²)); required by the two ``*_drop`` rankings.
    """
    check_option("rank_by", rank_by, RANK_BY)
    s = num_samples or pred.num_samples
    seed = pred.seed if seed is None else seed
    samples = pred.mc_draws(s, seed)  # [S, N, C], the prediction's cached draws (made once)
    total, aleatoric, epistemic = entropy_terms(samples, pred.link)
    var_i, var_t, var_x = (v.detach() for v in (pred.var_image, pred.var_text, pred.var_interaction))
    share_i, share_t, share_x = variance_shares(var_i, var_t, var_x)
    var = var_i + var_t + var_x
    drops = _leave_one_out(samples, pred.link, total, epistemic) if leave_one_out else (None, None)
    dec = UncertaintyDecomposition(
        prompts=list(pred.prompts),
        var_image=var_i, var_text=var_t, var_interaction=var_x,
        share_image=share_i, share_text=share_t, share_interaction=share_x,
        total_entropy=total, aleatoric=aleatoric, epistemic=epistemic,
        variance_contribution=var / var.sum(-1, keepdim=True).clamp_min(torch.finfo(var.dtype).tiny),
        entropy_drop=drops[0], epistemic_drop=drops[1],
        rank_by=rank_by, ranking=torch.empty(0, dtype=torch.long),
        num_samples=s, seed=seed, link=pred.link,
    )
    dec.ranking = torch.argsort(_score(dec, rank_by), dim=-1, descending=True, stable=True)
    return dec


def _leave_one_out(samples: torch.Tensor, link: Link, total: torch.Tensor,
                   epistemic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H(all) − H(all∖c), MI(all) − MI(all∖c))`` [N, C] with the draws restricted to the other prompts."""
    s, n, c = samples.shape
    if link == "sigmoid":  # independent Bernoullis: every entropy is a sum over prompts
        p = torch.sigmoid(samples)
        h = bernoulli_entropy(p)  # [S, N, C]
        tot_c = bernoulli_entropy(p.mean(0))  # [N, C]
        return tot_c, tot_c - h.mean(0)
    if c == 1:  # one prompt: the softmax is 1, nothing to remove
        zero = samples.new_zeros(n, c)
        return zero, zero
    ent_drop, mi_drop = samples.new_empty(n, c), samples.new_empty(n, c)
    chunk = max(1, _CHUNK_ELEMENTS // (s * c))
    for i in range(n):
        z = samples[:, i]  # [S, C]
        for start in range(0, c, chunk):
            idx = torch.arange(start, min(c, start + chunk))
            zz = z[:, None, :].repeat(1, len(idx), 1)  # [S, k, C]
            zz[:, torch.arange(len(idx)), idx] = float("-inf")
            q = torch.softmax(zz, dim=-1)  # the removed prompt gets exactly 0
            alea = categorical_entropy(q).mean(0)  # [k]
            tot = categorical_entropy(q.mean(0))
            ent_drop[i, idx] = total[i] - tot
            mi_drop[i, idx] = epistemic[i] - (tot - alea)
    return ent_drop, mi_drop

