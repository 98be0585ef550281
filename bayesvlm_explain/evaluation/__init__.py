"""Evaluation: calibration, selective and detection metrics and temperature scaling (:mod:`.metrics`), the
posterior scale chosen on held-out labelled data (:mod:`.calibrate`), and the bundled model's
domain-shift benchmark (:mod:`.shift`, ``bayesvlm-explain benchmark-shift``; it renders the emoji styles
with the build-only pipeline, so import it explicitly)."""

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
