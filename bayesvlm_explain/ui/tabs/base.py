"""What every tab's page function receives: the model, the shared inputs and the wiring (no gradio import).

The posterior scale is a per-request choice: :meth:`StudioContext.wire` adds the page's scale control to
every endpoint's inputs and runs the tab's function inside :meth:`StudioContext.scaled`, so that
:attr:`StudioContext.vlm` and :attr:`StudioContext.yardstick` are, for that request only, the model at the
chosen pseudo-count (a cached view from :meth:`~bayesvlm_explain.BayesVLM.with_pseudo_count`; the shared
model is never modified, so users with different scales never see each other's).
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...inputs import InputError
from ...yardstick import YardstickError

if TYPE_CHECKING:
    from ...model import BayesVLM

_REQUEST_SCALE: ContextVar[float | None] = ContextVar("bayesvlm_studio_scale", default=None)
"""The pseudo-count chosen for the request being handled (set by :meth:`StudioContext.scaled` only)."""


class ScaleViews:
    """The model at each allowed pseudo-count ``n`` (views made once, kept; ``λ`` by marginal likelihood)."""

    def __init__(self, base: BayesVLM, grid: Sequence[float]) -> None:
        self.base = base
        self.default = float(base.require_posterior().image.pseudo_count) if base.posterior is not None else None
        self.grid = sorted({float(n) for n in grid} | ({self.default} if self.default is not None else set()))
        self._views: dict[float, BayesVLM] = {}
        self._lock = threading.Lock()

    def check(self, n: Any) -> float | None:
        """``n`` as one of :attr:`grid` (``None``/empty: the model's own); :class:`InputError` otherwise."""
        if n is None or n == "":
            return None
        try:
            value = float(n)
        except (TypeError, ValueError):
            raise InputError(f"the posterior scale n must be a number, got {n!r}") from None
        match = [g for g in self.grid if abs(g - value) <= 1e-9 * max(1.0, g)]
        if not match:
            raise InputError(f"the posterior scale n must be one of {', '.join(f'{g:g}' for g in self.grid)}")
        return match[0]

    def view(self, n: float | None) -> BayesVLM:
        """The model at ``n`` (``None`` or the model's own ``n``: the model itself)."""
        if n is None or n == self.default or self.base.posterior is None:
            return self.base
        with self._lock:  # one marginal-likelihood search per n, even under concurrent first requests
            if n not in self._views:
                self._views[n] = self.base.with_pseudo_count(n)
            return self._views[n]


@dataclass
class StudioContext:
    """The studio's shared state, built once by :func:`~bayesvlm_explain.ui.app.build_app`.

    Attributes:
        base: the model as loaded (its posterior at the recommended scale).
        base_yardstick: its yardstick or ``None``.
        image / prompts: the shared image-file and class-prompts components.
        default_prompts: the prompts shown first (one per line).
        downloads: folder for CSV/JSON downloads (files older than 10 minutes are removed).
        connect: ``connect(button, fn, inputs, outputs, api_name, uploads, concurrency_id, limit)`` runs
            ``fn`` on a click with cleared outputs, user errors as messages, admitted by
            :mod:`..admission` in its lane.
        json_and_note: ``json_and_note(api_name, note)`` adds a tab's JSON accordion and note; returns the JSON.
        views: the model at each pseudo-count the scale control offers.
        scale: the page's posterior-scale control (``None``: every request at the model's own scale).
    """

    base: BayesVLM
    base_yardstick: Any
    image: Any
    prompts: Any
    default_prompts: str
    downloads: Path
    connect: Callable[..., None]
    json_and_note: Callable[[str, str], Any]
    views: ScaleViews
    scale: Any = None

    # -- the model of the request being handled ----------------------------------------------------
    @property
    def vlm(self) -> BayesVLM:
        """The model at the scale chosen for the current request (the base model outside a request)."""
        return self.views.view(_REQUEST_SCALE.get())

    @property
    def yardstick(self) -> Any:
        """The yardstick if it was made for :attr:`vlm`'s posterior, else ``None``."""
        vlm, ys = self.vlm, self.base_yardstick
        if ys is None or vlm is self.base:
            return ys
        try:
            ys.check(vlm)
        except YardstickError:
            return None
        return ys

    @contextmanager
    def scaled(self, n: Any) -> Iterator[None]:
        """Within the block, :attr:`vlm` is the model at pseudo-count ``n`` (checked: :class:`InputError`)."""
        token = _REQUEST_SCALE.set(self.views.check(n))
        try:
            yield
        finally:
            _REQUEST_SCALE.reset(token)

    def wire(self, button: Any, fn: Callable[..., Any], inputs: list[Any], outputs: list[Any], name: str,
             uploads: Callable[..., Any], concurrency: str, limit: int) -> None:
        """:attr:`connect` with the scale control appended to ``inputs``; ``fn`` runs at that scale."""
        if self.scale is None:
            self.connect(button, fn, inputs, outputs, name, uploads, concurrency, limit)
            return

        def run(*args: Any) -> Any:
            with self.scaled(args[-1]):
                return fn(*args[:-1])

        self.connect(button, run, [*inputs, self.scale], outputs, name, lambda *args: uploads(*args[:-1]),
                     concurrency, limit)

    # -- downloads ---------------------------------------------------------------------------------
    def save_download(self, prefix: str, suffix: str, payload: str | dict[str, Any], about: str = "") -> str:
        """Write ``payload`` (text, or JSON) to a fresh file in :attr:`downloads`, named
        ``<prefix>-<about>-<UTC time><suffix>`` (``about``: e.g. the input's name, made file-name safe);
        returns its path."""
        for old in self.downloads.iterdir():
            if time.time() - old.stat().st_mtime > 600:
                shutil.rmtree(old, ignore_errors=True)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(about).stem if about else "").strip("-._")[:40]
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        folder = self.downloads / f"{time.time_ns()}"  # one folder per file: equal names never collide
        folder.mkdir()
        path = folder / f"{prefix}{'-' + slug if slug else ''}-{stamp}{suffix}"
        text = payload if isinstance(payload, str) else json.dumps(payload, indent=1)
        path.write_text(text, encoding="utf-8")
        return str(path)
