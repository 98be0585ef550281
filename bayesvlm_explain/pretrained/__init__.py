"""Files the library loads at run time, shipped inside the package (found with ``importlib.resources``).

* ``bundled/``: the project's offline emoji CLIP (open_clip ``local-dir`` layout, its tokenizer and
  posterior, ``ATTRIBUTION.md``; see :mod:`bayesvlm_explain.bundled`);
* ``examples/``: rendered example images for the studio (``examples.json`` lists them);
* ``posteriors/``: known posteriors of published checkpoints, converted to our format (see
  :mod:`bayesvlm_explain.pretrained.registry`), each folder with its licence and provenance.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["package_path"]


def package_path(*parts: str) -> Path:
    """Filesystem path of ``bayesvlm_explain/pretrained/<parts...>`` in the installed package.

    Raises ``RuntimeError`` if the package is not installed as plain files (e.g. imported from a zip).
    """
    res = files(__name__).joinpath(*parts)
    if not isinstance(res, Path):
        raise RuntimeError(f"bayesvlm_explain must be installed as plain files to load {'/'.join(parts)}; "
                           f"got a {type(res).__name__} resource")
    return res
