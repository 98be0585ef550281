"""bayesvlm-explain: post-hoc Bayesian uncertainty for CLIP-style models, explained.

>>> import bayesvlm_explain as bx
>>> vlm = bx.BayesVLM.from_pretrained("bundled")
>>> pred = vlm.predict(images, ["an emoji of a cat", "an emoji of a dog"])
>>> pred.mean, pred.var, pred.probs
"""

from .adapters import Features, OpenCLIPAdapter, UnsupportedModelError
from .explain import (
    AttributionResult,
    TokenAttribution,
    TokenAttributionResult,
    UncertaintyAttribution,
    UncertaintyDecomposition,
    decompose_uncertainty,
)
from .inputs import InputError
from .model import BayesVLM
from .posterior import KronPosterior, Posterior, PosteriorError
from .predictive import Prediction

__version__ = "0.1.0"

__all__ = [
    "AttributionResult",
    "TokenAttribution",
    "TokenAttributionResult",
    "UncertaintyAttribution",
    "UncertaintyDecomposition",
    "decompose_uncertainty",
    "BayesVLM",
    "Features",
    "InputError",
    "KronPosterior",
    "OpenCLIPAdapter",
    "Posterior",
    "PosteriorError",
    "Prediction",
    "UnsupportedModelError",
    "__version__",
]
