"""Shared by the studio load test and benchmark: start :mod:`studio_server` as a child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


class StudioServer:
    """The studio in a child process; ``url`` once it serves, ``rss_mb()`` its resident memory (Linux)."""

    def __init__(self, *extra: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "studio_server.py"), *extra],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     cwd=HERE.parent)
        for line in self.proc.stdout:
            if line.startswith("URL "):
                self.url = line.split()[1]
                break
        else:
            raise RuntimeError("the studio server exited before serving")

    def timings(self) -> dict[str, float]:
        """Medians (ms) the server measured since the last call (it must run with ``--timings``)."""
        import json

        self.proc.stdin.write("timings\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("TIMINGS "):
                return json.loads(line[len("TIMINGS "):])
        raise RuntimeError("the studio server exited")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)

    def __enter__(self) -> StudioServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
