"""The registry of model families, keyed by the class of the module each family handles.

A family handles one side: an ``"image"`` tower (``model.visual``), a ``"text"`` tower (``model.text``,
or the model itself when its text parts sit at the top level as in ``open_clip.CLIP``), or a whole
``"model"``. Keys are fully qualified class names (``"open_clip.transformer.VisionTransformer"``), matched
along the module's class hierarchy, so matching imports nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

Side = Literal["image", "text", "model"]
SIDES: tuple[Side, ...] = ("image", "text", "model")


@dataclass(frozen=True)
class Family:
    """A registered model family.

    side: ``"image"``, ``"text"`` or ``"model"``.
    key: the fully qualified class name of the module it handles (subclasses match too).
    name: a short human description (listed in :class:`UnsupportedModelError` messages).
    build: ``(model, module) -> ImageTower | TextTower | ModelAdapter`` for the side; ``module`` is the
        tower found under that key (the model itself for ``"model"`` families). Raises
        ``UnsupportedModelError`` for a variant of the class it cannot handle.
    label: the tower's name in architecture strings (default: the module's class name).
    """

    side: Side
    key: str
    name: str
    build: Callable[[nn.Module, Any], Any]
    label: str | None = None


_lock = threading.Lock()
_families: dict[Side, dict[str, Family]] = {side: {} for side in SIDES}


def class_key(cls: type) -> str:
    """``"module.QualName"`` of a class: the registry key of the modules it builds."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register(family: Family, *, replace: bool = False) -> Family:
    """Add ``family`` (a key already registered for its side needs ``replace=True``); returns it."""
    if family.side not in SIDES:
        raise ValueError(f"unknown side {family.side!r}; choose one of {', '.join(map(repr, SIDES))}")
    with _lock:
        old = _families[family.side].get(family.key)
        if old is not None and not replace:
            raise ValueError(f"{family.side} family {family.key} is already registered ({old.name})")
        _families[family.side][family.key] = family
    return family


def unregister(family: Family) -> None:
    """Remove ``family`` (a no-op when another family has since replaced it)."""
    with _lock:
        if _families[family.side].get(family.key) is family:
            del _families[family.side][family.key]


def registered(side: Side | None = None) -> list[Family]:
    """The registered families (of one side), in registration order."""
    with _lock:
        return [f for s in SIDES if side in (None, s) for f in _families[s].values()]


def find(side: Side, module: object) -> Family | None:
    """The family of ``side`` registered for ``module``'s class or its nearest registered base class."""
    with _lock:
        table = dict(_families[side])
    for cls in type(module).__mro__:
        family = table.get(class_key(cls))
        if family is not None:
            return family
    return None


def listing(side: Side) -> str:
    """``"name (key), …"`` of one side's families, for error messages."""
    return ", ".join(f"{f.name} ({f.key})" for f in registered(side)) or "none"
