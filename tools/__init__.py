"""Build-time tooling for the bundled offline model; not part of the runtime library.

Used by ``scripts/`` (data, training, fitting of the bundled model) and by the ``benchmark-shift``
command, which renders the emoji styles at evaluation time. It needs ``npm`` and ``resvg-py``;
``import bayesvlm_explain`` never imports it. The runtime reads only the committed label space
(:mod:`bayesvlm_explain.data.labels`).

* :mod:`.emoji`: the emoji artwork pipeline (npm sources, concepts and captions, rendering, the
  rendered-image cache, label-space selection);
* :mod:`.augment`: the seeded batch augmentation shared by training and the shift benchmark.
"""
