"""Fit the Kronecker posterior of a model on image-text pairs: streaming, resumable, multi-process.

The steps (method.md §2), one module each:

1. :mod:`.features` — the feature cache: activations and embeddings of both towers, computed once in
   shards, checked against the data and checksummed; an interrupted run resumes where it stopped.
2. :mod:`.accumulate` — KFAC sums over class batches, checkpointed after every batch.
3. :mod:`.reduce` — the sums of several processes (``torchrun``) combined by all-reduce.
4. :mod:`.prior` — the posterior formed from the sums, ``λ`` by marginal likelihood or fixed.

:mod:`.pipeline` runs them in order under a lock on the cache folder (:mod:`.files`). :mod:`.update`
adds the curvature of new labelled images to a fitted posterior (:func:`update_posterior`).
"""

from .files import CorruptFileError
from .pipeline import fit_posterior
from .prior import optimize_posterior_prior
from .report import FitError, FitReport
from .update import update_posterior

__all__ = ["CorruptFileError", "FitError", "FitReport", "fit_posterior", "optimize_posterior_prior",
           "update_posterior"]
