"""``bayesvlm-explain export-space``: the folder's configuration, ``--check`` (what the Hub would refuse),
git's own view of the LFS rules, and a local dry run of the Space: fresh venv, requirements, app, /predict."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml

from bayesvlm_explain import cli, space
from bayesvlm_explain.pretrained import package_path

PROMPTS = ["an emoji of frog", "an emoji of grapes", "an emoji of airplane"]
B32, B32_TAG, B32_REPO = "ViT-B-32", "laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
GIT = shutil.which("git")


def _front_matter(readme: Path) -> dict:
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _requirements(folder: Path) -> dict[str, str]:
    lines = [r.strip() for r in (folder / "requirements.txt").read_text().splitlines() if r.strip()]
    from packaging.requirements import Requirement

    return {Requirement(r).name: str(Requirement(r).specifier) for r in lines}


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and ".git" not in p.relative_to(folder).parts)


def _git_lfs_tracked(folder: Path, paths: list[str]) -> dict[str, bool]:
    """git's own answer (``git check-attr filter``) per path, in a fresh repository holding the folder."""
    if not (folder / ".git").exists():
        subprocess.run([GIT, "init", "-q", str(folder)], check=True)
    out = subprocess.run([GIT, "check-attr", "filter", "--", *paths], cwd=folder, check=True,
                         capture_output=True, text=True).stdout
    return {line.split(": filter: ")[0]: line.endswith(": filter: lfs") for line in out.splitlines()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("space") / "studio"
    assert cli.main(["export-space", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def exported_b32(tmp_path_factory) -> dict[str, Path]:
    """The ViT-B-32 Space for ZeroGPU and for a GPU flavour (a10g-small)."""
    root = tmp_path_factory.mktemp("b32")
    return {hw: space.export_space(root / hw, model=B32, pretrained=B32_TAG, hardware=hw)
            for hw in (space.ZEROGPU, "a10g-small")}


def test_export_space_configuration(exported, capsys):
    meta = _front_matter(exported / "README.md")
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == importlib.metadata.version("gradio")
    assert meta["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert meta["app_file"] == "app.py" and (exported / "app.py").is_file()
    assert meta["suggested_hardware"] == "cpu-basic" and "models" not in meta and meta["license"] == "mit"
    reqs = [r for r in (exported / "requirements.txt").read_text().splitlines() if r.strip()]
    assert any(r.startswith("torch") for r in reqs) and any(r.startswith("open_clip_torch") for r in reqs)
    for r in reqs:
        assert not r.startswith(("-", ".", "/")) and "://" not in r and "@" not in r and "bayesvlm" not in r, r
    assert "*.safetensors filter=lfs diff=lfs merge=lfs -text" in (exported / ".gitattributes").read_text()
    lib = exported / "bayesvlm_explain"
    assert (lib / "__init__.py").is_file() and (lib / "space.py").is_file()
    assert (lib / "pretrained/bundled/posterior/posterior.json").is_file()
    assert (lib / "pretrained/examples/examples.json").is_file()
    assert not (lib / "pretrained/posteriors").exists() or not any((lib / "pretrained/posteriors").iterdir())
    assert not list(lib.rglob("__pycache__"))
    assert cli.main(["export-space", str(exported), "--check"]) == 0  # an existing folder: checked only
    out = capsys.readouterr().out
    assert "checked front matter" in out and "under LFS rules" in out and "Space written" not in out


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_every_binary_file_is_lfs_tracked_by_git(exported, exported_b32, tmp_path):
    """git itself (check-attr on the written .gitattributes) tracks every binary file and every file over
    the plain-file limit with LFS, and agrees with the checker's own pattern matching on every path."""
    for folder in (exported, *exported_b32.values()):
        repo = tmp_path / folder.name
        shutil.copytree(folder, repo)
        files = _files(repo)
        extra = ["saved_model/v1/variables.data", "a/b/photo.JPG", "deep/x.tar.gz", "notes.md", "x.py"]
        tracked = _git_lfs_tracked(repo, files + extra)
        for rel in files:
            path = repo / rel
            binary = b"\0" in path.read_bytes()[:8000]
            if binary or path.stat().st_size > space.PLAIN_FILE_LIMIT:
                assert tracked[rel], f"{rel} would be pushed as a plain git blob"
        patterns = space._lfs_patterns(repo)
        for rel in files + extra:
            assert any(space._matches(rel, p) for p in patterns) == tracked[rel], rel
        assert sum(tracked.values()) >= 1


def test_export_b32_for_zerogpu_and_a_gpu_flavour(exported_b32):
    zero, a10g = exported_b32[space.ZEROGPU], exported_b32["a10g-small"]
    for folder in (zero, a10g):
        meta = _front_matter(folder / "README.md")
        assert meta["models"] == [B32_REPO]
        assert meta["preload_from_hub"] == [f"{B32_REPO} open_clip_model.safetensors"]
        assert meta["suggested_hardware"] == "a10g-small"  # ZeroGPU itself is chosen in the settings
        assert f"model={B32!r}, pretrained={B32_TAG!r}" in (folder / "app.py").read_text()
        # only what the B/32 Space uses: its built-in posterior, no bundled model, no emoji examples
        files = _files(folder)
        assert not [f for f in files if "pretrained/bundled" in f or "pretrained/examples" in f]
        shipped = {f.split("/")[3] for f in files if f.startswith("bayesvlm_explain/pretrained/posteriors/")}
        assert shipped == {"ViT-B-32__laion2b_s34b_b79k"}
        assert space.check_space(folder)
    assert _front_matter(zero / "README.md")["python_version"] == space.ZEROGPU_PYTHON == "3.10.13"
    assert _requirements(zero)["torch"] == "==2.8.0" and _requirements(zero)["torchvision"] == "==0.23.0"
    assert "ZeroGPU" in (zero / "README.md").read_text()
    assert _front_matter(a10g / "README.md")["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert not _requirements(a10g)["torch"].startswith("==") and "spaces" not in _requirements(a10g)
    assert space.check_space(zero, hardware=space.ZEROGPU)[1].endswith("for ZeroGPU")
    with pytest.raises(space.SpaceExportError, match="torch==2.8.0"):
        space.check_space(a10g, hardware=space.ZEROGPU)


def test_with_bundled_ships_the_bundled_model(tmp_path):
    out = space.export_space(tmp_path / "both", model=B32, pretrained=B32_TAG, hardware="cpu-upgrade",
                             with_bundled=True)
    assert (out / "bayesvlm_explain/pretrained/bundled/open_clip_model.safetensors").is_file()
    assert space.check_space(out)


@pytest.mark.parametrize("fault, message", [
    ("binary", "blob.dat is binary but no .gitattributes LFS rule"),
    ("png-rule", "extra.png is binary but no .gitattributes LFS rule"),
    ("large-text", "notes.txt is 1,200,000 bytes"),
    ("flavour", "'zero-a10g' is not a documented flavour"),
    ("python", "python_version 3.1 is not a quoted"),
    ("app", "app_file 'main.py' is not a file"),
    ("preload", "preload_from_hub entry"),
])
def test_check_refuses_what_the_hub_would(exported_b32, tmp_path, capsys, fault, message):
    folder = shutil.copytree(exported_b32["a10g-small"], tmp_path / "space")
    readme = folder / "README.md"
    if fault == "binary":
        (folder / "blob.dat").write_bytes(b"\x00\x01" * 100)
    elif fault == "png-rule":
        shutil.copy(package_path("examples", "02_frog_fluent-flat.png"), folder / "extra.png")
        rules = (folder / ".gitattributes").read_text().replace("*.png filter=lfs diff=lfs merge=lfs -text\n", "")
        (folder / ".gitattributes").write_text(rules)
    elif fault == "large-text":
        (folder / "notes.txt").write_text("x" * 1_200_000)
    elif fault == "flavour":
        readme.write_text(readme.read_text().replace("suggested_hardware: a10g-small", "suggested_hardware: zero-a10g"))
    elif fault == "python":
        readme.write_text(re.sub(r'python_version: "[0-9.]+"', "python_version: 3.10", readme.read_text()))
    elif fault == "app":
        readme.write_text(readme.read_text().replace("app_file: app.py", "app_file: main.py"))
    elif fault == "preload":
        readme.write_text(readme.read_text().replace(f"  - {B32_REPO} open_clip", "  - not a repo id open_clip"))
    assert cli.main(["export-space", str(folder), "--check"]) == 2
    err = capsys.readouterr().err
    assert message in err and "would be refused" in err


def test_export_refusals(tmp_path, capsys):
    out = space.export_space(tmp_path / "b", hardware="cpu-upgrade")
    with pytest.raises(space.SpaceExportError, match="not an empty folder"):
        space.export_space(out)
    with pytest.raises(space.SpaceExportError, match="bayesvlm-explain fit"):
        space.export_space(tmp_path / "l14", model="ViT-L-14", pretrained="openai")
    for bad in ("gpu-9000", "zero-a10g"):
        assert cli.main(["export-space", str(tmp_path / "x"), "--hardware", bad]) == 2
        assert "unknown hardware" in capsys.readouterr().err
        assert not (tmp_path / "x").exists()


def test_zerogpu_pins_must_fit_our_requirements(monkeypatch):
    monkeypatch.setitem(space.ZEROGPU_PINS, "torch", "2.1.0")  # below the library's torch>=2.4
    with pytest.raises(space.SpaceExportError, match=r"ZeroGPU needs torch==2\.1\.0 but"):
        space._requirements(zerogpu=True)


def test_gpu_wrapper_without_spaces_is_identity():
    def f(x):
        return x

    assert "spaces" in sys.modules or space.gpu(f) is f


# -- the local dry run: what the Hub does with the folder -------------------------------------------------

_LAUNCHER = """
import importlib.util, json, runpy
wrapped, identity = [], None
if importlib.util.find_spec("spaces") is not None:
    import spaces
    real = spaces.GPU
    identity = real(len) is len  # outside a Space spaces.GPU must hand the function back unchanged
    def spy(fn=None, **kw):
        wrapped.append(fn.__name__)
        return real(fn, **kw)
    spaces.GPU = spy
demo = runpy.run_path("app.py")["demo"]
import bayesvlm_explain
queued = sum(1 for b in demo.fns.values() if b.queue and b.fn is not None)
print("INFO " + json.dumps(dict(lib=bayesvlm_explain.__file__, wrapped=len(wrapped), queued=queued,
                                identity=identity, spaces=importlib.util.find_spec("spaces") is not None)),
      flush=True)
demo.launch()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_and_predict(python: str, folder: Path, env: dict[str, str], image: Path, prompts: list[str]
                       ) -> tuple[dict, str]:
    """Start ``folder/app.py`` with ``python`` (as the Space does: from the folder), call /predict;
    return the launcher's INFO record and the result as text."""
    from gradio_client import Client, handle_file

    port = _free_port()
    env = {**env, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([python, "-c", _LAUNCHER], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not (line := proc.stdout.readline()).startswith("INFO "):
            assert line, "".join(lines)[-3000:]  # the app exited before serving
            lines.append(line)
        info = json.loads(line[5:])
        client = None
        for _ in range(240):  # wait up to 2 minutes for the server
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        assert client is not None
        result = client.predict(handle_file(str(image)), "\n".join(prompts), api_name="/predict")
        return info, str(result)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _fresh_venv(where: Path, requirements: list[str]) -> str:
    """A new venv that sees this interpreter's packages through a ``.pth`` line (so that installing the
    already-present requirements is a quick resolution, not a download), then ``pip install`` of
    ``requirements``; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = str(where / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "host_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return python


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BAYESVLM_BUNDLED_DIR", "SPACES_ZERO_GPU")}


@pytest.mark.slow
def test_bundled_space_runs_from_a_fresh_venv_without_spaces(exported, tmp_path):
    python = _fresh_venv(tmp_path / "venv", ["-r", str(exported / "requirements.txt")])
    image = package_path("examples", "02_frog_fluent-flat.png")
    info, text = _serve_and_predict(python, exported, _clean_env(), image, PROMPTS)
    assert Path(info["lib"]).is_relative_to(exported), info  # the folder's copy, not an installed library
    assert not info["spaces"] and info["wrapped"] == 0 and info["queued"] > 0  # gpu() is the identity
    assert all(p in text for p in PROMPTS)


def _fake_preload(cache: Path) -> None:
    """What ``preload_from_hub`` leaves in the Hub cache at build time, with random ViT-B-32 weights in
    place of the real ones (no download)."""
    import open_clip
    from safetensors.torch import save_file

    commit = "0" * 40
    repo = cache / f"models--{B32_REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    model = open_clip.create_model(B32, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, snapshot / "open_clip_model.safetensors")


@pytest.mark.slow
def test_b32_zerogpu_space_runs_with_spaces_installed(exported_b32, tmp_path):
    folder = exported_b32[space.ZEROGPU]
    # the ZeroGPU pins name torch builds this machine cannot run: swap in the local ones, nothing else
    reqs = (folder / "requirements.txt").read_text().splitlines()
    assert "torch==2.8.0" in reqs and "torchvision==0.23.0" in reqs and "spaces" in reqs
    local = [f"{r.split('==')[0]}=={importlib.metadata.version(r.split('==')[0])}" if "==" in r else r
             for r in reqs if r.strip()]
    python = _fresh_venv(tmp_path / "venv", local)  # with the spaces package, from PyPI
    _fake_preload(tmp_path / "hub")
    env = {**_clean_env(), "HF_HUB_CACHE": str(tmp_path / "hub")}
    info, text = _serve_and_predict(python, folder, env, package_path("examples", "02_frog_fluent-flat.png"),
                                    ["a photo of a frog", "a photo of grapes"])
    assert Path(info["lib"]).is_relative_to(folder), info
    assert info["spaces"] and info["identity"] is True  # spaces.GPU is a no-op outside a Space
    assert info["wrapped"] == info["queued"] > 0  # every queued handler went through spaces.GPU
    assert "a photo of a frog" in text and "a photo of grapes" in text

