"""The studio's tabs, one module each: a function from inputs to a typed result dataclass (what the page,
the API JSON and the CLI render) and a ``page(ctx)`` that lays the tab out and wires its endpoint.

To add a tab: a module here with both, and one line in :data:`TABS`.
"""

from __future__ import annotations

from types import ModuleType

from . import batch, calibrate, compare, explain, inspect, select

TABS: list[tuple[str, str, ModuleType]] = [
    ("Inspect", "inspect", inspect),
    ("Compare prompts", "compare", compare),
    ("Explain", "explain", explain),
    ("Batch", "batch", batch),
    ("Calibrate", "calibrate", calibrate),
    ("Select", "select", select),
]
"""``(title, id, module)`` in page order; each module has ``page(ctx: StudioContext)``."""
