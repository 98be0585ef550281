"""Evaluation: calibration, selective and detection metrics and temperature scaling (:mod:`.metrics`), the
posterior scale chosen on held-out labelled data (:mod:`.calibrate`), zero-shot evaluation on labelled
images (:mod:`.evaluate`) and active learning (:mod:`.active_learning`). The bundled model's domain-shift
benchmark and emoji experiments are repository tools (``tools/``), not part of the library."""

from .calibrate import CalibrationDataError, PosteriorCalibration, calibrate_posterior
from .metrics import calibration_metrics, expected_calibration_error, fit_temperature

__all__ = [
    "CalibrationDataError",
    "PosteriorCalibration",
    "calibrate_posterior",
    "calibration_metrics",
    "expected_calibration_error",
    "fit_temperature",
]
