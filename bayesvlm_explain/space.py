"""Hugging Face Spaces: ``export_space`` writes a folder that Spaces builds and runs as is, and
``build_space_app`` is what that folder's ``app.py`` calls.

Spaces installs ``requirements.txt`` *before* the repository is copied, so the folder cannot ``pip
install`` the library from itself: it carries a copy of the ``bayesvlm_explain`` package (with its package
data: the bundled model, example images, known posteriors) beside ``app.py``, and ``requirements.txt``
lists only the library's PyPI dependencies. Files over 10 MiB get Git LFS rules (plain pushes of larger
files are refused). On ZeroGPU hardware the studio's queued event handlers run under ``spaces.GPU``.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .pretrained.registry import BUNDLED

__all__ = ["HARDWARE", "LFS_THRESHOLD", "SpaceExportError", "build_space_app", "export_space", "gpu"]

HARDWARE: tuple[str, ...] = ("cpu-basic", "cpu-upgrade", "zero-a10g", "t4-small", "t4-medium", "l4x1", "a10g-small",
                             "a10g-large", "a100-large")
"""Space hardware flavours accepted for ``suggested_hardware``."""

LFS_THRESHOLD: int = 10 * 2**20
"""Files above this many bytes are tracked with Git LFS (the Hub refuses larger plain files)."""

APP_FILE = "app.py"
POSTERIOR_DIR = "posterior"
# Provided by the Space itself: gradio at sdk_version (pinning it again can conflict), spaces on ZeroGPU.
_PROVIDED = {"gradio"}

_APP_TEMPLATE = '''"""Hugging Face Space entry point, written by `bayesvlm-explain export-space` ({version}).

The library is the `bayesvlm_explain/` folder beside this file: Spaces installs requirements.txt before
the repository is copied, so it is imported from here rather than installed.
"""

from bayesvlm_explain.space import build_space_app

demo = build_space_app(model={model!r}, pretrained={pretrained!r}, posterior={posterior!r})

if __name__ == "__main__":
    demo.launch()
'''

_README_BODY = """
# bayesvlm-explain studio

Post-hoc Bayesian uncertainty for CLIP-style models, explained: every (image, prompt) logit gets a mean
and a variance from a Laplace posterior over the two projection layers, split into image, text and
interaction parts and traced back to pixels and tokens. Model: **{model_label}**; posterior: {posterior_label}.

This folder was written by `bayesvlm-explain export-space` (bayesvlm-explain {version}); `app.py` runs
the library copy in `bayesvlm_explain/`.
"""


class SpaceExportError(ValueError):
    """The Space folder cannot be written as asked (bad option, folder not empty, unknown model)."""


def gpu(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``spaces.GPU(fn)`` when the ``spaces`` package is importable (Hugging Face Spaces), else ``fn``."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


def build_space_app(model: str = BUNDLED, pretrained: str | None = None, posterior: str | None = None,
                    device: str | None = None) -> Any:
    """The studio (a ``gradio.Blocks``, not launched) for ``model``; its queued handlers wrapped by :func:`gpu`.

    ``posterior``: a posterior folder (relative paths are taken from the current directory); ``None``
    uses the bundled or built-in one.
    """
    from .model import BayesVLM
    from .ui import build_app

    vlm = BayesVLM.from_pretrained(model, pretrained=pretrained, posterior=posterior, device=device)
    app = build_app(vlm, examples=vlm.assets.examples or None)
    for block_fn in app.fns.values():
        if block_fn.queue and block_fn.fn is not None:
            block_fn.fn = gpu(block_fn.fn)
    return app


def _requirements() -> list[str]:
    """The library's PyPI requirements (no extras, no gradio: the Space provides it)."""
    try:
        reqs = importlib.metadata.requires("bayesvlm-explain") or []
    except importlib.metadata.PackageNotFoundError as err:
        raise SpaceExportError("bayesvlm-explain is not installed (pip install it) so its requirements "
                               "are unknown") from err
    from packaging.requirements import Requirement

    out = []
    for line in reqs:
        req = Requirement(line)
        if req.marker is not None and "extra" in str(req.marker):
            continue
        if req.name.lower() not in _PROVIDED:
            out.append(str(req))
    return out


def _hub_repo(model: str, pretrained: str | None) -> str:
    """The Hugging Face repository that open_clip downloads ``(model, pretrained)`` from."""
    if model.startswith("hf-hub:"):
        return model.removeprefix("hf-hub:").strip("/")
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, pretrained or "")
    if not cfg.get("hf_hub"):
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise SpaceExportError(f"open_clip has no Hugging Face weights for ({model!r}, {pretrained!r}); "
                               f"pretrained tags of {model}: {known}")
    return cfg["hf_hub"].strip("/")


def _front_matter(fields: dict[str, Any]) -> str:
    lines = ["---"]
    for key, val in fields.items():
        if isinstance(val, list):
            lines.append(f"{key}:")
            lines.extend(f"  - {item}" for item in val)
        else:
            lines.append(f"{key}: {val}")
    return "\n".join([*lines, "---", ""])


def export_space(out_dir: str | Path, model: str = BUNDLED, pretrained: str | None = None,
                 hardware: str | None = None, posterior: str | Path | None = None) -> Path:
    """Write a self-contained Hugging Face Space folder for the studio on ``model``; return its path.

    Contents: ``README.md`` (front matter: ``sdk: gradio``, ``sdk_version`` = the installed gradio,
    ``python_version``, ``app_file``, ``suggested_hardware``, and ``models``/``preload_from_hub`` for a
    hub model), ``app.py``, ``requirements.txt`` (PyPI only), ``bayesvlm_explain/`` (this library with its
    package data), ``posterior/`` when ``posterior`` is given, and ``.gitattributes`` with an LFS rule per
    file over :data:`LFS_THRESHOLD` bytes. ``out_dir`` must not exist or be empty.
    """
    from .posterior import Posterior
    from .pretrained.registry import known_posterior_dir

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SpaceExportError(f"{out} exists and is not an empty folder; choose a new one")
    hardware = hardware or ("cpu-basic" if model == BUNDLED else "zero-a10g")
    if hardware not in HARDWARE:
        raise SpaceExportError(f"unknown hardware {hardware!r}; one of {', '.join(HARDWARE)}")
    if model == BUNDLED and pretrained:
        raise SpaceExportError("--pretrained is for open_clip models, not the bundled one")
    fields: dict[str, Any] = {}
    if model == BUNDLED:
        model_label, posterior_label = "bundled (offline emoji CLIP)", "the bundled one"
    else:
        repo = _hub_repo(model, pretrained)
        fields = {"models": [repo], "preload_from_hub": [f"{repo} open_clip_model.safetensors"]}
        model_label = f"{model}" + (f" / {pretrained}" if pretrained else "")
        posterior_label = "built in (`Posterior.from_pretrained`)"
        if posterior is None and known_posterior_dir(model, pretrained) is None:
            raise SpaceExportError(
                f"no built-in posterior for ({model!r}, {pretrained!r}): fit one with `bayesvlm-explain fit "
                f"--model {model} --pretrained {pretrained} --data PAIRS --out DIR` and pass --posterior DIR")
    version = importlib.metadata.version("bayesvlm-explain")
    requirements = _requirements()

    out.mkdir(parents=True, exist_ok=True)
    package = Path(__file__).resolve().parent
    shutil.copytree(package, out / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if posterior is not None:
        Posterior.load(posterior).save(out / POSTERIOR_DIR)  # validated and rewritten in our format
        posterior_label = f"`{POSTERIOR_DIR}/` (from {Path(posterior).name})"
    (out / APP_FILE).write_text(_APP_TEMPLATE.format(
        version=f"bayesvlm-explain {version}", model=model, pretrained=pretrained,
        posterior=POSTERIOR_DIR if posterior is not None else None))
    (out / "requirements.txt").write_text("\n".join(requirements) + "\n")
    front = {
        "title": "bayesvlm-explain studio", "emoji": "🔍", "colorFrom": "indigo", "colorTo": "gray",
        "sdk": "gradio", "sdk_version": importlib.metadata.version("gradio"),
        "python_version": f'"{sys.version_info.major}.{sys.version_info.minor}"',
        "app_file": APP_FILE, "suggested_hardware": hardware, "license": "mit", "pinned": "false", **fields,
    }
    (out / "README.md").write_text(_front_matter(front) + _README_BODY.format(
        model_label=model_label, posterior_label=posterior_label, version=version))
    large = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                   if p.is_file() and p.stat().st_size > LFS_THRESHOLD)
    (out / ".gitattributes").write_text("".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in large))
    return out
