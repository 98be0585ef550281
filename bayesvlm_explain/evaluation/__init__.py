"""Evaluation: calibration metrics and temperature scaling (:mod:`.metrics`), and the bundled model's
domain-shift benchmark (:mod:`.shift`, ``bayesvlm-explain benchmark-shift``; it renders the emoji styles
with the build-only pipeline, so import it explicitly)."""

from .metrics import calibration_metrics, expected_calibration_error, fit_temperature

__all__ = ["calibration_metrics", "expected_calibration_error", "fit_temperature"]
