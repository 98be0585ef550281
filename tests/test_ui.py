"""The studio serves predictions over HTTP and answers bad input with a message, not a crash."""

from __future__ import annotations

import os
import urllib.request

import pytest
from PIL import Image

import bayesvlm_explain as bx
from bayesvlm_explain.ui import TABLE_HEADERS, build_app, explain_views, parse_prompts, prediction_table

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def test_prediction_table_rows(tiny_vlm, tmp_path):
    path = tmp_path / "img.png"
    Image.new("RGB", (40, 40), (0, 120, 255)).save(path)
    rows = prediction_table(tiny_vlm, str(path), "a cat\n\n a dog \na truck", num_samples=500)
    assert [len(r) for r in rows] == [len(TABLE_HEADERS)] * 3
    assert {r[0] for r in rows} == {"a cat", "a dog", "a truck"}
    assert abs(sum(r[3] for r in rows) - 1) < 1e-3 and abs(sum(r[5] for r in rows) - 1) < 1e-3
    for r in rows:
        assert abs(r[6] + r[7] + r[8] - 1) < 0.01  # variance shares add up


def test_prediction_table_errors(tiny_vlm, tmp_path):
    with pytest.raises(bx.InputError, match="upload an image"):
        prediction_table(tiny_vlm, None, "a cat")
    with pytest.raises(bx.InputError, match="non-empty"):
        parse_prompts("  \n ")
    with pytest.raises(bx.InputError, match="at most"):
        parse_prompts("\n".join(f"p{i}" for i in range(100)))
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(bx.InputError):
        prediction_table(tiny_vlm, str(bad), "a cat")


def test_studio_serves_and_survives_bad_requests(tiny_vlm, tmp_path):
    from gradio_client import Client, handle_file

    app = build_app(tiny_vlm)
    app.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        url = app.local_url
        assert urllib.request.urlopen(url, timeout=30).status == 200
        client = Client(url, verbose=False)
        path = tmp_path / "img.png"
        Image.new("RGB", (40, 40), (255, 0, 0)).save(path)
        with pytest.raises(Exception, match="empty|non-empty"):  # the error message reaches the user
            client.predict(handle_file(str(path)), "   ", api_name="/predict")
        out = client.predict(handle_file(str(path)), "a red square\na blue circle", api_name="/predict")
        assert len(out["data"]) == 2 and out["headers"][0] == "prompt"
    finally:
        app.close()


def test_explain_views_figures(tiny_vlm, tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    path = tmp_path / "img.png"
    Image.new("RGB", (40, 40), (20, 200, 20)).save(path)
    views = explain_views(tiny_vlm, str(path), "a cat\na dog\na frog", target="epistemic", num_samples=200)
    assert all(isinstance(views[k], Figure) for k in ("classes", "decomposition", "pixels", "tokens"))
    total, alea, epi = views["entropy"]
    assert abs(total - alea - epi) < 1e-9 and epi >= 0
    assert plt.get_fignums() == []


def test_too_many_concurrent_users_get_queue_full_and_the_studio_keeps_serving(tmp_path):
    import time

    from conftest import TINY_CLIP, build_tiny, random_posterior
    from gradio_client import Client, handle_file

    vlm = build_tiny(TINY_CLIP)
    vlm.posterior = random_posterior(vlm)
    original = vlm.predict

    def slow_predict(*args, **kwargs):
        time.sleep(1.0)  # a request that takes a while, so that the queue fills up
        return original(*args, **kwargs)

    vlm.predict = slow_predict
    app = build_app(vlm, max_queue=2)
    app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        path = tmp_path / "q.png"
        Image.new("RGB", (32, 32)).save(path)
        client = Client(app.local_url, verbose=False)
        jobs = [client.submit(handle_file(str(path)), "a\nb", api_name="/predict") for _ in range(8)]
        outcomes = []
        for job in jobs:
            try:
                job.result()
                outcomes.append("ok")
            except Exception as err:  # noqa: BLE001 - the client raises a plain Exception with the message
                outcomes.append("full" if "Queue is full" in str(err) else repr(err))
        assert set(outcomes) == {"ok", "full"}, outcomes  # 2 running + 2 queued are served, the rest refused
        assert len(client.predict(handle_file(str(path)), "a\nb", api_name="/predict")["data"]) == 2
    finally:
        app.close()


def test_cli_predict(tiny_vlm, tmp_path, monkeypatch, capsys):
    from bayesvlm_explain import cli

    monkeypatch.setattr(cli, "_load", lambda args: tiny_vlm)
    path = tmp_path / "img.png"
    Image.new("RGB", (40, 40), (0, 0, 0)).save(path)
    assert cli.main(["predict", str(path), "a cat", "a dog"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split("\t") == TABLE_HEADERS and len(lines) == 3
    (tmp_path / "bad.png").write_text("no image")
    assert cli.main(["predict", str(tmp_path / "bad.png"), "a cat"]) == 2
    assert "not a readable image" in capsys.readouterr().err
