"""What every benchmark JSON records about the run, so its figures can be read and reproduced, and the
pieces the newer benchmarks share (round-robin timing, ``--json`` / ``--markdown`` options).

``machine_info()`` -> CPU model, logical cores, torch threads, load average (1, 5, 15 min), UTC date,
torch/Python versions and the CUDA device (if any). The load average matters: on a shared machine the
absolute times scale with it, while ratios measured side by side in one run stay comparable.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """The run's machine and moment (see the module doc); call it when the measurements end."""
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def round_robin(cases: dict[str, Callable[[], Any]], rounds: int) -> dict[str, tuple[float, Any]]:
    """Median wall time (s) of each case over ``rounds`` rounds of one call each (after a warm-up call),
    and its last result: a load spike on a shared machine falls on every case alike."""
    last = {name: fn() for name, fn in cases.items()}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            last[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(times[name]), last[name]) for name in cases}


def add_output_options(ap: argparse.ArgumentParser) -> None:
    """``--json FILE`` (write the run) and ``--markdown FILE`` (print the docs' table of a written run)."""
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--markdown", type=Path, help="only print the docs' table from this JSON, and exit")


def printed_markdown(args: argparse.Namespace, markdown: Callable[[dict[str, Any]], str]) -> bool:
    """With ``--markdown FILE``: print ``markdown`` of that JSON and return True (the caller exits)."""
    if args.markdown is None:
        return False
    print(markdown(json.loads(args.markdown.read_text())))
    return True
