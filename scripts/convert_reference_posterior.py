"""Convert the BayesVLM authors' published ViT-B/32 factors into the package's built-in posterior.

Reads the reference layout (method.md §9: four bare float32 tensors + ``prior_precision_analytic.json``)
without unpickling anything but plain tensors, and writes
``bayesvlm_explain/pretrained/posteriors/ViT-B-32__laion2b_s34b_b79k/`` (``posterior.safetensors`` in
float32, the precision of the published tensors, + ``posterior.json``) with their MIT LICENSE and an
attribution/provenance README beside it.

λ: the published values maximise the reference's marginal likelihood with the wrong log-determinant
(method.md §2.5). Without the pretrained weights at hand, ‖θ*‖² is recovered from the stationarity of that
objective at the published λ (n = 1), and λ is re-derived as the maximiser of the corrected objective for
the same ‖θ*‖²; both λ are recorded.

    python scripts/convert_reference_posterior.py --src ../shared/reference-factors
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bayesvlm_explain.marglik import factor_eigenvalues, implied_theta_sq_norm, optimize_prior_precision  # noqa: E402
from bayesvlm_explain.posterior import REFERENCE_FILES, REFERENCE_JSON, WEIGHTS_FILE, Posterior  # noqa: E402
from bayesvlm_explain.pretrained import package_path  # noqa: E402
from bayesvlm_explain.pretrained.registry import KNOWN_POSTERIORS  # noqa: E402

MODEL, TAG = "ViT-B-32", "laion2b_s34b_b79k"
SUBDIR = "CLIP-ViT-B-32-laion2B-s34B-b79K"
NUM_PAIRS = 327_680  # 10 class batches of 32,768 LAION-400M pairs (method.md §2.2)
ORIGIN = ("published with 'Post-hoc Probabilistic Vision-Language Models' (Baumann et al., arXiv 2412.06014), "
          "https://github.com/AaltoML/BayesVLM, for laion/CLIP-ViT-B-32-laion2B-s34B-b79K")

README = """# Posterior factors for open_clip ViT-B-32 / laion2b_s34b_b79k

Kronecker factors of the image and text projection layers {origin}, estimated by the authors on
{num_pairs:,} LAION-400M pairs. Copyright (c) AaltoML, MIT licence: see `LICENSE` in this folder.

Converted by `scripts/convert_reference_posterior.py` of bayesvlm-explain from the authors' layout
(four float32 tensors, sha256 in `posterior.json` under `provenance`) to `posterior.safetensors`
(float32, symmetrised) + `posterior.json`. Changes: the prior precision λ is the maximiser of the
corrected marginal likelihood (method.md §2.5): image {lam_img:.1f} (published {ref_img:.1f}), text
{lam_txt:.1f} (published {ref_txt:.1f}), pseudo-count n = 1. The published λ are kept in
`posterior.json` (`reference_prior_precision`).
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, required=True, help="folder with LICENSE and " + SUBDIR + "/")
    ap.add_argument("--out", type=Path, default=package_path("posteriors", KNOWN_POSTERIORS[(MODEL, TAG)]))
    args = ap.parse_args(argv)
    factors_dir = args.src / SUBDIR if (args.src / SUBDIR).is_dir() else args.src
    licence = args.src / "LICENSE" if (args.src / "LICENSE").is_file() else factors_dir / "LICENSE"

    post = Posterior.from_reference_dir(factors_dir)
    reference_lam, theta_sq, lam = {}, {}, {}
    for side, p in post.sides().items():
        p.num_pairs = NUM_PAIRS
        eig_a, eig_b = factor_eigenvalues(p.A), factor_eigenvalues(p.B)
        reference_lam[side] = p.prior_precision
        theta_sq[side] = implied_theta_sq_norm(eig_a, eig_b, p.pseudo_count, p.prior_precision, mode="reference")
        lam[side], _ = optimize_prior_precision(eig_a, eig_b, p.pseudo_count, theta_sq[side], mode="exact")
        p.prior_precision = lam[side]
        print(f"{side}: p={p.dim_in} D={p.dim_out} n={p.pseudo_count:g} published λ={reference_lam[side]:.2f} "
              f"‖θ*‖²={theta_sq[side]:.2f} corrected λ={lam[side]:.2f}")
    post.metadata = {
        "model": f"{MODEL}/{TAG}",
        "architecture": "CLIP",
        "likelihood": "infonce",
        "marglik": "exact",
        "reference_prior_precision": reference_lam,
        "theta_sq_norm": theta_sq,
        "theta_sq_norm_note": "recovered from the published lambda (stationarity of the reference objective)",
        "provenance": {
            "origin": ORIGIN,
            "licence": "MIT, Copyright (c) AaltoML (LICENSE beside this file)",
            "converted_by": "scripts/convert_reference_posterior.py",
            "source_sha256": {name: sha256(factors_dir / name) for name in
                              [*REFERENCE_FILES.values(), REFERENCE_JSON]},
            "storage_dtype": "float32 (the published tensors are float32; loaded as float64)",
        },
    }
    out = post.save(args.out)
    weights = out / WEIGHTS_FILE  # Posterior.save writes float64: store the float32 the authors published
    save_file({k: v.float().contiguous() for k, v in load_file(str(weights)).items()}, str(weights))
    shutil.copyfile(licence, out / "LICENSE")
    (out / "README.md").write_text(README.format(
        origin=ORIGIN, num_pairs=NUM_PAIRS, lam_img=lam["image"], ref_img=reference_lam["image"],
        lam_txt=lam["text"], ref_txt=reference_lam["text"]))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
