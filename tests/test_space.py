"""``bayesvlm-explain export-space``: the folder's configuration, and the exported app serving /predict."""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bayesvlm_explain import cli, space
from bayesvlm_explain.pretrained import package_path

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["an emoji of frog", "an emoji of grapes", "an emoji of airplane"]


def _front_matter(readme: Path) -> dict:
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("space") / "studio"
    assert cli.main(["export-space", str(out)]) == 0
    return out


def test_export_space_configuration(exported):
    meta = _front_matter(exported / "README.md")
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == importlib.metadata.version("gradio")
    assert meta["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert meta["app_file"] == "app.py" and (exported / "app.py").is_file()
    assert meta["suggested_hardware"] == "cpu-basic" and "models" not in meta
    reqs = [r for r in (exported / "requirements.txt").read_text().splitlines() if r.strip()]
    assert any(r.startswith("torch") for r in reqs) and any(r.startswith("open_clip_torch") for r in reqs)
    for r in reqs:
        assert not r.startswith(("-", ".", "/")) and "://" not in r and "@" not in r and "bayesvlm" not in r, r
    big = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.stat().st_size > 10 * 2**20}
    rules = {line.split()[0] for line in (exported / ".gitattributes").read_text().splitlines()}
    assert big == rules and "bayesvlm_explain/pretrained/bundled/open_clip_model.safetensors" in rules
    lib = exported / "bayesvlm_explain"
    assert (lib / "__init__.py").is_file() and (lib / "space.py").is_file()
    assert (lib / "pretrained/bundled/posterior/posterior.json").is_file()
    assert (lib / "pretrained/examples/examples.json").is_file()
    assert not list(lib.rglob("__pycache__"))


def test_export_space_real_model_and_refusals(tmp_path, capsys):
    out = space.export_space(tmp_path / "vitb32", model="ViT-B-32", pretrained="laion2b_s34b_b79k")
    meta = _front_matter(out / "README.md")
    assert meta["models"] == ["laion/CLIP-ViT-B-32-laion2B-s34B-b79K"]
    assert meta["preload_from_hub"] == ["laion/CLIP-ViT-B-32-laion2B-s34B-b79K open_clip_model.safetensors"]
    assert meta["suggested_hardware"] == "zero-a10g"
    assert "model='ViT-B-32', pretrained='laion2b_s34b_b79k'" in (out / "app.py").read_text()
    with pytest.raises(space.SpaceExportError, match="not an empty folder"):
        space.export_space(out)
    with pytest.raises(space.SpaceExportError, match="bayesvlm-explain fit"):
        space.export_space(tmp_path / "l14", model="ViT-L-14", pretrained="openai")
    assert cli.main(["export-space", str(tmp_path / "x"), "--hardware", "gpu-9000"]) == 2
    assert "unknown hardware" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_gpu_wrapper_without_spaces_is_identity():
    def f(x):
        return x

    assert "spaces" in sys.modules or space.gpu(f) is f


@pytest.mark.slow
def test_exported_app_serves_predict_from_its_folder(exported):
    from gradio_client import Client, handle_file

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BAYESVLM_BUNDLED_DIR")}
    env.update(GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    code = ("import runpy, bayesvlm_explain; print('LIB', bayesvlm_explain.__file__, flush=True); "
            "runpy.run_path('app.py', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=exported, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lib = proc.stdout.readline().split(maxsplit=1)[1].strip()
        assert Path(lib).is_relative_to(exported), lib
        client = None
        for _ in range(240):  # the app loads the model first: wait up to 2 minutes for the server
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        assert client is not None
        image = package_path("examples", "02_frog_fluent-flat.png")
        result = client.predict(handle_file(str(image)), "\n".join(PROMPTS), api_name="/predict")
        text = str(result)
        assert all(p in text for p in PROMPTS)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
