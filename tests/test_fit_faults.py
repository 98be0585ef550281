"""Fault injection into fit: kills, corrupted cache files, edited data, concurrent fits, hostile images.

Every case must end in factors identical to an undisturbed fit, or in a clear error naming the cause;
never in a silently different result. Also the fit's structure (no import of the model facade, small
functions) and the short last class batch.
"""

from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import zlib
from pathlib import Path

import pytest
import torch
from conftest import TINY_CLIP, build_tiny
from test_fitting import _make_folder

import bayesvlm_explain
from bayesvlm_explain.fitting import CorruptFileError, FitError, fit_posterior
from bayesvlm_explain.fitting.files import load_checked

REPO = Path(__file__).resolve().parent.parent


def _fit(vlm, data, cache, **kw):
    kw.setdefault("num_candidates", 16)
    kw.setdefault("shard_size", 8)
    return fit_posterior(vlm, data, batch_size=8, cache_dir=cache, progress=False, prior_precision=1.0, **kw)


def _assert_same(post, ref) -> None:
    for side in ("image", "text"):
        for k in ("A", "B"):
            torch.testing.assert_close(getattr(getattr(post, side), k), getattr(getattr(ref, side), k), rtol=0, atol=0)


def _differs(post, ref) -> bool:
    return any(not torch.equal(getattr(getattr(post, s), k), getattr(getattr(ref, s), k))
               for s in ("image", "text") for k in ("A", "B"))


@pytest.fixture(scope="module")
def vlm():
    return build_tiny(TINY_CLIP)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _make_folder(tmp_path_factory.mktemp("faults") / "data")


@pytest.fixture(scope="module")
def reference(vlm, data, tmp_path_factory):
    """An undisturbed fit and its cache (40 items: shards of 8, class batches of 16; batch 2 dropped)."""
    cache = tmp_path_factory.mktemp("ref") / "cache"
    post, report = _fit(vlm, data, cache)
    assert report.shards_computed == 5 and report.recomputed == []
    return post, cache


def _copy_cache(reference, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(reference[1], cache)
    return cache


def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
        return
    data_start = 8 + int.from_bytes(raw[:8], "little")  # safetensors: header length, header, tensor bytes
    for pos in (data_start + (len(raw) - data_start) // 2, len(raw) - 3):
        raw[pos] ^= 0x5A
    path.write_bytes(bytes(raw))


# -- the short last class batch ---------------------------------------------------------------------


def test_short_last_class_batch_is_dropped_and_counted(vlm, data, reference, tmp_path):
    ref, _ = reference
    # the same data cut after the two full class batches (32 items) gives the same factors, bit for bit
    cut = tmp_path / "cut"
    shutil.copytree(data, cut)
    lines = (data / "captions.csv").read_bytes().splitlines(keepends=True)  # holds a latin-1 row
    (cut / "captions.csv").write_bytes(b"".join(lines[:33]))
    post, report = _fit(vlm, cut, tmp_path / "c1")
    _assert_same(post, ref)
    assert "partial_class_batch" not in report.skipped
    _, full = _fit(vlm, data, reference[1])
    assert full.skipped["partial_class_batch"] == 8 and full.num_pairs == 28 and full.num_class_batches == 2
    # a data set that forms a single (short) class batch is kept: its pairs share one candidate set
    small = _make_folder(tmp_path / "small", n=6, extras=False)
    _, report = _fit(vlm, small, tmp_path / "c2")
    assert report.num_pairs == 6 and report.skipped == {}


# -- cache files: data edits, byte flips, truncation ---------------------------------------------------


def test_edited_captions_and_images_recompute_only_their_shards(vlm, data, reference, tmp_path):
    edited = tmp_path / "data"
    shutil.copytree(data, edited)
    cache = tmp_path / "cache"
    before, _ = _fit(vlm, edited, cache)
    captions = edited / "captions.csv"
    captions.write_bytes(captions.read_bytes().replace(b"a picture of thing 3\"", b"a drawing of thing 3\""))
    post, report = _fit(vlm, edited, cache)
    fresh, _ = _fit(vlm, edited, tmp_path / "fresh")
    _assert_same(post, fresh)
    assert _differs(post, before)  # the edit matters; a stale cache would have hidden it
    stale = [r for r in report.recomputed if "shard_" in r]
    assert len(stale) == 1 and "shard_000000" in stale[0] and "other data" in stale[0]
    assert report.shards_reused == 4 and report.shards_computed == 1
    assert any("kfac_rank0_of1" in r for r in report.recomputed)  # its sums included the old shard
    # an image rewritten in place (same name) is new data as well
    from PIL import Image

    Image.new("RGB", (20, 20), (200, 10, 10)).save(edited / "20.png")
    post, report = _fit(vlm, edited, cache)
    _assert_same(post, _fit(vlm, edited, tmp_path / "fresh2")[0])
    assert len([r for r in report.recomputed if "shard_" in r]) == 1


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_shard_is_recomputed_and_named(vlm, data, reference, tmp_path, how):
    cache = _copy_cache(reference, tmp_path)
    (cache / "kfac_rank0_of1.safetensors").unlink()  # as after a kill before KFAC: the shards are read again
    shard = cache / "features" / "shard_000001.safetensors"
    _damage(shard, how)
    with pytest.raises(CorruptFileError, match="shard_000001.safetensors"):
        load_checked(shard)
    post, report = _fit(vlm, data, cache)
    _assert_same(post, reference[0])
    assert report.shards_computed == 1 and report.shards_reused == 4
    assert len(report.recomputed) == 1 and str(shard) in report.recomputed[0]
    assert ("checksum" if how == "flip" else "truncated") in report.recomputed[0]


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_checkpoint_is_discarded_and_recomputed(vlm, data, reference, tmp_path, how):
    cache = _copy_cache(reference, tmp_path)
    checkpoint = cache / "kfac_rank0_of1.safetensors"
    _damage(checkpoint, how)
    post, report = _fit(vlm, data, cache)
    _assert_same(post, reference[0])
    assert report.shards_computed == 0
    assert len(report.recomputed) == 1 and str(checkpoint) in report.recomputed[0]


def test_unreadable_manifest_is_an_error_naming_it(vlm, data, reference, tmp_path):
    cache = _copy_cache(reference, tmp_path)
    (cache / "cache.json").write_text('{"version": 2, "mod')
    with pytest.raises(FitError, match="cache.json is unreadable"):
        _fit(vlm, data, cache)


# -- kills (SIGKILL in a subprocess) and the lock they leave -------------------------------------------

_VICTIM = textwrap.dedent("""
    import os, signal, sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    import torch
    torch.set_num_threads(2)
    from conftest import TINY_CLIP, build_tiny
    from bayesvlm_explain.data.pairs import CaptionFile, PairSource
    from bayesvlm_explain.estimation import KFACAccumulator
    from bayesvlm_explain.fitting import fit_posterior

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class Killing(PairSource):  # killed while reading item 27 (shards 0-2 are done)
        description = CaptionFile({data!r}).description

        def __iter__(self):
            for i, item in enumerate(CaptionFile({data!r})):
                if i == 27:
                    die()
                yield item

    source = CaptionFile({data!r})
    if {stage!r} == "features":
        source = Killing()
    else:  # killed inside the second class batch's KFAC update
        calls = []
        update = KFACAccumulator.update
        def killing(self, *a, **k):
            calls.append(1)
            if len(calls) == 3:
                die()
            return update(self, *a, **k)
        KFACAccumulator.update = killing
    fit_posterior(build_tiny(TINY_CLIP), source, num_candidates=16, shard_size=8, batch_size=8,
                  cache_dir={cache!r}, progress=False, prior_precision=1.0)
""")


@pytest.mark.parametrize("stage", ["features", "kfac"])
def test_sigkill_then_resume_gives_identical_factors(vlm, data, reference, tmp_path, stage):
    cache = tmp_path / "cache"
    script = _VICTIM.format(repo=str(REPO), tests=str(REPO / "tests"), data=str(data), stage=stage,
                            cache=str(cache))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    shards = sorted(p.name for p in (cache / "features").glob("*.safetensors"))
    assert len(shards) == (3 if stage == "features" else 5)
    assert (cache / "kfac_rank0_of1.safetensors").is_file() == (stage == "kfac")
    assert (cache / "lock.rank0.pid").is_file()  # the dead process's lock record stays behind
    post, report = _fit(vlm, data, cache)
    _assert_same(post, reference[0])
    assert report.shards_reused == len(shards) and report.recomputed == []


_HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from bayesvlm_explain.fitting.files import CacheLock
    with CacheLock(Path({cache!r}), 0):
        print("locked", flush=True)
        time.sleep(300)
""")


def test_cache_in_use_is_refused_naming_the_process_then_freed_by_its_death(vlm, data, reference, tmp_path):
    cache = _copy_cache(reference, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER.format(repo=str(REPO), cache=str(cache))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FitError, match=f"in use by process {holder.pid}"):
            _fit(vlm, data, cache)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
        holder.stdout.close()
    post, _ = _fit(vlm, data, cache)  # the dead holder's lock is gone with it
    _assert_same(post, reference[0])


def test_two_concurrent_fits_give_identical_factors_or_a_clear_error(data, reference, tmp_path):
    cache = tmp_path / "cache"
    barrier = threading.Barrier(2)
    outcomes: list[object] = [None, None]
    models = [build_tiny(TINY_CLIP) for _ in range(2)]  # (built here: the seeded global RNG is not per thread)

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = _fit(models[i], data, cache)[0]
        except FitError as err:
            outcomes[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert any(not isinstance(o, Exception) for o in outcomes), outcomes
    for o in outcomes:
        if isinstance(o, FitError):
            # the holder is named unless it finished (and removed its record) before the loser looked
            assert f"is in use by process {os.getpid()}" in str(o) or "is in use by another process" in str(o), o
        else:
            _assert_same(o, reference[0])


# -- hostile images ----------------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height 1-bit pixels and holds no image data (PIL refuses it on open)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decompression_bomb_counts_as_bad_image_and_the_fit_goes_on(vlm, tmp_path):
    d = _make_folder(tmp_path / "d", n=6, extras=False)
    (d / "bomb.png").write_bytes(_png_header_only(30000, 30000))
    with open(d / "captions.csv", "a", encoding="utf-8") as fh:
        fh.write('bomb.png,"a small file with 900 million pixels"\n')
    post, report = _fit(vlm, d, tmp_path / "c")
    assert report.skipped == {"bad_image": 1} and report.num_pairs == 6


# -- structure -----------------------------------------------------------------------------------------


def test_fitting_imports_no_model_facade_and_has_small_functions():
    package = Path(bayesvlm_explain.__file__).parent / "fitting"
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module not in ("model", "bayesvlm_explain.model"), f"{path.name} imports model"
            if isinstance(node, ast.FunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.name}:{node.name} has {length} lines"


def test_no_temporary_folder_is_left_behind(vlm, tmp_path, monkeypatch):
    d = _make_folder(tmp_path / "d", n=4, extras=False)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    fit_posterior(vlm, d, num_candidates=4, batch_size=4, progress=False, prior_precision=1.0)
    assert list(scratch.iterdir()) == []
