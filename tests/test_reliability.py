"""Admission control under truly simultaneous joins (threads released by a barrier), on a served studio."""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest
from PIL import Image

from bayesvlm_explain.ui import build_app
from bayesvlm_explain.ui.admission import Admission, Busy, Limits, release_request

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def test_admission_counts_atomically_and_frees_each_slot_once():
    adm = Admission(Limits(lanes={"light": 6, "heavy": 2}, per_address={"light": 4, "heavy": 2}, per_session=2))
    for _ in range(20):  # many trials of 32 threads admitted at the same instant
        barrier = threading.Barrier(32)
        got: list = []

        def join(k: int, barrier: threading.Barrier = barrier, got: list = got) -> None:
            barrier.wait()
            try:
                got.append(adm.admit("light", f"10.0.0.{k % 2}", None))
            except Busy:
                pass

        threads = [threading.Thread(target=join, args=(k,)) for k in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 6 and adm.count("address", "light", "10.0.0.0") <= 4  # lane bound 6, address bound 4
        for ticket in got:
            ticket.release()
            ticket.release()  # a second release frees nothing
        assert adm.count("lane", "light") == 0
    first, second = adm.admit("heavy", "a", "s"), adm.admit("heavy", "b", "s")
    with pytest.raises(Busy, match="busy: you already have 2"):
        adm.admit("light", "c", "s")  # per session, all lanes
    with pytest.raises(Busy, match="heavy lane is full"):
        adm.admit("heavy", "d")
    assert adm.admit("light", "d") is not None  # a full heavy lane never refuses a light request
    del first  # a ticket dropped unreleased (gradio let go of a job it never ran) frees its slot
    assert adm.count("lane", "heavy") == 1 and adm.count("session", "s") == 1
    release_request(object())  # a request without a ticket: nothing happens
    second.release()
    assert adm.count("lane", "heavy") == 0


@pytest.fixture()
def held_studio(tmp_path):
    """A served studio whose predictions wait for ``release`` (so admitted requests stay pending)."""
    from conftest import TINY_CLIP, build_tiny, random_posterior

    vlm = build_tiny(TINY_CLIP)
    vlm.posterior = random_posterior(vlm)
    original = vlm.predict_features
    release = threading.Event()

    def held(*args, **kwargs):
        release.wait(60)
        return original(*args, **kwargs)

    vlm.predict_features = held
    app = build_app(vlm, max_queue=32, per_client=4)
    app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    path = tmp_path / "q.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(path)
    with open(path, "rb") as fp:
        uploaded = httpx.post(f"{app.local_url}gradio_api/upload", files={"files": ("q.png", fp, "image/png")},
                              timeout=30).json()[0]
    try:
        yield app, release, {"path": uploaded, "meta": {"_type": "gradio.FileData"}}
    finally:
        release.set()
        app.close()


def _simultaneous(n: int, post) -> list[httpx.Response]:
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def go(k: int) -> None:
        with httpx.Client(timeout=60) as http:
            barrier.wait()
            out[k] = post(http, k)

    threads = [threading.Thread(target=go, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _drain(app, release: threading.Event) -> None:
    release.set()
    deadline = time.monotonic() + 60
    while any(app.admission.count("lane", lane) for lane in ("light", "heavy")):
        assert time.monotonic() < deadline, "admitted requests never released their slots"
        time.sleep(0.02)
    release.clear()


def test_simultaneous_joins_never_exceed_the_session_address_and_lane_bounds(held_studio):
    app, release, image = held_studio
    url = app.local_url
    predict = next(f._id for f in app.fns.values() if f.api_name == "predict")
    join = {"data": [image, "a\nb", None], "fn_index": predict, "event_data": None, "trigger_id": None}
    for trial in range(6):  # one session hash, 16 joins at once: exactly per_client (4) admitted
        body = {**join, "session_hash": f"greedy{trial}"}
        replies = _simultaneous(16, lambda http, k, body=body: http.post(f"{url}gradio_api/queue/join", json=body))
        assert sorted(r.status_code for r in replies) == [200] * 4 + [422] * 12
        refused = next(r for r in replies if r.status_code == 422).json()["detail"][0]
        assert refused["message"].startswith("busy: you already have 4") and "/tmp" not in refused["message"]
        _drain(app, release)
    for _ in range(4):  # session-less /call loops: limited by the connection address (16 light)
        replies = _simultaneous(24, lambda http, k: http.post(f"{url}gradio_api/call/predict",
                                                              json={"data": [image, "a\nb", None]}))
        assert sorted(r.status_code for r in replies) == [200] * 16 + [422] * 8
        # the address's light lane is full, yet its heavy lane admits explains (own bound per lane)
        heavy = httpx.post(f"{url}gradio_api/call/explain", json={"data": [
            image, "a\nb", "", "total predictive entropy", "saliency", 4, None]}, timeout=30)
        assert heavy.status_code == 200
        _drain(app, release)
    app.admission.limits = Limits(lanes={"light": 5, "heavy": 2}, per_address={"light": 99, "heavy": 99},
                                  per_session=99)
    for _ in range(4):  # distinct session hashes: the lane's total bound holds
        replies = _simultaneous(40, lambda http, k: http.post(
            f"{url}gradio_api/queue/join", json={**join, "session_hash": f"s{k}-{time.time_ns()}"}))
        assert sorted(r.status_code for r in replies) == [200] * 5 + [422] * 35
        _drain(app, release)


def test_a_busy_refusal_reaches_a_gradio_client_as_a_message_and_slots_come_back(held_studio):
    from gradio_client import Client, handle_file

    app, release, image = held_studio
    client = Client(app.local_url, verbose=False)
    path = image["path"]
    jobs = [client.submit(handle_file(path), "a\nb", api_name="/predict") for _ in range(4)]
    deadline = time.monotonic() + 60
    while app.admission.count("session", client.session_hash) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with pytest.raises(Exception, match="busy: you already have 4") as err:
        client.predict(handle_file(path), "a\nb", api_name="/predict")
    assert "KeyError" not in str(err.value)
    release.set()
    assert all(j.result()[3]["classes"][0]["prompt"] == "a" for j in jobs)
    bad = httpx.post(f"{app.local_url}gradio_api/call/predict", json={"data": [image, "", None]}, timeout=30)
    assert bad.status_code == 200  # admitted, then refused by the view (empty prompts): its slot is freed too
    _drain(app, release)
    # a file reference outside the upload folder: gradio's reply never shows a server path
    outside = {"path": os.path.abspath(__file__), "meta": {"_type": "gradio.FileData"}}
    reply = httpx.post(f"{app.local_url}gradio_api/call/predict", json={"data": [outside, "a", None]}, timeout=30)
    text = reply.text
    if reply.status_code == 200:
        text += httpx.get(f"{app.local_url}gradio_api/call/predict/{reply.json()['event_id']}", timeout=30).text
    assert os.getcwd() not in text and os.path.dirname(os.path.abspath(__file__)) not in text
    _drain(app, release)


def test_uploads_are_capped_per_request_and_budgeted_per_address(tiny_vlm):
    app = build_app(tiny_vlm)
    app.admission.limits = Limits(upload_request_bytes=100_000, upload_budget_bytes=250_000)
    app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    url = f"{app.local_url}gradio_api/upload"
    try:
        # ten files of 19 KB in one request: each is small, together they pass the request's cap
        many = [("files", (f"f{i}.png", b"x" * 19_000, "image/png")) for i in range(10)]
        reply = httpx.post(url, files=many, timeout=30)
        assert reply.status_code == 413 and "one request takes at most" in reply.json()["detail"]
        sizes = [httpx.post(url, files=[("files", ("a.png", b"y" * 90_000, "image/png"))], timeout=30).status_code
                 for _ in range(3)]
        assert sizes == [200, 200, 413]  # 2 x 90 KB fit the 250 KB budget of this address, a third does not
        app.admission.limits = Limits(min_free_disk_bytes=2**60)
        full = httpx.post(url, files=[("files", ("a.png", b"z" * 10, "image/png"))], timeout=30)
        assert full.status_code == 413 and "short of disk space" in full.json()["detail"]
    finally:
        app.close()
