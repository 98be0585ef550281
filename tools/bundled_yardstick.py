"""Rebuild the bundled model's yardstick (``python -m tools.bundled_yardstick``).

Reference: the shift benchmark's in-domain calibration split; the out-of-domain rule is chosen on its
held-out in-domain split and every shift style (:func:`bayesvlm_explain.yardstick.choose_out_of_domain_rule`).
Written beside the bundled posterior.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from bayesvlm_explain.model import BayesVLM
from bayesvlm_explain.pretrained.registry import BUNDLED, asset_spec
from bayesvlm_explain.yardstick import Yardstick, build_yardstick, choose_out_of_domain_rule

from .shift_benchmark import render_splits


def build_bundled(num_samples: int = 1000, cache_dir: Any = None) -> Yardstick:
    """The bundled model's yardstick: reference = the shift benchmark's in-domain calibration split; the
    out-of-domain rule is chosen on its held-out in-domain split and every shift style."""
    vlm = BayesVLM.from_pretrained(BUNDLED, device="cpu")
    size = vlm.image_size[0] if vlm.image_size else 64
    splits = render_splits(size, cache_dir)
    prompts = vlm.assets.prompts()
    if prompts is None:
        raise SystemExit("the bundled model's assets carry no label set")
    ys = build_yardstick(vlm, splits["calibration"].images, prompts, num_samples=num_samples,
                         reference="bundled shift benchmark, in-domain calibration split")
    figures = {name: {k: v.numpy() for k, v in ys.measure(vlm, s.images).items()}
               for name, s in splits.items() if name != "calibration"}
    in_domain = figures.pop("in_domain")
    ys.rule = choose_out_of_domain_rule(ys, in_domain, figures)
    return ys


def main(argv: Sequence[str] | None = None) -> int:
    """Rebuild the bundled model's yardstick, write it beside its posterior and print its rule."""
    parser = argparse.ArgumentParser(prog="python -m tools.bundled_yardstick", description=main.__doc__)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--cache-dir", default=None, help="emoji render cache (default: the user cache)")
    args = parser.parse_args(argv)
    ys = build_bundled(args.num_samples, args.cache_dir)
    spec = asset_spec(BUNDLED)
    assert spec is not None and spec.posterior_dir is not None  # the registry's bundled entry
    path = ys.save(spec.posterior_dir())
    print(f"wrote {path}")
    assert ys.rule is not None  # set by build_bundled
    print(f"out-of-domain rule: {ys.rule.figure} percentile >= {ys.rule.percentile}")
    for name, rate in ys.rule.flag_rates.items():
        print(f"  flagged {name}: {rate:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
