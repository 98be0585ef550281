"""bayesvlm-explain: post-hoc Bayesian uncertainty for CLIP-style models, explained.

>>> import bayesvlm_explain as bx
>>> vlm = bx.BayesVLM.from_pretrained()  # the offline model shipped with the package
>>> pred = vlm.predict(images, ["an emoji of a cat", "an emoji of a dog"])
>>> pred.mean, pred.var, pred.probs
"""

from importlib import metadata as _metadata

from .adapters import Features, ModelAdapter, OpenCLIPAdapter, UnsupportedModelError, adapter_for
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

try:  # one version: the installed distribution's (pyproject.toml)
    __version__ = _metadata.version("bayesvlm-explain")
except _metadata.PackageNotFoundError:  # imported from a checkout that is not installed
    __version__ = "0+unknown"

__all__ = [
    "AttributionResult",
    "TokenAttribution",
    "TokenAttributionResult",
    "UncertaintyAttribution",
    "UncertaintyDecomposition",
    "decompose_uncertainty",
    "BayesVLM",
    "Features",
    "ModelAdapter",
    "InputError",
    "KronPosterior",
    "OpenCLIPAdapter",
    "Posterior",
    "PosteriorError",
    "Prediction",
    "UnsupportedModelError",
    "__version__",
    "adapter_for",
]
