"""Admission control for the studio server: one lock-protected step of our own, before gradio's queue.

Every request that would enter the queue (``POST .../gradio_api/queue/join`` from the page and gradio
clients, ``POST .../gradio_api/call/NAME`` from plain HTTP scripts) passes :class:`AdmissionMiddleware`,
an ASGI middleware on the app gradio builds. It finds the request's *lane* (``light``: predict, compare,
batch and any queued helper of the page; ``heavy``: explain, calibrate, select) and asks
:meth:`Admission.admit`, which under one lock checks and counts, atomically:

* the lane's total (waiting or running) against ``Limits.lanes[lane]``: each lane has its own bound, so a
  full heavy lane never refuses a light request;
* the connection address's requests in that lane against ``Limits.per_address[lane]`` (a script cannot
  rotate its address for free, so session-less ``/call`` loops are limited too);
* the browser session's requests (all lanes) against ``Limits.per_session`` (a session hash from the page or
  a gradio client; a request without one counts for its address only).

A refused request gets a clean HTTP 422 in the shape of gradio's validation errors, "busy: ...", and never
reaches gradio's queue. An admitted request carries a :class:`Ticket` in its ASGI scope; the slot is freed
when the job ends (:func:`release_request`, called in a ``finally`` around gradio's processing of the job by
:meth:`~.app.StudioBlocks.process_api`, so also when gradio fails before the view runs), when the join itself
fails, or, for a job gradio drops without running it (cancelled, client gone), when gradio lets go of the
request (the ticket's finaliser). Uploads (``POST .../gradio_api/upload``) are checked against a
per-request total (from ``Content-Length``, before a byte is read) and a per-address budget over a window,
and refused while the upload folder's disk is short of space. Error replies of the queue routes never show a
server path (gradio's "Cannot move /srv/... " texts are replaced). No gradio import: the middleware reads
gradio's public HTTP protocol only.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

LANES = ("light", "heavy")
SCOPE_KEY = "bayesvlm.ticket"  # where an admitted request's Ticket lies in its ASGI scope
MAX_JOIN_BODY = 1 << 20  # bytes of a queue-join / call body (inputs are file references, not files)
MAX_REQUEST_UPLOAD_BYTES = 64 * 2**20  # one upload request (all its files together)
UPLOAD_BUDGET_BYTES = 512 * 2**20  # per address within UPLOAD_WINDOW_S
UPLOAD_WINDOW_S = 600.0
MIN_FREE_DISK_BYTES = 2 * 2**30  # uploads are refused while the upload folder's disk has less free space
_JOIN = re.compile(r"/gradio_api/queue/join/?$")
_CALL = re.compile(r"/gradio_api/call/(?:v2/)?([^/]+)/?$")
_UPLOAD = re.compile(r"/gradio_api/upload/?$")
_SERVER_PATH = re.compile(r"Cannot move [^\"]*")


class Busy(Exception):
    """A request refused by admission control; the message is for the user."""


@dataclass(frozen=True)
class Limits:
    """Bounds on requests waiting or running (see the module doc).

    Attributes:
        lanes: per lane, all clients together.
        per_address: per lane, one connection address.
        per_session: one browser / gradio-client session, all lanes.
        upload_request_bytes: one upload request (all files). upload_budget_bytes: per address per
            ``upload_window_s`` seconds. min_free_disk_bytes: free space the upload folder's disk keeps.
    """

    lanes: Mapping[str, int] = field(default_factory=lambda: {"light": 32, "heavy": 8})
    per_address: Mapping[str, int] = field(default_factory=lambda: {"light": 16, "heavy": 4})
    per_session: int = 4
    upload_request_bytes: int = MAX_REQUEST_UPLOAD_BYTES
    upload_budget_bytes: int = UPLOAD_BUDGET_BYTES
    upload_window_s: float = UPLOAD_WINDOW_S
    min_free_disk_bytes: int = MIN_FREE_DISK_BYTES

    @classmethod
    def studio(cls, max_queue: int = 32, per_client: int = 4) -> Limits:
        """The studio's limits from its two knobs: ``max_queue`` light requests (a quarter of it, at least
        one, heavy ones); ``per_client`` per session and heavy requests per address; light per address half
        of ``max_queue`` (at least ``per_client``)."""
        if max_queue < 1 or per_client < 1:
            raise ValueError("max_queue and per_client must be at least 1")
        heavy = max(1, max_queue // 4)
        return cls(lanes={"light": max_queue, "heavy": heavy},
                   per_address={"light": max(per_client, max_queue // 2), "heavy": min(per_client, heavy)},
                   per_session=per_client)


class Ticket:
    """One admitted request's slot; :meth:`release` frees it (once; later calls do nothing). A ticket that
    is garbage-collected unreleased frees its slot too."""

    def __init__(self, admission: Admission, keys: tuple[Any, ...]) -> None:
        self._finalizer = weakref.finalize(self, admission._release, keys)

    def release(self) -> None:
        """Free the slot (idempotent)."""
        self._finalizer()


class Admission:
    """The counters of :class:`Limits`, checked and updated under one lock; also the map from gradio's
    function ids and api names to lanes (filled by :meth:`register`)."""

    def __init__(self, limits: Limits | None = None, upload_dir: str | None = None) -> None:
        self.limits = limits or Limits()
        self.upload_dir = upload_dir
        self._lock = threading.Lock()
        self._counts: dict[tuple[Any, ...], int] = {}
        self._uploads: dict[str, deque[tuple[float, int]]] = {}
        self.lane_of_fn: dict[int, str] = {}
        self.lane_of_api: dict[str, str] = {}

    def register(self, fn_id: int, api_name: str | None, lane: str) -> None:
        """Route gradio function ``fn_id`` (and ``/call/api_name``) to ``lane``."""
        if lane not in self.limits.lanes:
            raise ValueError(f"unknown lane {lane!r}; choose one of {sorted(self.limits.lanes)}")
        self.lane_of_fn[fn_id] = lane
        if api_name:
            self.lane_of_api[api_name] = lane

    def admit(self, lane: str, address: str, session: str | None = None) -> Ticket:
        """A :class:`Ticket` for one more request of ``address`` (and ``session``) in ``lane``; :class:`Busy`
        when a bound is reached. Check and count happen under one lock."""
        lim = self.limits
        checks = [(("lane", lane), lim.lanes[lane], f"the {lane} lane is full ({lim.lanes[lane]} requests waiting "
                                                     "or running); try again in a moment"),
                  (("address", lane, address), lim.per_address[lane],
                   f"{lim.per_address[lane]} {lane} requests from your address are already waiting or running; "
                   "wait for them to finish")]
        if session:
            checks.append((("session", session), lim.per_session,
                           f"you already have {lim.per_session} requests waiting or running; wait for them to finish"))
        with self._lock:
            for key, bound, message in checks:
                if self._counts.get(key, 0) >= bound:
                    raise Busy(f"busy: {message}")
            for key, _, _ in checks:
                self._counts[key] = self._counts.get(key, 0) + 1
        return Ticket(self, tuple(key for key, _, _ in checks))

    def _release(self, keys: tuple[Any, ...]) -> None:
        with self._lock:
            for key in keys:
                left = self._counts.get(key, 0) - 1
                if left > 0:
                    self._counts[key] = left
                else:
                    self._counts.pop(key, None)

    def count(self, *key: Any) -> int:
        """Requests counted under ``key``: ``("lane", lane)``, ``("address", lane, host)`` or
        ``("session", hash)``."""
        with self._lock:
            return self._counts.get(tuple(key), 0)

    def charge_upload(self, address: str, size: int) -> None:
        """Count an upload of ``size`` bytes against ``address``'s budget; :class:`Busy` when one request or
        the address's total within the window would exceed its limit."""
        lim = self.limits
        if size > lim.upload_request_bytes:
            raise Busy(f"an upload of {size / 2**20:.1f} MB; one request takes at most "
                       f"{lim.upload_request_bytes // 2**20} MB (all files together)")
        if self.upload_dir and _free_bytes(self.upload_dir) - size < lim.min_free_disk_bytes:
            raise Busy("busy: the server is short of disk space for uploads; try again later")
        now = time.monotonic()
        with self._lock:
            spent = self._uploads.setdefault(address, deque())
            while spent and now - spent[0][0] > lim.upload_window_s:
                spent.popleft()
            if sum(b for _, b in spent) + size > lim.upload_budget_bytes:
                raise Busy(f"busy: your address uploaded {lim.upload_budget_bytes // 2**20} MB in the last "
                           f"{lim.upload_window_s / 60:g} minutes; try again later")
            spent.append((now, size))


def _free_bytes(folder: str) -> int:
    """Free bytes on the disk holding ``folder`` (or its nearest existing parent)."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def release_request(request: Any) -> None:
    """Free the admission slot of a gradio request (a ``gr.Request`` or a Starlette request); no-op for a
    request that was not admitted."""
    inner = getattr(request, "request", request)  # gr.Request wraps the Starlette request
    scope = getattr(inner, "scope", None)
    ticket = scope.get(SCOPE_KEY) if isinstance(scope, dict) else None
    if isinstance(ticket, Ticket):
        ticket.release()


async def _reply(send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _busy_reply(message: str) -> dict[str, Any]:
    """Gradio's shape of a failed validation (its clients show the message)."""
    return {"detail": [{"__type__": "validate", "is_valid": False, "message": message,
                        "parameter_name": "request"}]}


class AdmissionMiddleware:
    """ASGI middleware applying an :class:`Admission` to gradio's queue and upload routes (module doc)."""

    def __init__(self, app: Callable[..., Awaitable[None]], admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        address = (scope.get("client") or ("unknown",))[0]
        if _UPLOAD.search(path):
            return await self._upload(scope, receive, send, address)
        call = _CALL.search(path)
        if call is None and not _JOIN.search(path):
            return await self.app(scope, receive, send)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_JOIN_BODY:
                return await _reply(send, 413, {"detail": "request body too large"})
            if not message.get("more_body"):
                break
        try:
            data = json.loads(body or b"{}")
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            return await _reply(send, 400, {"detail": "the request body must be a JSON object"})
        if call:
            lane = self.admission.lane_of_api.get(call.group(1))
        else:
            fn = data.get("fn_index")  # queued helpers that are not registered (the image preview) count as light
            lane = self.admission.lane_of_fn.get(fn, "light") if isinstance(fn, int) else "light"
        session = data.get("session_hash")
        ticket = None
        if lane is not None:
            try:
                ticket = self.admission.admit(lane, address, session if isinstance(session, str) else None)
            except Busy as err:
                return await _reply(send, 422, _busy_reply(str(err)), [(b"retry-after", b"5")])
            scope[SCOPE_KEY] = ticket
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = 0
        held: list[dict[str, Any]] = []

        async def watch(message: dict[str, Any]) -> None:
            """Pass the reply on; an error reply is held until complete and its server paths removed."""
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if status != 200 and ticket is not None:
                    ticket.release()  # the join failed: nothing will run
            if status == 200:
                return await send(message)
            held.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                text = b"".join(m.get("body", b"") for m in held[1:])
                clean = _SERVER_PATH.sub("a file that was not uploaded to this server", text.decode("utf-8", "replace"))
                start = dict(held[0])
                start["headers"] = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                start["headers"].append((b"content-length", str(len(clean.encode())).encode()))
                await send(start)
                await send({"type": "http.response.body", "body": clean.encode()})

        try:
            await self.app(scope, replay, watch)
        except BaseException:
            if ticket is not None:
                ticket.release()
            raise

    async def _upload(self, scope: Scope, receive: Receive, send: Send, address: str) -> None:
        headers = dict(scope.get("headers") or [])
        try:
            size = int(headers.get(b"content-length", b""))
        except ValueError:
            return await _reply(send, 411, {"detail": "uploads need a Content-Length header"})
        try:
            self.admission.charge_upload(address, size)
        except Busy as err:
            return await _reply(send, 413, {"detail": str(err)}, [(b"retry-after", b"60")])
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > size:  # more than declared: cut the body short (the multipart parser then fails)
                return {"type": "http.request", "body": b"", "more_body": False}
            return message

        await self.app(scope, counted, send)
