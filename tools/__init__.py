"""Build and benchmark tools of the repository; not part of the installed library (the wheel ships only
``bayesvlm_explain``). Run from the repository root, e.g. ``python -m tools.shift_benchmark``.

They need ``npm`` and ``resvg-py`` and import the library freely; the library never imports them
(``tests/test_structure.py``). The runtime reads only the committed label space
(:mod:`bayesvlm_explain.data.labels`).

* :mod:`.emoji`: the emoji artwork pipeline (npm sources, concepts and captions, rendering, the
  rendered-image cache, label-space selection, the fixed train / calibration / test splits);
* :mod:`.augment`: the seeded batch augmentation shared by training and the benchmarks;
* :mod:`.shift_benchmark`: the bundled model's domain-shift benchmark (``python -m tools.shift_benchmark``);
* :mod:`.emoji_active_learning`: the bundled model's active-learning experiment on the emoji styles
  (``python -m tools.emoji_active_learning``);
* :mod:`.bundled_yardstick`: rebuild the bundled model's yardstick (``python -m tools.bundled_yardstick``).
"""
