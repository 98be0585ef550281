"""Active learning with the posterior (method.md §6): choose labels from a pool to adapt to a target style.

One run (strategy, seed) starts from the model and its posterior and repeats, ``rounds`` times:

1. **score** the pool with the current state: ``random``, ``entropy`` (predictive entropy), ``bald`` or
   ``epig`` targeted at unlabelled inputs of the target style (:mod:`bayesvlm_explain.selection`). The
   class-probability draws of pool *and* targets come from one call of
   :meth:`BayesVLM.sample_logits_features` on the concatenated image features, so draw ``s`` of every
   input uses the same weight sample (the reference's B4: independent draws make EPIG noise);
2. **select** the ``k`` best unlabelled pool inputs and add them to the support set;
3. **adapt** the image projection on the whole support set, from the original weights: ``steps`` full-batch
   Adam steps on the zero-shot classification loss against the class prompts (softmax cross-entropy, or
   per-class sigmoid for a SigLIP-style model). Only features change: ``μ' = μ + ΔW x̃``;
4. **update the posterior** on a copy (never the model's, B18) with
   :func:`bayesvlm_explain.fitting.update_posterior`: the support set's KFAC sums at the adapted weights,
   with the model's own likelihood (B3), are added to the stored sums, ``A_sum = √N·A + Σ x̃x̃ᵀ`` (a
   [p, p] outer-product sum, not the scalar ``‖x̃‖²``, B2) and ``B_sum = √N·B + Σ H``, re-scaled by
   ``1/√(N + |support|)`` (method.md §2.2, the count not hard-coded), and ``λ`` re-optimised by the
   marginal likelihood at the adapted weights (§2.5);
5. **evaluate** on labelled test inputs of the target style: accuracy, ECE (20 bins), NLPD of the
   Bayesian (probit) predictive, and the deterministic model's accuracy and ECE.

:func:`run_active_learning` runs every strategy for every seed on :class:`ActiveLearningData`;
:func:`folder_active_learning_data` builds that data from users' labelled images (the bundled model's
emoji experiment builds it in ``tools/emoji_active_learning.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..adapters import Features
from ..fitting.update import update_posterior
from ..options import CHOICES
from ..posterior import KronPosterior, Posterior
from ..selection import pool_scores, top_k
from .evaluate import with_posterior
from .metrics import calibration_metrics

if TYPE_CHECKING:
    from ..model import BayesVLM

STRATEGIES: tuple[str, ...] = CHOICES["strategy"]


@dataclass
class ActiveLearningData:
    """Image features of a labelled pool, unlabelled targets and a labelled test set, and the prompts.

    ``pool`` [N, ·] with ``pool_labels`` [N]; ``target`` [M, ·] (EPIG's unlabelled target inputs);
    ``test`` [T, ·] with ``test_labels`` [T]; ``txt`` [C, ·] the class prompts' features.
    """

    pool: Features
    pool_labels: torch.Tensor
    target: Features
    test: Features
    test_labels: torch.Tensor
    txt: Features
    prompts: list[str]
    description: str = ""


@dataclass
class ActiveLearningConfig:
    """Budgets and knobs of one experiment.

    ``rounds`` selections of ``k`` labels each (budgets 0, k, …, rounds·k); per seed a random
    ``pool_fraction`` of the pool and ``num_targets`` EPIG targets are drawn; ``num_samples`` posterior
    draws score the pool; adaptation takes ``steps`` Adam steps of learning rate ``lr`` with the
    posterior as a prior tempered by ``prior_weight`` (1: the exact Bayesian update, which with the
    bundled posterior's 14,336 pairs barely moves; 0: plain fine-tuning, which overfits a few labels).
    """

    k: int = 10
    rounds: int = 5
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    strategies: Sequence[str] = STRATEGIES
    pool_fraction: float = 0.5
    num_targets: int = 64
    num_samples: int = 64
    steps: int = 30
    lr: float = 1e-2
    prior_weight: float = 0.1
    ece_bins: int = 20

    def budgets(self) -> list[int]:
        return [self.k * r for r in range(self.rounds + 1)]


def config_from_arguments(args: argparse.Namespace) -> ActiveLearningConfig:
    """The :class:`ActiveLearningConfig` of the ``bayesvlm-explain active-learning`` options (``--k``,
    ``--rounds``, ``--seeds``, ``--strategies``, ``--num-targets``, ``--mc-samples``, ``--steps``, ``--lr``,
    ``--prior-weight``, ``--pool-fraction``)."""
    return ActiveLearningConfig(
        k=args.k, rounds=args.rounds, seeds=[int(s) for s in args.seeds.split(",")],
        strategies=args.strategies.split(","), num_targets=args.num_targets, num_samples=args.mc_samples,
        steps=args.steps, lr=args.lr, prior_weight=args.prior_weight, pool_fraction=args.pool_fraction)


def _rows(x: Features, idx: torch.Tensor) -> Features:
    return Features(x.activations[idx], x.embeddings[idx])


@dataclass
class AdaptedState:
    """An adapted image projection ``W* + delta`` (``delta`` [D, p(+1)]) and its updated posterior."""

    delta: torch.Tensor
    posterior: Posterior

    def shift(self, vlm: BayesVLM, x: Features) -> Features:
        """Features under the adapted projection: ``μ + delta x̃``."""
        return Features(x.activations, x.embeddings + vlm.adapter.image.augment(x.activations) @ self.delta.T)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Summed zero-shot loss of logits [N, C]: softmax cross-entropy (``"infonce"``) or one-vs-rest sigmoid."""
    if likelihood == "sigmoid":
        onehot = torch.nn.functional.one_hot(labels, logits.shape[1]).to(logits.dtype)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="sum")
    return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")


def kron_quadratic(delta: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``vec(Δ)ᵀ (A ⊗ B) vec(Δ) = tr(Δᵀ B Δ A)`` for ``Δ`` [D, p], ``A`` [p, p], ``B`` [D, D] (column-stacking vec)."""
    return (delta * (b @ delta @ a)).sum()


def adapt_projection(vlm: BayesVLM, support: Features, labels: torch.Tensor, txt: Features, *, steps: int,
                     lr: float, prior: KronPosterior | None = None, prior_weight: float = 1.0) -> torch.Tensor:
    """``ΔW`` [D, p(+1)] after ``steps`` full-batch Adam steps from ``W*`` on the support set's loss.

    With ``prior`` (the image side's posterior) the objective is the MAP one of a Bayesian update,
    ``Σ loss + ½ w · vec(ΔW)ᵀ (Ã ⊗ B̃) vec(ΔW) = Σ loss + ½ w · tr(ΔWᵀ B̃ ΔW Ã)`` (column-stacking
    ``vec``, method.md §2.4), which keeps the adapted weights where the original data put them.
    """
    proj = vlm.adapter.image
    x = proj.augment(support.activations)
    delta = torch.zeros(proj.dim_out, x.shape[1], dtype=torch.float64, requires_grad=True)
    precision = prior.precision_factors() if prior is not None else None  # (Ã, B̃)
    opt = torch.optim.Adam([delta], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        logits = vlm.map_logits(Features(support.activations, support.embeddings + x @ delta.T), txt)
        loss = classification_loss(logits, labels, vlm.adapter.likelihood)
        if precision is not None:
            loss = loss + 0.5 * prior_weight * kron_quadratic(delta, *precision)
        (loss / len(labels)).backward()
        opt.step()
    return delta.detach()


def acquisition_scores(vlm: BayesVLM, strategy: str, pool: Features, target: Features, txt: Features,
                       num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Scores [N] of the pool inputs (higher = pick first); ``random`` gives uniform noise."""
    if strategy == "random":
        return torch.rand(pool.activations.shape[0], generator=generator, dtype=torch.float64)
    if strategy not in ("entropy", "bald", "epig"):
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    return pool_scores(vlm, pool, txt, num_samples, generator, target=target)[strategy]  # joint draws


def evaluate_state(vlm: BayesVLM, state: AdaptedState, data: ActiveLearningData,
                   ece_bins: int = 20) -> dict[str, float]:
    """Bayesian (probit) and deterministic metrics of the adapted model on the test set."""
    view = with_posterior(vlm, state.posterior)
    pred = view.predict_features(state.shift(vlm, data.test), data.txt, data.prompts)
    bayes = calibration_metrics(pred.probs, data.test_labels, ece_bins)
    det = calibration_metrics(pred.map_probs, data.test_labels, ece_bins)
    return {"accuracy": bayes["accuracy"], "ece": bayes["ece"], "nlpd": bayes["nlpd"],
            "map_accuracy": det["accuracy"], "map_ece": det["ece"],
            "prior_precision": state.posterior.image.prior_precision}


def run_strategy(vlm: BayesVLM, data: ActiveLearningData, strategy: str, seed: int, config: ActiveLearningConfig
                 ) -> list[dict[str, Any]]:
    """One (strategy, seed) run: a row per budget with the test metrics after adapting on that budget."""
    gen = torch.Generator().manual_seed(seed)
    n_pool = data.pool_labels.numel()
    keep = max(config.k * config.rounds, round(config.pool_fraction * n_pool))
    pool_idx = torch.randperm(n_pool, generator=gen)[:keep]
    target_idx = torch.randperm(data.target.activations.shape[0], generator=gen)[:config.num_targets]
    pool, labels, target = _rows(data.pool, pool_idx), data.pool_labels[pool_idx], _rows(data.target, target_idx)
    base = vlm.require_posterior()
    delta = torch.zeros(vlm.adapter.image.dim_out, vlm.adapter.image.dim_in, dtype=torch.float64)
    state = AdaptedState(delta, base)
    chosen = torch.zeros(0, dtype=torch.long)
    rows = []
    strategy_gen = torch.Generator().manual_seed(seed * 7919 + STRATEGIES.index(strategy) + 1)
    for budget in config.budgets():
        rows.append({"strategy": strategy, "budget": budget, "seed": seed,
                     **evaluate_state(vlm, state, data, config.ece_bins),
                     "support_classes": int(labels[chosen].unique().numel())})
        if budget == config.budgets()[-1]:
            break
        view = with_posterior(vlm, state.posterior)
        scores = acquisition_scores(view, strategy, state.shift(vlm, pool), state.shift(vlm, target), data.txt,
                                    config.num_samples, strategy_gen)
        chosen = torch.cat([chosen, top_k(scores, config.k, exclude=chosen)])
        support = _rows(pool, chosen)
        delta = adapt_projection(vlm, support, labels[chosen], data.txt, steps=config.steps, lr=config.lr,
                                 prior=base.image if config.prior_weight > 0 else None,
                                 prior_weight=config.prior_weight)
        state = AdaptedState(delta, update_posterior(vlm, base, support, data.txt, delta))
    return rows


_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (table to 20, then Cornish-Fisher)."""
    if df < 1:
        raise ValueError("df must be at least 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def summarise(rows: list[dict[str, Any]], metrics: Sequence[str] = ("accuracy", "ece")) -> list[dict[str, Any]]:
    """Mean and 95 % t-interval over seeds per (strategy, budget), and the paired difference to random."""
    def interval(values: list[float]) -> tuple[float, float, float]:
        t = torch.tensor(values, dtype=torch.float64)
        mean = float(t.mean())
        if len(values) < 2:
            return mean, math.nan, math.nan
        half = t_quantile_975(len(values) - 1) * float(t.std()) / math.sqrt(len(values))
        return mean, mean - half, mean + half

    key = {(r["strategy"], r["budget"], r["seed"]): r for r in rows}
    out = []
    for strategy, budget in dict.fromkeys((r["strategy"], r["budget"]) for r in rows):
        seeds = sorted(s for (st, b, s) in key if st == strategy and b == budget)
        entry: dict[str, Any] = {"strategy": strategy, "budget": budget, "seeds": len(seeds)}
        for m in metrics:
            values = [key[strategy, budget, s][m] for s in seeds]
            entry[m], entry[f"{m}_ci_low"], entry[f"{m}_ci_high"] = interval(values)
            paired = [key[strategy, budget, s][m] - key["random", budget, s][m] for s in seeds
                      if ("random", budget, s) in key]
            if strategy != "random" and paired:
                d, lo, hi = interval(paired)
                entry[f"{m}_minus_random"], entry[f"{m}_minus_random_ci"] = d, [lo, hi]
        out.append(entry)
    return out


def run_active_learning(vlm: BayesVLM, data: ActiveLearningData, config: ActiveLearningConfig | None = None,
                        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every strategy × seed; returns the ``active_learning.json`` payload (``rows``, ``summary``, ``settings``).

    ``vlm`` and its posterior are left as they were (each run works on copies).
    """
    config = config or ActiveLearningConfig()
    unknown = [s for s in config.strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; expected some of {STRATEGIES}")
    if vlm.posterior is None:
        raise ValueError("active learning needs a posterior")
    start = time.perf_counter()
    rows = []
    for seed in config.seeds:
        for strategy in config.strategies:
            t0 = time.perf_counter()
            rows += run_strategy(vlm, data, strategy, seed, config)
            if progress:
                last = rows[-1]
                progress(f"seed {seed} {strategy:8s} budget {last['budget']}: accuracy {last['accuracy']:.3f}, "
                         f"ECE {last['ece']:.3f} ({time.perf_counter() - t0:.1f} s)")
    settings = {k: (list(v) if isinstance(v, tuple | list) else v) for k, v in vars(config).items()}
    settings.update(data=data.description, pool=int(data.pool_labels.numel()),
                    targets=int(data.target.activations.shape[0]), test=int(data.test_labels.numel()),
                    classes=len(data.prompts), seconds=time.perf_counter() - start)
    return {"rows": rows, "summary": summarise(rows), "settings": settings}


def learning_curve_figure(payload: dict[str, Any]) -> Any:
    """Accuracy and ECE on the target style vs budget, mean and 95 % interval over seeds per strategy."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("accuracy", "ece"), strict=True):
        for strategy in dict.fromkeys(r["strategy"] for r in payload["summary"]):
            s = [r for r in payload["summary"] if r["strategy"] == strategy]
            budgets = [r["budget"] for r in s]
            ax.plot(budgets, [r[metric] for r in s], marker="o", label=strategy)
            ax.fill_between(budgets, [r[f"{metric}_ci_low"] for r in s], [r[f"{metric}_ci_high"] for r in s],
                            alpha=0.15)
        ax.set_xlabel("labels (budget)")
        ax.set_ylabel(f"{metric} on the target style")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    st = payload["settings"]
    fig.suptitle(f"active learning on {st.get('target_style', 'the target')}: {st.get('pool', '?')} pool images, "
                 f"{st.get('test', '?')} test images, {len(st.get('seeds', []))} seeds (95% intervals)",
                 fontsize="small")
    return fig


def summary_markdown(payload: dict[str, Any]) -> str:
    """A Markdown table: mean [95 % CI] of accuracy and ECE per strategy and budget, and the paired
    difference to random."""
    lines = ["| strategy | budget | accuracy | ECE | accuracy − random | ECE − random |", "|---|---|---|---|---|---|"]

    def fmt(r: dict[str, Any], m: str) -> str:
        return f"{r[m]:.3f} [{r[m + '_ci_low']:.3f}, {r[m + '_ci_high']:.3f}]"

    def diff(r: dict[str, Any], m: str) -> str:
        if f"{m}_minus_random" not in r:
            return ""
        lo, hi = r[f"{m}_minus_random_ci"]
        return f"{r[m + '_minus_random']:+.3f} [{lo:+.3f}, {hi:+.3f}]"

    for r in sorted(payload["summary"], key=lambda r: (r["budget"], STRATEGIES.index(r["strategy"]))):
        lines.append(f"| {r['strategy']} | {r['budget']} | {fmt(r, 'accuracy')} | {fmt(r, 'ece')} | "
                     f"{diff(r, 'accuracy')} | {diff(r, 'ece')} |")
    return "\n".join(lines) + "\n"


def write_results(payload: dict[str, Any], out_dir: str | Path) -> Path:
    """``active_learning.json``, ``active_learning.md`` and ``active_learning.png``; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "active_learning.json").write_text(json.dumps(payload, indent=2))
    (out / "active_learning.md").write_text(summary_markdown(payload))
    learning_curve_figure(payload).savefig(out / "active_learning.png", dpi=90)
    return out / "active_learning.json"


def folder_active_learning_data(vlm: BayesVLM, pool: Any, test: Any, *, target: Any = None,
                                classnames: list[str] | None = None, template: str = "a photo of a {}.",
                                cache_dir: str | Path | None = None, progress: bool = True) -> ActiveLearningData:
    """:class:`ActiveLearningData` from users' labelled data (any source :func:`.evaluate.open_labeled` reads).

    The pool's classes (or ``classnames``) are the classes of the test set too; EPIG's targets are the
    images of ``target`` (labels unused) or, by default, the test images themselves (unlabelled).
    """
    from .evaluate import class_prompts, encode_labeled, open_labeled

    pool_data = open_labeled(pool, classnames)
    names = pool_data.classnames
    enc = {name: encode_labeled(vlm, open_labeled(src, names) if name != "pool" else pool_data,
                                cache_dir=cache_dir, progress=progress)
           for name, src in (("pool", pool), ("test", test), ("target", target)) if src is not None}
    prompts = class_prompts(names, template)
    return ActiveLearningData(enc["pool"].features, enc["pool"].labels, enc.get("target", enc["test"]).features,
                              enc["test"].features, enc["test"].labels, vlm.encode_prompts(prompts), prompts,
                              f"pool: {pool_data.description}; test: {test}; target: {target or 'the test images'}")
