"""The fit cache's files: checksummed safetensors written atomically, and a lock per process rank.

Every shard and checkpoint carries a BLAKE2b checksum of its metadata and tensor bytes in its own
safetensors metadata; :func:`load_checked` verifies it, so a byte flip or a truncation is reported as a
:class:`CorruptFileError` naming the file (never a raw ``SafetensorError``, never silently used).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .report import FitError


class CorruptFileError(FitError):
    """A cache file that is unreadable, truncated or fails its checksum; the message names it."""


def _checksum(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(meta_json.encode())
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checked(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> str:
    """Write ``tensors`` (CPU) and JSON-able ``meta`` to ``path`` atomically; return the checksum.

    The temporary file has a unique name, so concurrent writers never collide on it.
    """
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta_json = json.dumps(meta, sort_keys=True)
    checksum = _checksum(tensors, meta_json)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"json": meta_json, "checksum": checksum})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return checksum


def load_checked(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """``(tensors, meta, checksum)`` of a file written by :func:`save_checked`, verified.

    Raises :class:`CorruptFileError` naming the file when it cannot be read or its checksum fails.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        tensors = load_file(str(path))
        meta_json, stored = header["json"], header["checksum"]
        meta = json.loads(meta_json)
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise CorruptFileError(f"{path} is unreadable or truncated ({err.__class__.__name__}: {err})") from err
    if _checksum(tensors, meta_json) != stored or not isinstance(meta, dict):
        raise CorruptFileError(f"{path} fails its checksum (its bytes changed after it was written)")
    return tensors, meta, stored


class CacheLock:
    """An exclusive lock on a cache folder for one process rank (``lock.rank<r>``), held while a fit runs.

    Two fits into one cache collide on rank 0 at least, and the second gets a :class:`FitError` naming
    the process that holds it. The lock is the OS's (``flock`` through :mod:`filelock`), so a killed
    process leaves no stale lock behind: the leftover files of a dead process are simply reused.
    """

    def __init__(self, root: Path, rank: int):
        self.path = root / f"lock.rank{rank}"
        self.owner = root / f"lock.rank{rank}.pid"
        self._lock = FileLock(str(self.path), timeout=0)

    def __enter__(self) -> CacheLock:
        try:
            self._lock.acquire()
        except Timeout as err:
            raise FitError(f"the fit cache {self.path.parent} is in use by {self._holder()}; wait for it to "
                           "finish or use another cache folder") from err
        self.owner.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc: object) -> None:
        self.owner.unlink(missing_ok=True)
        self._lock.release()

    def _holder(self) -> str:
        for _ in range(20):  # the holder writes its record right after taking the lock
            try:
                return f"process {int(self.owner.read_text())}"
            except (OSError, ValueError):
                time.sleep(0.05)
        return "another process"
