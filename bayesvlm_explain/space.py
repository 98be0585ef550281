"""Hugging Face Spaces: ``export_space`` writes a folder that Spaces builds and runs as is, and
``build_space_app`` is what that folder's ``app.py`` calls.

Spaces installs ``requirements.txt`` *before* the repository is copied, so the folder cannot ``pip
install`` the library from itself: it carries a copy of the ``bayesvlm_explain`` package (with the package
data its model uses: the bundled model and examples, or the model's built-in posterior) beside ``app.py``,
and ``requirements.txt`` lists only the library's PyPI dependencies. ``.gitattributes`` puts binary and
model files under Git LFS (the Hub refuses binary files stored as plain git blobs). On ZeroGPU the
studio's queued event handlers run under ``spaces.GPU``, with the Python and torch versions ZeroGPU
supports. ``check_space`` validates a folder as the Hub would; ``spaces_config/README.md`` cites the
documentation behind each rule.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .pretrained.registry import BUNDLED

__all__ = ["HARDWARE", "LFS_PATTERNS", "PLAIN_FILE_LIMIT", "ZEROGPU", "ZEROGPU_PINS", "ZEROGPU_PYTHON",
           "SpaceExportError", "build_space_app", "check_space", "default_hardware", "export_space", "gpu"]

HARDWARE: tuple[str, ...] = ("cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "l40sx1", "l40sx4",
                             "l40sx8", "a10g-small", "a10g-large", "a10g-largex2", "a10g-largex4", "a100-large",
                             "a100x4", "a100x8")
"""The hardware flavours the Spaces configuration reference documents for ``suggested_hardware``."""

ZEROGPU: str = "zerogpu"
"""``hardware`` value for ZeroGPU: chosen in the Space's settings (it is no ``suggested_hardware`` flavour);
the front matter then suggests :data:`ZEROGPU_SUGGESTED` to whoever duplicates the Space."""
ZEROGPU_SUGGESTED = "a10g-small"
ZEROGPU_PYTHON: str = "3.10.13"
"""The Python version ZeroGPU runs (listed on the ZeroGPU documentation page)."""
ZEROGPU_PINS: dict[str, str] = {"torch": "2.8.0", "torchvision": "0.23.0"}
"""Exact pins for ZeroGPU: torch 2.8.0 is on the page's supported list (and torchvision 0.23.0 is its pair)."""

LFS_PATTERNS: tuple[str, ...] = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
    "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
    "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
    "*.xz", "*.zip", "*.zst", "*tfevents*",  # the Hub's default .gitattributes for a new repository
    "*.png", "*.jpg", "*.jpeg", "*.gif", "*.webp", "*.bmp", "*.ico", "*.tif", "*.tiff", "*.pdf", "*.mp3",
    "*.wav", "*.mp4",  # images and media, which the Hub refuses as plain git blobs as well
)
"""Git LFS patterns written to an exported Space's ``.gitattributes``."""

PLAIN_FILE_LIMIT: int = 10**6
"""Bytes: a file larger than this must be LFS-tracked even if it is text."""

_SNIFF = 8000  # bytes git reads to call a file binary (a NUL byte among them)
_COLORS = ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_PYTHON = re.compile(r"3\.\d+(\.\d+)?")

APP_FILE = "app.py"
POSTERIOR_DIR = "posterior"
# Provided by the Space itself: gradio at sdk_version (pinning it again can conflict).
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

_ZEROGPU_NOTE = """
Hardware: **ZeroGPU**, chosen in the Space's settings (`suggested_hardware` is what a duplicate is
offered). The studio's queued handlers request a GPU through `spaces.GPU`; ZeroGPU runs Python
{python} with torch {torch} (pinned in `requirements.txt`).
""".format(python=ZEROGPU_PYTHON, torch=ZEROGPU_PINS["torch"])


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


def _requirements(zerogpu: bool) -> list[str]:
    """The library's PyPI requirements (no extras, no gradio: the Space provides it); on ZeroGPU with the
    :data:`ZEROGPU_PINS` exact versions (refused if our own ranges exclude them) and ``spaces``."""
    try:
        reqs = importlib.metadata.requires("bayesvlm-explain") or []
    except importlib.metadata.PackageNotFoundError as err:
        raise SpaceExportError("bayesvlm-explain is not installed (pip install it) so its requirements "
                               "are unknown") from err
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    out = []
    for line in reqs:
        req = Requirement(line)
        if (req.marker is not None and "extra" in str(req.marker)) or req.name.lower() in _PROVIDED:
            continue
        pin = ZEROGPU_PINS.get(req.name.lower()) if zerogpu else None
        if pin is not None:
            if pin not in req.specifier:
                raise SpaceExportError(f"ZeroGPU needs {req.name}=={pin} but bayesvlm-explain requires {req}")
            req.specifier = SpecifierSet(f"=={pin}")
        out.append(str(req))
    return [*out, "spaces"] if zerogpu else out  # spaces.GPU: what ZeroGPU allocates a GPU through


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


def default_hardware(model: str) -> str:
    """``cpu-basic`` for the bundled model (small enough for CPU), :data:`ZEROGPU` for a hub model."""
    return "cpu-basic" if model == BUNDLED else ZEROGPU


def _package_ignore(model: str, posterior_kept: Path | None, with_bundled: bool) -> Callable[[str, list[str]], set]:
    """A ``shutil.copytree`` ignore function: caches, and the package data the Space's model does not use
    (the bundled model and its examples for a hub model, the built-in posteriors not chosen)."""
    package = Path(__file__).resolve().parent
    pretrained = package / "pretrained"
    skip = set()
    if model != BUNDLED and not with_bundled:
        skip |= {pretrained / BUNDLED, pretrained / "examples"}
    posteriors = pretrained / "posteriors"
    if posteriors.is_dir():
        skip |= {d for d in posteriors.iterdir() if d.is_dir() and d != posterior_kept}

    def ignore(folder: str, names: list[str]) -> set:
        return {n for n in names if n == "__pycache__" or n.endswith(".pyc") or Path(folder, n) in skip}

    return ignore


def export_space(out_dir: str | Path, model: str = BUNDLED, pretrained: str | None = None,
                 hardware: str | None = None, posterior: str | Path | None = None,
                 with_bundled: bool = False) -> Path:
    """Write a self-contained Hugging Face Space folder for the studio on ``model``; return its path.

    Contents: ``README.md`` (front matter: ``sdk: gradio``, ``sdk_version`` = the installed gradio,
    ``python_version``, ``app_file``, ``suggested_hardware``, ``license``, and ``models``/``preload_from_hub``
    for a hub model), ``app.py``, ``requirements.txt`` (PyPI only), ``bayesvlm_explain/`` (this library with
    the package data the model uses; the bundled model too if ``with_bundled``), ``posterior/`` when
    ``posterior`` is given, and ``.gitattributes`` with :data:`LFS_PATTERNS`. ``hardware``: a flavour of
    :data:`HARDWARE` or :data:`ZEROGPU` (default: ``cpu-basic`` for the bundled model, ZeroGPU otherwise),
    which pins Python :data:`ZEROGPU_PYTHON` and :data:`ZEROGPU_PINS`. ``out_dir`` must not exist or be empty.
    """
    from .posterior import Posterior
    from .pretrained.registry import known_posterior_dir

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SpaceExportError(f"{out} exists and is not an empty folder; choose a new one")
    hardware = hardware or default_hardware(model)
    if hardware not in (*HARDWARE, ZEROGPU):
        raise SpaceExportError(f"unknown hardware {hardware!r}; one of {ZEROGPU}, {', '.join(HARDWARE)}")
    if model == BUNDLED and pretrained:
        raise SpaceExportError("--pretrained is for open_clip models, not the bundled one")
    zerogpu = hardware == ZEROGPU
    fields: dict[str, Any] = {}
    known = None
    if model == BUNDLED:
        model_label, posterior_label = "bundled (offline emoji CLIP)", "the bundled one"
    else:
        repo = _hub_repo(model, pretrained)
        fields = {"models": [repo], "preload_from_hub": [f"{repo} open_clip_model.safetensors"]}
        model_label = f"{model}" + (f" / {pretrained}" if pretrained else "")
        posterior_label = "built in (`Posterior.from_pretrained`)"
        known = known_posterior_dir(model, pretrained)
        if posterior is None and known is None:
            raise SpaceExportError(
                f"no built-in posterior for ({model!r}, {pretrained!r}): fit one with `bayesvlm-explain fit "
                f"--model {model} --pretrained {pretrained} --data PAIRS --out DIR` and pass --posterior DIR")
    version = importlib.metadata.version("bayesvlm-explain")
    requirements = _requirements(zerogpu)

    out.mkdir(parents=True, exist_ok=True)
    package = Path(__file__).resolve().parent
    kept = known.resolve() if known is not None and posterior is None else None
    shutil.copytree(package, out / package.name, ignore=_package_ignore(model, kept, with_bundled))
    if posterior is not None:
        Posterior.load(posterior).save(out / POSTERIOR_DIR)  # validated and rewritten in our format
        posterior_label = f"`{POSTERIOR_DIR}/` (from {Path(posterior).name})"
    (out / APP_FILE).write_text(_APP_TEMPLATE.format(
        version=f"bayesvlm-explain {version}", model=model, pretrained=pretrained,
        posterior=POSTERIOR_DIR if posterior is not None else None))
    (out / "requirements.txt").write_text("\n".join(requirements) + "\n")
    python = ZEROGPU_PYTHON if zerogpu else f"{sys.version_info.major}.{sys.version_info.minor}"
    front = {
        "title": "bayesvlm-explain studio", "emoji": "🔍", "colorFrom": "indigo", "colorTo": "gray",
        "sdk": "gradio", "sdk_version": importlib.metadata.version("gradio"), "python_version": f'"{python}"',
        "app_file": APP_FILE, "suggested_hardware": ZEROGPU_SUGGESTED if zerogpu else hardware,
        "license": "mit", "pinned": "false", **fields,
    }
    hardware_note = _ZEROGPU_NOTE if zerogpu else ""
    (out / "README.md").write_text(_front_matter(front) + _README_BODY.format(
        model_label=model_label, posterior_label=posterior_label, version=version) + hardware_note)
    (out / ".gitattributes").write_text("".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n"
                                                for p in LFS_PATTERNS))
    return out


def _lfs_patterns(folder: Path) -> list[str]:
    """The patterns of ``folder/.gitattributes`` lines that set ``filter=lfs``."""
    path = folder / ".gitattributes"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [parts[0] for parts in (line.split() for line in lines)
            if len(parts) > 1 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]]


def _matches(rel: str, pattern: str) -> bool:
    """gitattributes matching: a pattern without ``/`` matches the file name at any depth, one with ``/``
    the path from the repository root."""
    if "/" not in pattern:
        return fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(rel, pattern.lstrip("/"))


def _is_binary(path: Path) -> bool:
    """Git's test: a NUL byte in the first 8000 bytes."""
    with path.open("rb") as fh:
        return b"\0" in fh.read(_SNIFF)


def _check_front_matter(meta: dict[str, Any], folder: Path, zerogpu: bool) -> list[str]:
    """Problems with the front matter (empty list: valid)."""
    from packaging.version import InvalidVersion, Version

    bad = []
    if meta.get("sdk") != "gradio":
        bad.append(f"sdk is {meta.get('sdk')!r}, not 'gradio'")
    try:
        Version(str(meta.get("sdk_version")))
    except InvalidVersion:
        bad.append(f"sdk_version {meta.get('sdk_version')!r} is not a version")
    python = meta.get("python_version")
    if not isinstance(python, str) or not _PYTHON.fullmatch(python):
        bad.append(f"python_version {python!r} is not a quoted 3.x or 3.x.x string")
    elif zerogpu and python != ZEROGPU_PYTHON:
        bad.append(f"python_version {python} is not ZeroGPU's {ZEROGPU_PYTHON}")
    app = meta.get("app_file")
    if not isinstance(app, str) or not (folder / app).is_file():
        bad.append(f"app_file {app!r} is not a file of the folder")
    hw = meta.get("suggested_hardware")
    if hw is not None and hw not in HARDWARE:
        bad.append(f"suggested_hardware {hw!r} is not a documented flavour ({', '.join(HARDWARE)})")
    for key in ("colorFrom", "colorTo"):
        if key in meta and meta[key] not in _COLORS:
            bad.append(f"{key} {meta[key]!r} is not one of {', '.join(_COLORS)}")
    if "license" in meta and not (isinstance(meta["license"], str) and re.fullmatch(r"[a-z0-9.-]+", meta["license"])):
        bad.append(f"license {meta['license']!r} is not a licence identifier")
    models = meta.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) and _REPO_ID.fullmatch(m) for m in models):
        bad.append(f"models {models!r} is not a list of owner/name ids")
    preload = meta.get("preload_from_hub", [])
    for item in preload if isinstance(preload, list) else [preload]:
        parts = item.split() if isinstance(item, str) else []
        if not 1 <= len(parts) <= 3 or not _REPO_ID.fullmatch(parts[0]):
            bad.append(f"preload_from_hub entry {item!r} is not 'owner/name [file,file] [revision]'")
    return bad


def check_space(folder: str | Path, hardware: str | None = None) -> list[str]:
    """Validate a Space folder as the Hub would; return the checks made (one line each).

    Checked: the front matter against the Spaces configuration reference; ``requirements.txt`` (PyPI
    requirements only; on :data:`ZEROGPU` ``torch`` pinned to a supported version); that every binary
    file and every file over :data:`PLAIN_FILE_LIMIT` bytes is under a ``.gitattributes`` LFS rule.
    Raises :class:`SpaceExportError` listing every problem found.
    """
    import yaml
    from packaging.requirements import InvalidRequirement, Requirement

    root = Path(folder)
    readme = root / "README.md"
    if not readme.is_file():
        raise SpaceExportError(f"{root} has no README.md: not a Space folder")
    if hardware is not None and hardware not in (*HARDWARE, ZEROGPU):
        raise SpaceExportError(f"unknown hardware {hardware!r}; one of {ZEROGPU}, {', '.join(HARDWARE)}")
    zerogpu = hardware == ZEROGPU
    text = readme.read_text()
    parts = text.split("---\n", 2)
    meta = yaml.safe_load(parts[1]) if text.startswith("---\n") and len(parts) == 3 else None
    bad = ["README.md has no YAML front matter"] if not isinstance(meta, dict) else _check_front_matter(
        meta, root, zerogpu)
    reqs = []
    req_file = root / "requirements.txt"
    for line in req_file.read_text().splitlines() if req_file.is_file() else []:
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                reqs.append(Requirement(line))
            except InvalidRequirement:
                bad.append(f"requirements.txt line {line!r} is not a PyPI requirement")
    bad += [f"requirements.txt: {r} is not from PyPI" for r in reqs if r.url]
    if zerogpu:
        torch = [r for r in reqs if r.name.lower() == "torch"]
        if not torch or str(torch[0].specifier) != f"=={ZEROGPU_PINS['torch']}":
            bad.append(f"ZeroGPU: requirements.txt must pin torch=={ZEROGPU_PINS['torch']}")
    patterns = _lfs_patterns(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and ".git" not in p.relative_to(root).parts)
    lfs = plain = 0
    for path in files:
        rel = path.relative_to(root).as_posix()
        if any(_matches(rel, pat) for pat in patterns):
            lfs += 1
        elif _is_binary(path):
            bad.append(f"{rel} is binary but no .gitattributes LFS rule covers it")
        elif path.stat().st_size > PLAIN_FILE_LIMIT:
            bad.append(f"{rel} is {path.stat().st_size:,} bytes, over {PLAIN_FILE_LIMIT:,}, and not LFS-tracked")
        else:
            plain += 1
    if bad:
        raise SpaceExportError("the Space folder would be refused or fail:\n  " + "\n  ".join(bad))
    assert isinstance(meta, dict)  # else ``bad`` named the missing front matter
    return [
        f"front matter: sdk gradio {meta['sdk_version']}, python_version {meta['python_version']}, "
        f"app_file {meta['app_file']}, suggested_hardware {meta.get('suggested_hardware', '(none)')}, "
        f"{len(meta.get('models', []))} model(s), {len(meta.get('preload_from_hub', []))} preload(s)",
        f"requirements.txt: {len(reqs)} PyPI requirements"
        + (f"; torch=={ZEROGPU_PINS['torch']} and Python {ZEROGPU_PYTHON} for ZeroGPU" if zerogpu else ""),
        f"files: {lfs} under LFS rules, {plain} plain text files, none binary or over {PLAIN_FILE_LIMIT:,} bytes",
    ]
