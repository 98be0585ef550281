"""The pinned npm sources (``npm/package.json`` + ``package-lock.json``) and the cache they go to.

The artwork sets (iconify JSON) and the captions (``emojibase-data``: CLDR names and keywords, MIT and
Unicode-3.0) are installed with ``npm ci`` into the cache at build time; nothing fetched is committed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["SOURCES_DIR", "default_cache_dir", "fetch_sources", "resolve_cache"]

SOURCES_DIR: Path = Path(__file__).resolve().parent / "npm"
"""Directory holding the pinned ``package.json`` and ``package-lock.json``."""


def default_cache_dir() -> Path:
    """Cache root: ``$BAYESVLM_CACHE/emoji`` if set, else ``~/.cache/bayesvlm_explain/emoji``."""
    root = os.environ.get("BAYESVLM_CACHE")
    if root:
        return Path(root).expanduser() / "emoji"
    return Path.home() / ".cache" / "bayesvlm_explain" / "emoji"


def resolve_cache(cache_dir: str | os.PathLike[str] | None) -> Path:
    """``cache_dir`` as a path, or :func:`default_cache_dir` when None."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _lock_digest() -> str:
    h = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        h.update((SOURCES_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def fetch_sources(cache_dir: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """Install the pinned npm packages into ``<cache>/npm`` with ``npm ci``; return its ``node_modules``.

    Idempotent: skipped when the installed tree was made from the same lockfile (a digest stamp).
    Needs ``npm`` and access to the npm registry (about 17 MB of tarballs, a few seconds).
    """
    npm_dir = resolve_cache(cache_dir) / "npm"
    modules = npm_dir / "node_modules"
    stamp = npm_dir / ".lock-digest"
    digest = _lock_digest()
    if not force and modules.is_dir() and stamp.is_file() and stamp.read_text().strip() == digest:
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is required to fetch the emoji artwork (apt-get install npm)")
    npm_dir.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(SOURCES_DIR / name, npm_dir / name)
    subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=npm_dir,
        check=True,
    )
    stamp.write_text(digest + "\n")
    return modules
