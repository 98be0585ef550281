"""What a fit reports, and the error it raises."""

from __future__ import annotations

from dataclasses import dataclass, field


class FitError(ValueError):
    """Fitting cannot proceed (empty data, a cache made for another model, a cache in use, ...)."""


@dataclass
class FitReport:
    """What a fit did: counts, skips by reason (:class:`~bayesvlm_explain.data.pairs.Skip`), timings (s),
    cache reuse and the chosen hyperparameters.

    ``recomputed`` names each cache file that was found corrupt, truncated or made from other data, and
    was therefore recomputed (shards) or discarded (KFAC checkpoints).
    """

    num_pairs: int = 0
    num_items: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    truncated_captions: int = 0
    num_class_batches: int = 0
    shards_computed: int = 0
    shards_reused: int = 0
    recomputed: list[str] = field(default_factory=list)
    feature_time_s: float = 0.0
    kfac_time_s: float = 0.0
    wall_time_s: float = 0.0
    prior_precision: dict[str, float] = field(default_factory=dict)
    pseudo_count: float = 1.0
