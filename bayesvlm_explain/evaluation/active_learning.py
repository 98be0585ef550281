"""Active learning with the posterior (method.md §6): choose labels from a pool to adapt to a target domain.

Before the strategies, :func:`run_active_learning` sets the **learner** up and checks it: with a
``knob_grid`` its knobs ``(prior_weight, steps, lr)`` are chosen on a validation split of the target
domain (:func:`choose_knobs`, never on test), and :func:`learner_sanity` reports what it can achieve
(support-set fit, random target-domain vs in-domain labels, the "all target labels" / "all pool labels"
ceilings), so the gap a strategy could win is known.

One run (strategy, seed) starts from the model and its posterior and repeats, ``rounds`` times:

1. **select** ``k`` unlabelled pool inputs (:func:`select_batch`): ``random``; ``map_entropy`` (the entropy
   of the MAP softmax, the paper's "Entropy"); ``entropy`` (posterior predictive entropy); ``bald``;
   ``epig`` targeted at unlabelled inputs of the target domain, pool and targets drawn jointly by one
   :meth:`BayesVLM.sample_logits_features` call (the reference's B4: independent draws make EPIG noise);
   ``targeted_map_entropy`` (the paper's targeted variant: the targets of highest MAP entropy, each mapped
   to its nearest pool input by cosine or the 2-Wasserstein distance of the embedding posteriors)
   (:mod:`bayesvlm_explain.selection`);
2. **adapt** the image projection on the whole support set, from the original weights (:func:`fit_learner`):
   ``steps`` full-batch Adam steps on the zero-shot classification loss against the class prompts
   (softmax cross-entropy, or per-class sigmoid for a SigLIP-style model) plus the posterior as a prior
   weighted by ``prior_weight`` (0: plain fine-tuning). Only features change: ``μ' = μ + ΔW x̃``;
3. **update the posterior** on a copy (never the model's, B18) with
   :func:`bayesvlm_explain.fitting.update_posterior`: the support set's KFAC sums at the adapted weights,
   with the model's own likelihood (B3), are added to the stored sums, ``A_sum = √N·A + Σ x̃x̃ᵀ`` (a
   [p, p] outer-product sum, not the scalar ``‖x̃‖²``, B2) and ``B_sum = √N·B + Σ H``, re-scaled by
   ``1/√(N + |support|)`` (method.md §2.2, the count not hard-coded), and ``λ`` re-optimised by the
   marginal likelihood at the adapted weights (§2.5);
4. **evaluate** on labelled test inputs of the target domain: accuracy, ECE (20 bins), NLPD of the
   Bayesian (probit) predictive under the updated posterior, and the deterministic (MAP) model's accuracy
   and ECE: the two learners of the protocol.

:func:`run_active_learning` runs every strategy for every seed on :class:`ActiveLearningData` (whose
optional source-image groups are checked for split leaks, :func:`check_split_hygiene`);
:func:`folder_active_learning_data` builds that data from users' labelled images (the bundled model's
emoji experiment builds it in ``tools/emoji_active_learning.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..adapters import Features
from ..fitting.update import update_posterior
from ..options import CHOICES
from ..posterior import KronPosterior, Posterior
from ..selection import NEIGHBOUR_DISTANCES, SCORES, neighbour_distances, pool_scores, targeted_picks, top_k
from .evaluate import with_posterior
from .metrics import calibration_metrics

if TYPE_CHECKING:
    from ..model import BayesVLM

STRATEGIES: tuple[str, ...] = CHOICES["strategy"]
KnobSetting = tuple[float, int, float]
"""A learner setting ``(prior_weight, steps, lr)``."""


def _rows(x: Features, idx: torch.Tensor) -> Features:
    return Features(x.activations[idx], x.embeddings[idx])


@dataclass
class ActiveLearningData:
    """Image features of a labelled pool, unlabelled targets, a labelled test set and the prompts.

    ``pool`` [N, ·] with ``pool_labels`` [N]; ``target`` [M, ·] (EPIG's and the targeted strategy's
    unlabelled target-domain inputs); ``test`` [T, ·] with ``test_labels`` [T]; ``txt`` [C, ·] the class
    prompts' features. Optional: ``val`` [V, ·] with ``val_labels`` [V], a validation split of the target
    domain (the learner's knobs are chosen on it, never on test); ``pool_in_target`` [N] bool, which pool
    rows come from the target domain (for the learner's sanity checks); ``pool_groups`` / ``val_groups`` /
    ``test_groups``, the source image of every row (augmented draws of one image share it): given, they must
    be disjoint between the pool and val/test and between val and test (:func:`check_split_hygiene`).
    """

    pool: Features
    pool_labels: torch.Tensor
    target: Features
    test: Features
    test_labels: torch.Tensor
    txt: Features
    prompts: list[str]
    description: str = ""
    val: Features | None = None
    val_labels: torch.Tensor | None = None
    pool_in_target: torch.Tensor | None = None
    pool_groups: list[str] | None = None
    val_groups: list[str] | None = None
    test_groups: list[str] | None = None

    def __post_init__(self) -> None:
        for name, feats, labels in (("pool", self.pool, self.pool_labels), ("test", self.test, self.test_labels),
                                    ("val", self.val, self.val_labels)):
            if (feats is None) != (labels is None):
                raise ValueError(f"{name} needs both features and labels")
            if feats is not None and labels is not None and feats.activations.shape[0] != labels.numel():
                raise ValueError(f"{name}: {feats.activations.shape[0]} images but {labels.numel()} labels")
        if self.pool_in_target is not None and self.pool_in_target.shape != self.pool_labels.shape:
            raise ValueError("pool_in_target must be [N] like pool_labels")
        check_split_hygiene(self)


def check_split_hygiene(data: ActiveLearningData) -> None:
    """Raise ``ValueError`` if a source image (group) of the test or validation split is also in the pool
    (any augmented draw of it), or one of the test split in the validation split."""
    groups = {"pool": data.pool_groups, "val": data.val_groups, "test": data.test_groups}
    sizes = {"pool": data.pool_labels.numel(), "test": data.test_labels.numel(),
             "val": None if data.val_labels is None else data.val_labels.numel()}
    for name, g in groups.items():
        if g is not None and len(g) != sizes[name]:
            raise ValueError(f"{name}_groups has {len(g)} entries for {sizes[name]} rows")
    for a, b in (("pool", "test"), ("pool", "val"), ("val", "test")):
        ga, gb = groups[a], groups[b]
        if ga is not None and gb is not None:
            shared = sorted(set(ga) & set(gb))
            if shared:
                raise ValueError(f"split leak: {len(shared)} {b} images are also in the {a}, e.g. {shared[:3]}")


@dataclass
class ActiveLearningConfig:
    """Budgets and knobs of one experiment.

    ``rounds`` selections of ``k`` labels each (budgets 0, k, …, rounds·k); per seed a random
    ``pool_fraction`` of the pool and ``num_targets`` targets are drawn; ``num_samples`` posterior draws
    score the pool. The learner: ``steps`` full-batch Adam steps of learning rate ``lr`` from the original
    weights, with the posterior as a prior tempered by ``prior_weight`` (1: the exact Bayesian update; 0:
    plain fine-tuning). With a ``knob_grid`` of ``(prior_weight, steps, lr)`` and validation data, the
    learner's knobs are the grid's best mean validation accuracy after random labels, over the budgets
    ``knob_budgets`` and the draws ``knob_seeds``, instead. ``sanity`` runs :func:`learner_sanity` at
    ``sanity_budget`` labels. ``neighbour_distance`` maps the targeted strategy's targets to pool inputs
    (``"cosine"`` or ``"wasserstein"``, :func:`~bayesvlm_explain.selection.neighbour_distances`).
    """

    k: int = 10
    rounds: int = 5
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    strategies: Sequence[str] = ("random", "map_entropy", "entropy", "bald", "epig")
    pool_fraction: float = 0.5
    num_targets: int = 64
    num_samples: int = 64
    steps: int = 300
    lr: float = 1e-2
    prior_weight: float = 1e-3
    ece_bins: int = 20
    knob_grid: Sequence[KnobSetting] = ()
    knob_budgets: Sequence[int] = (20, 50, 100)
    knob_seeds: Sequence[int] = (100, 101, 102)
    sanity: bool = True
    sanity_budget: int = 50
    neighbour_distance: str = "cosine"

    def budgets(self) -> list[int]:
        return [self.k * r for r in range(self.rounds + 1)]

    @property
    def knobs(self) -> KnobSetting:
        return self.prior_weight, self.steps, self.lr


def parse_knob_grid(text: str) -> list[KnobSetting]:
    """``"1e-3:300:0.01,0.1:30:0.01"`` -> ``[(0.001, 300, 0.01), (0.1, 30, 0.01)]`` (prior weight:steps:lr)."""
    grid = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        parts = item.split(":")
        if len(parts) != 3:
            raise ValueError(f"knob setting {item!r} is not prior_weight:steps:lr")
        grid.append((float(parts[0]), int(parts[1]), float(parts[2])))
    return grid


def config_from_arguments(args: argparse.Namespace) -> ActiveLearningConfig:
    """The :class:`ActiveLearningConfig` of the ``bayesvlm-explain active-learning`` options (``--k``,
    ``--rounds``, ``--seeds``, ``--strategies``, ``--num-targets``, ``--mc-samples``, ``--steps``, ``--lr``,
    ``--prior-weight``, ``--pool-fraction``, ``--knob-grid``, ``--no-sanity``, ``--neighbour-distance``)."""
    return ActiveLearningConfig(
        k=args.k, rounds=args.rounds, seeds=[int(s) for s in args.seeds.split(",")],
        strategies=args.strategies.split(","), num_targets=args.num_targets, num_samples=args.mc_samples,
        steps=args.steps, lr=args.lr, prior_weight=args.prior_weight, pool_fraction=args.pool_fraction,
        knob_grid=parse_knob_grid(args.knob_grid or ""), sanity=not args.no_sanity,
        neighbour_distance=args.neighbour_distance)


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


def fit_learner(vlm: BayesVLM, support: Features, labels: torch.Tensor, txt: Features, knobs: KnobSetting,
                *, update: bool = True) -> AdaptedState:
    """The learner on a support set: the MAP fine-tune of the image projection from the original weights
    (:func:`adapt_projection` with ``knobs = (prior_weight, steps, lr)``) and, with ``update``, the Bayesian
    update of the posterior at the adapted weights (:func:`~bayesvlm_explain.fitting.update_posterior`);
    without it the posterior stays the model's."""
    base = vlm.require_posterior()
    prior_weight, steps, lr = knobs
    delta = adapt_projection(vlm, support, labels, txt, steps=steps, lr=lr,
                             prior=base.image if prior_weight > 0 else None, prior_weight=prior_weight)
    return AdaptedState(delta, update_posterior(vlm, base, support, txt, delta) if update else base)


def map_accuracy(vlm: BayesVLM, delta: torch.Tensor, images: Features, labels: torch.Tensor,
                 txt: Features) -> float:
    """Accuracy of the deterministic prediction under the projection ``W* + delta``."""
    shifted = Features(images.activations, images.embeddings + vlm.adapter.image.augment(images.activations) @ delta.T)
    return float((vlm.map_logits(shifted, txt).argmax(-1) == labels).double().mean())


def select_batch(vlm: BayesVLM, strategy: str, pool: Features, target: Features, txt: Features, k: int,
                 chosen: torch.Tensor, num_samples: int, generator: torch.Generator,
                 neighbour_distance: str = "cosine") -> torch.Tensor:
    """The ``k`` next pool indices (none of ``chosen``) by ``strategy`` under ``vlm`` and its posterior.

    ``random``, ``map_entropy``, ``entropy``, ``bald`` and ``epig`` take the top scores of the pool
    (:func:`acquisition_scores`); ``targeted_map_entropy`` scores the targets by MAP entropy and maps the
    best ones to their nearest pool inputs (:func:`~bayesvlm_explain.selection.targeted_picks`) by
    ``neighbour_distance`` (``"cosine"`` or ``"wasserstein"``, :func:`~bayesvlm_explain.selection.neighbour_distances`).
    """
    if strategy == "targeted_map_entropy":
        scores = pool_scores(vlm, target, txt, num_samples, generator, which=("map_entropy",))["map_entropy"]
        return targeted_picks(scores, neighbour_distances(vlm, target, pool, neighbour_distance), k, exclude=chosen)
    return top_k(acquisition_scores(vlm, strategy, pool, target, txt, num_samples, generator), k, exclude=chosen)


def acquisition_scores(vlm: BayesVLM, strategy: str, pool: Features, target: Features, txt: Features,
                       num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Scores [N] of the pool inputs (higher = pick first); ``random`` gives uniform noise."""
    if strategy == "random":
        return torch.rand(pool.activations.shape[0], generator=generator, dtype=torch.float64)
    if strategy not in SCORES:
        raise ValueError(f"unknown strategy {strategy!r}; pool scores are random or one of {SCORES}")
    return pool_scores(vlm, pool, txt, num_samples, generator, target=target, which=(strategy,))[strategy]


def evaluate_state(vlm: BayesVLM, state: AdaptedState, images: Features, labels: torch.Tensor, txt: Features,
                   prompts: list[str], ece_bins: int = 20) -> dict[str, float]:
    """Bayesian (probit, the updated posterior) and deterministic metrics of the adapted model on
    ``images`` [T, ·] with ``labels`` [T]."""
    view = with_posterior(vlm, state.posterior)
    pred = view.predict_features(state.shift(vlm, images), txt, prompts)
    bayes = calibration_metrics(pred.probs, labels, ece_bins)
    det = calibration_metrics(pred.map_probs, labels, ece_bins)
    return {"accuracy": bayes["accuracy"], "ece": bayes["ece"], "nlpd": bayes["nlpd"],
            "map_accuracy": det["accuracy"], "map_ece": det["ece"],
            "prior_precision": state.posterior.image.prior_precision}


def _random_subset(index: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    return index[torch.randperm(index.numel(), generator=generator)[:size]]


def choose_knobs(vlm: BayesVLM, data: ActiveLearningData, config: ActiveLearningConfig
                 ) -> tuple[KnobSetting, list[dict[str, Any]]]:
    """The grid setting with the best mean **validation** accuracy (deterministic prediction) after random
    pool labels (every budget of ``knob_budgets`` × every seed of ``knob_seeds``, the same draws for every
    setting); and the table of all settings."""
    if data.val is None or data.val_labels is None:
        raise ValueError("choosing the learner's knobs needs a validation split of the target domain (data.val)")
    everything = torch.arange(data.pool_labels.numel())
    supports = [_random_subset(everything, b, torch.Generator().manual_seed(s))
                for b in config.knob_budgets for s in config.knob_seeds]
    table: list[dict[str, Any]] = []
    for knobs in config.knob_grid:
        accs = [map_accuracy(vlm, fit_learner(vlm, _rows(data.pool, idx), data.pool_labels[idx], data.txt, knobs,
                                              update=False).delta, data.val, data.val_labels, data.txt)
                for idx in supports]
        table.append({"prior_weight": knobs[0], "steps": knobs[1], "lr": knobs[2],
                      "val_map_accuracy": sum(accs) / len(accs)})
    best = max(table, key=lambda r: r["val_map_accuracy"])
    return (float(best["prior_weight"]), int(best["steps"]), float(best["lr"])), table


def learner_sanity(vlm: BayesVLM, data: ActiveLearningData, config: ActiveLearningConfig,
                   seeds: Sequence[int] = (200, 201, 202)) -> dict[str, Any]:
    """What the learner can achieve with ``config.knobs``, on the test split (reported, never used to choose).

    * ``zero_shot``: no labels;
    * ``support_fit``: accuracy on its own support set of ``sanity_budget`` random pool labels (should be ≈ 1);
    * ``random_target`` / ``random_in_domain``: ``sanity_budget`` random labels from the pool's target-domain
      rows / its other rows (needs ``data.pool_in_target``): target labels should help more;
    * ``all_target`` / ``all_pool``: every target-domain pool label / every pool label (the ceilings).

    Test metrics are the :func:`evaluate_state` ones (mean over ``seeds`` for the random ones); ``checks``
    says whether the support fit reaches 0.9 and whether random target labels beat random in-domain ones.
    """
    def run(idx: torch.Tensor) -> tuple[dict[str, float], float]:
        state = fit_learner(vlm, _rows(data.pool, idx), data.pool_labels[idx], data.txt, config.knobs)
        fit = map_accuracy(vlm, state.delta, _rows(data.pool, idx), data.pool_labels[idx], data.txt)
        return evaluate_state(vlm, state, data.test, data.test_labels, data.txt, data.prompts, config.ece_bins), fit

    def mean_over_seeds(index: torch.Tensor) -> dict[str, float]:
        outs = [run(_random_subset(index, config.sanity_budget, torch.Generator().manual_seed(s))) for s in seeds]
        return {"accuracy": sum(o[0]["accuracy"] for o in outs) / len(outs),
                "map_accuracy": sum(o[0]["map_accuracy"] for o in outs) / len(outs),
                "support_fit": sum(o[1] for o in outs) / len(outs), "labels": min(config.sanity_budget, index.numel())}

    base = vlm.require_posterior()
    zero = evaluate_state(vlm, AdaptedState(torch.zeros(vlm.adapter.image.dim_out, vlm.adapter.image.dim_in,
                                                        dtype=torch.float64), base),
                          data.test, data.test_labels, data.txt, data.prompts, config.ece_bins)
    everything = torch.arange(data.pool_labels.numel())
    out: dict[str, Any] = {"knobs": {"prior_weight": config.prior_weight, "steps": config.steps, "lr": config.lr},
                           "zero_shot": {"accuracy": zero["accuracy"], "map_accuracy": zero["map_accuracy"]},
                           "random_pool": mean_over_seeds(everything)}
    all_pool, _ = run(everything)
    out["all_pool"] = {"accuracy": all_pool["accuracy"], "map_accuracy": all_pool["map_accuracy"],
                       "labels": int(everything.numel())}
    if data.pool_in_target is not None and data.pool_in_target.any() and (~data.pool_in_target).any():
        in_target = everything[data.pool_in_target]
        out["random_target"] = mean_over_seeds(in_target)
        out["random_in_domain"] = mean_over_seeds(everything[~data.pool_in_target])
        all_target, _ = run(in_target)
        out["all_target"] = {"accuracy": all_target["accuracy"], "map_accuracy": all_target["map_accuracy"],
                             "labels": int(in_target.numel())}
    out["checks"] = {"support_fit_at_least_0.9": out["random_pool"]["support_fit"] >= 0.9}
    if "random_target" in out:
        out["checks"]["random_target_beats_random_in_domain"] = (
            out["random_target"]["map_accuracy"] > out["random_in_domain"]["map_accuracy"])
    return out


def sanity_lines(sanity: dict[str, Any]) -> list[str]:
    """The sanity report as short lines (test accuracy: Bayesian / deterministic)."""
    k = sanity["knobs"]
    lines = [f"learner: prior weight {k['prior_weight']:g}, {k['steps']} Adam steps, lr {k['lr']:g}"]
    for name in ("zero_shot", "random_pool", "random_in_domain", "random_target", "all_target", "all_pool"):
        if name in sanity:
            r = sanity[name]
            extra = f", {r['labels']} labels" if "labels" in r else ""
            fit = f", support-set accuracy {r['support_fit']:.3f}" if "support_fit" in r else ""
            lines.append(f"{name.replace('_', ' ')}: test accuracy {r['accuracy']:.3f} (MAP {r['map_accuracy']:.3f})"
                         f"{extra}{fit}")
    lines += [f"check {name}: {'pass' if ok else 'FAIL'}" for name, ok in sanity["checks"].items()]
    return lines


def run_strategy(vlm: BayesVLM, data: ActiveLearningData, strategy: str, seed: int, config: ActiveLearningConfig
                 ) -> list[dict[str, Any]]:
    """One (strategy, seed) run: a row per budget with the test metrics after adapting on that budget."""
    gen = torch.Generator().manual_seed(seed)
    n_pool = data.pool_labels.numel()
    keep = min(n_pool, max(config.k * config.rounds, round(config.pool_fraction * n_pool)))
    pool_idx = torch.randperm(n_pool, generator=gen)[:keep]
    target_idx = torch.randperm(data.target.activations.shape[0], generator=gen)[:config.num_targets]
    pool, labels, target = _rows(data.pool, pool_idx), data.pool_labels[pool_idx], _rows(data.target, target_idx)
    in_target = data.pool_in_target[pool_idx] if data.pool_in_target is not None else None
    base = vlm.require_posterior()
    state = AdaptedState(torch.zeros(vlm.adapter.image.dim_out, vlm.adapter.image.dim_in, dtype=torch.float64), base)
    chosen = torch.zeros(0, dtype=torch.long)
    rows = []
    strategy_gen = torch.Generator().manual_seed(seed * 7919 + STRATEGIES.index(strategy) + 1)
    for budget in config.budgets():
        row = {"strategy": strategy, "budget": budget, "seed": seed,
               **evaluate_state(vlm, state, data.test, data.test_labels, data.txt, data.prompts, config.ece_bins),
               "support_classes": int(labels[chosen].unique().numel())}
        if in_target is not None:
            row["support_in_target"] = int(in_target[chosen].sum())
        rows.append(row)
        if budget == config.budgets()[-1]:
            break
        view = with_posterior(vlm, state.posterior)
        picks = select_batch(view, strategy, state.shift(vlm, pool), state.shift(vlm, target), data.txt, config.k,
                             chosen, config.num_samples, strategy_gen, config.neighbour_distance)
        chosen = torch.cat([chosen, picks])
        state = fit_learner(vlm, _rows(pool, chosen), labels[chosen], data.txt, config.knobs)
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


def summarise(rows: list[dict[str, Any]], metrics: Sequence[str] = ("accuracy", "map_accuracy", "ece")
              ) -> list[dict[str, Any]]:
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
            if any(m not in key[strategy, budget, s] for s in seeds):
                continue
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
    """Every strategy × seed; returns the ``active_learning.json`` payload: ``rows``, ``summary``, ``settings``,
    ``knobs`` (the validation table when ``config.knob_grid`` is given: the learner's knobs are then its best
    setting) and ``sanity`` (:func:`learner_sanity`, printed through ``progress``; unless ``config.sanity``
    is off).

    ``vlm`` and its posterior are left as they were (each run works on copies).
    """
    config = config or ActiveLearningConfig()
    unknown = [s for s in config.strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; expected some of {STRATEGIES}")
    if config.neighbour_distance not in NEIGHBOUR_DISTANCES:
        raise ValueError(f"unknown neighbour distance {config.neighbour_distance!r}; expected one of "
                         f"{NEIGHBOUR_DISTANCES}")
    if vlm.posterior is None:
        raise ValueError("active learning needs a posterior")
    say = progress or (lambda _line: None)
    start = time.perf_counter()
    knob_table: list[dict[str, Any]] = []
    if config.knob_grid:
        best, knob_table = choose_knobs(vlm, data, config)
        config = replace(config, prior_weight=best[0], steps=best[1], lr=best[2])
        for r in knob_table:
            say(f"knobs prior weight {r['prior_weight']:g}, {r['steps']} steps, lr {r['lr']:g}: validation "
                f"accuracy {r['val_map_accuracy']:.3f}")
    sanity = learner_sanity(vlm, data, config) if config.sanity else None
    for line in sanity_lines(sanity) if sanity else []:
        say(line)
    rows = []
    for seed in config.seeds:
        for strategy in config.strategies:
            t0 = time.perf_counter()
            rows += run_strategy(vlm, data, strategy, seed, config)
            last = rows[-1]
            say(f"seed {seed} {strategy:20s} budget {last['budget']}: accuracy {last['accuracy']:.3f}, "
                f"ECE {last['ece']:.3f} ({time.perf_counter() - t0:.1f} s)")
    settings = {k: ([list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple | list) else v)
                for k, v in vars(config).items()}
    settings.update(data=data.description, pool=int(data.pool_labels.numel()),
                    targets=int(data.target.activations.shape[0]), test=int(data.test_labels.numel()),
                    val=None if data.val_labels is None else int(data.val_labels.numel()),
                    pool_in_target=None if data.pool_in_target is None else int(data.pool_in_target.sum()),
                    classes=len(data.prompts), seconds=time.perf_counter() - start)
    return {"rows": rows, "summary": summarise(rows), "settings": settings, "knobs": knob_table, "sanity": sanity}


def learning_curve_figure(payload: dict[str, Any]) -> Any:
    """Test accuracy (Bayesian and deterministic) vs budget, mean and 95 % interval over seeds per strategy,
    with the sanity runs' zero-shot and ceilings as lines; and the paired accuracy difference to random."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.9), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (("accuracy", "accuracy (probit, updated posterior)"), ("map_accuracy", "accuracy (MAP)"),
              ("accuracy_minus_random", "accuracy − random, paired"))
    sanity = payload.get("sanity") or {}
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for strategy in dict.fromkeys(r["strategy"] for r in payload["summary"]):
            s = [r for r in payload["summary"] if r["strategy"] == strategy and metric in r]
            if not s:
                continue
            budgets = [r["budget"] for r in s]
            color = f"C{STRATEGIES.index(strategy) % 10}"  # one colour per strategy in every panel
            ax.plot(budgets, [r[metric] for r in s], marker="o", markersize=3, label=strategy, color=color)
            if metric.endswith("_minus_random"):
                low, high = [r[f"{metric}_ci"][0] for r in s], [r[f"{metric}_ci"][1] for r in s]
            else:
                low, high = [r[f"{metric}_ci_low"] for r in s], [r[f"{metric}_ci_high"] for r in s]
            ax.fill_between(budgets, low, high, alpha=0.12, color=color)
        if not metric.endswith("_minus_random"):
            key = "accuracy" if metric == "accuracy" else "map_accuracy"
            for name, style in (("zero_shot", ":"), ("all_target", "--"), ("all_pool", "-.")):
                if name in sanity:
                    ax.axhline(sanity[name][key], color="grey", linestyle=style, linewidth=1,
                               label=name.replace("_", " "))
        else:
            ax.axhline(0.0, color="grey", linewidth=1)
        ax.set_xlabel("labels (budget)")
        ax.set_ylabel(label, fontsize="small")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small")
    st = payload["settings"]
    fig.suptitle(f"active learning on {st.get('target_style', 'the target')}: {st.get('pool', '?')} pool images "
                 f"({st.get('pool_in_target') or 0} of the target domain), {st.get('test', '?')} test images, "
                 f"{len(st.get('seeds', []))} seeds (95% intervals); learner: prior weight "
                 f"{st.get('prior_weight')}, {st.get('steps')} steps, lr {st.get('lr')}", fontsize="small")
    return fig


def summary_markdown(payload: dict[str, Any]) -> str:
    """The learner's sanity report and knob table, then a Markdown table: mean [95 % CI] of accuracy (Bayesian
    and MAP) and ECE per strategy and budget, and the paired difference to random."""
    lines = []
    if payload.get("knobs"):
        lines += ["Learner knobs (validation split of the target domain, random labels):", "",
                  "| prior weight | steps | lr | validation accuracy (MAP) |", "|---|---|---|---|"]
        lines += [f"| {r['prior_weight']:g} | {r['steps']} | {r['lr']:g} | {r['val_map_accuracy']:.3f} |"
                  for r in payload["knobs"]]
        lines.append("")
    if payload.get("sanity"):
        lines += ["Learner sanity (test split, reported only):", ""]
        lines += [f"- {line}" for line in sanity_lines(payload["sanity"])]
        lines.append("")
    lines += ["| strategy | budget | accuracy | MAP accuracy | ECE | accuracy − random | MAP accuracy − random |",
              "|---|---|---|---|---|---|---|"]

    def fmt(r: dict[str, Any], m: str) -> str:
        return f"{r[m]:.3f} [{r[m + '_ci_low']:.3f}, {r[m + '_ci_high']:.3f}]" if m in r else ""

    def diff(r: dict[str, Any], m: str) -> str:
        if f"{m}_minus_random" not in r:
            return ""
        lo, hi = r[f"{m}_minus_random_ci"]
        return f"{r[m + '_minus_random']:+.3f} [{lo:+.3f}, {hi:+.3f}]"

    for r in sorted(payload["summary"], key=lambda r: (r["budget"], STRATEGIES.index(r["strategy"]))):
        lines.append(f"| {r['strategy']} | {r['budget']} | {fmt(r, 'accuracy')} | {fmt(r, 'map_accuracy')} | "
                     f"{fmt(r, 'ece')} | {diff(r, 'accuracy')} | {diff(r, 'map_accuracy')} |")
    return "\n".join(lines) + "\n"


def write_results(payload: dict[str, Any], out_dir: str | Path) -> Path:
    """``active_learning.json``, ``active_learning.md`` and ``active_learning.png``; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "active_learning.json").write_text(json.dumps(payload, indent=2))
    (out / "active_learning.md").write_text(summary_markdown(payload))
    learning_curve_figure(payload).savefig(out / "active_learning.png", dpi=90)
    return out / "active_learning.json"


def folder_active_learning_data(vlm: BayesVLM, pool: Any, test: Any, *, target: Any = None, val: Any = None,
                                classnames: list[str] | None = None, template: str = "a photo of a {}.",
                                cache_dir: str | Path | None = None, progress: bool = True) -> ActiveLearningData:
    """:class:`ActiveLearningData` from users' labelled data (any source :func:`.evaluate.open_labeled` reads).

    The pool's classes (or ``classnames``) are the classes of the test set too; ``val`` (optional) labelled
    validation images of the target domain, for choosing the learner's knobs. The targets (EPIG's, the
    targeted strategy's) are the images of ``target`` (labels unused), else the validation images, else the
    test images themselves (unlabelled).
    """
    from .evaluate import class_prompts, encode_labeled, open_labeled

    pool_data = open_labeled(pool, classnames)
    names = pool_data.classnames
    enc = {name: encode_labeled(vlm, open_labeled(src, names) if name != "pool" else pool_data,
                                cache_dir=cache_dir, progress=progress)
           for name, src in (("pool", pool), ("test", test), ("target", target), ("val", val)) if src is not None}
    prompts = class_prompts(names, template)
    targets = enc.get("target", enc.get("val", enc["test"]))
    return ActiveLearningData(
        enc["pool"].features, enc["pool"].labels, targets.features, enc["test"].features, enc["test"].labels,
        vlm.encode_prompts(prompts), prompts,
        f"pool: {pool_data.description}; test: {test}; val: {val}; target: {target or val or 'the test images'}",
        val=enc["val"].features if "val" in enc else None, val_labels=enc["val"].labels if "val" in enc else None)
