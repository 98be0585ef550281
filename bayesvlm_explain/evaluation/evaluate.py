"""Zero-shot evaluation of any model + posterior on users' labelled images (``bayesvlm-explain evaluate``).

Data (:func:`open_labeled`): an image folder with one sub-folder per class, or anything
:func:`bayesvlm_explain.data.pairs.open_pairs` reads (a captions CSV/JSONL whose ``caption``/``text``
column holds the class name, WebDataset shards whose ``txt``/``json`` caption is the class name). Class
names come from ``classnames`` (one per line in a file) or from the folders / the distinct labels; each
class becomes the prompt ``template.format(name)``.

Image features are computed once and cached (safetensors, keyed by the model fingerprint and a data
fingerprint), so a rerun with another pseudo-count ``n``, prior precision ``λ`` or predictive only
redoes the posterior algebra. Reported (deterministic ``softmax(τ cos)`` vs the Bayesian predictive):
accuracy, ECE (20 equal-width bins), NLPD, Brier (:mod:`.metrics`), and how well confidence scores flag
misclassifications: AUROC (correct = positive, torchmetrics) and selective accuracy at 50 % / 80 %
coverage. Corrupt or unreadable images are skipped and counted; structural problems (an empty class
folder, class names that do not match the folders, no usable image) raise :class:`EvaluationError`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..adapters import Features
from ..data.folders import IMAGE_SUFFIXES, class_folders, class_name, folder_files, is_image_file, normalise_name
from ..data.pairs import PairSource, RawPair, Skip, items_digest, open_pairs
from ..inputs import InputError, load_image
from ..numerics import categorical_entropy
from ..posterior import KronPosterior, Posterior
from ..selection import bald, class_probabilities
from .metrics import calibration_metrics, misclassification_auroc, selective_accuracy

if TYPE_CHECKING:
    from ..model import BayesVLM

DEFAULT_TEMPLATE = "a photo of a {}."
COVERAGES = (0.5, 0.8)
CACHE_VERSION = 1


class EvaluationError(ValueError):
    """Data that cannot be evaluated; the message names the file, folder or field and the cause."""


def read_classnames(path: str | Path) -> list[str]:
    """Class names, one per non-empty line of a UTF-8 text file (duplicates refused)."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise EvaluationError(f"cannot read class names from {path}: {err}") from err
    if not names:
        raise EvaluationError(f"{path} lists no class names")
    dupes = sorted({n for n in names if [normalise_name(m) for m in names].count(normalise_name(n)) > 1})
    if dupes:
        raise EvaluationError(f"{path} lists these class names more than once: {dupes}")
    return names


class ImageFolder(PairSource):
    """``root/<class>/<image>`` files as pairs ``(path, class folder name)``, in sorted order.

    Folders and files are read as :mod:`bayesvlm_explain.data.folders` defines: hidden entries are
    ignored; files without an image suffix are yielded with the problem ``"not_an_image"`` (counted, not
    decoded). A class folder with no image raises.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.classes = [p.name for p in class_folders(self.root)]
        if not self.classes:
            raise EvaluationError(f"{self.root} has no class sub-folders")
        for name in self.classes:
            if not any(map(is_image_file, folder_files(self.root / name))):
                raise EvaluationError(f"class folder {self.root / name} holds no image "
                                      f"({', '.join(IMAGE_SUFFIXES)})")
        self.description = f"image folder {self.root}"

    def __iter__(self) -> Iterator[RawPair]:
        for name in self.classes:
            for f in folder_files(self.root / name):
                yield RawPair(f"{name}/{f.name}", f, name, None if is_image_file(f) else Skip.NOT_AN_IMAGE)


def _is_image_folder(data: Any) -> bool:
    if not isinstance(data, str | Path) or not Path(data).is_dir():
        return False
    root = Path(data)
    return not any((root / n).is_file() for n in ("captions.csv", "captions.jsonl", "captions.tsv"))


@dataclass
class LabeledData:
    """A labelled image source: ``source`` yields pairs whose caption is a class name."""

    source: PairSource
    classnames: list[str]
    description: str


def open_labeled(data: Any, classnames: list[str] | None = None) -> LabeledData:
    """The labelled images in ``data`` (image folder, captions file/folder, tar shards, or pairs).

    With ``classnames`` an image folder's sub-folders must match them one to one (after
    :func:`~bayesvlm_explain.data.folders.normalise_name`), else :class:`EvaluationError` lists the mismatch;
    without, the folder names decoded by :func:`~bayesvlm_explain.data.folders.class_name` or the sorted
    distinct labels of the source are the classes.
    """
    if _is_image_folder(data):
        folder = ImageFolder(data)
        source: PairSource = folder
        folders = {normalise_name(c): c for c in folder.classes}
        if classnames is None:
            classnames = [class_name(c) for c in folder.classes]
        else:
            names = {normalise_name(c) for c in classnames}
            extra_folders = sorted(folders[k] for k in folders.keys() - names)
            missing = sorted(c for c in classnames if normalise_name(c) not in folders)
            if extra_folders or missing:
                raise EvaluationError(
                    f"class names do not match the folders of {data}: folders without a class name "
                    f"{extra_folders}, class names without a folder {missing}")
    else:
        try:
            source = open_pairs(data)
        except (FileNotFoundError, TypeError) as err:
            raise EvaluationError(str(err)) from err
        if classnames is None:
            labels = {_label_text(p.caption) for p in source if not p.problem}
            classnames = sorted(lab for lab in labels if lab)
            if not classnames:
                raise EvaluationError(f"{source.description} holds no labelled image")
    return LabeledData(source, list(classnames), source.description)


def _label_text(caption: str | bytes | None) -> str | None:
    if isinstance(caption, bytes):
        try:
            caption = caption.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return caption.strip() if isinstance(caption, str) and caption.strip() else None


def save_features(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write tensors and a JSON-able ``meta`` to a safetensors file (atomically, via a temporary file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"json": json.dumps(meta)})
    tmp.replace(path)


def load_features(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and ``meta`` written by :func:`save_features` (safetensors: nothing is unpickled)."""
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["json"])
    return load_file(str(path)), meta


@dataclass
class EncodedData:
    """Image features of the usable items, their labels [N] and what was skipped (by reason)."""

    features: Features
    labels: torch.Tensor
    keys: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    cache_path: Path | None = None
    cache_hit: bool = False


def _labelled_items(data: LabeledData, skipped: Counter) -> Iterator[tuple[RawPair, int]]:
    index = {normalise_name(c): i for i, c in enumerate(data.classnames)}
    for item in data.source:
        if item.problem:
            skipped[item.problem] += 1
            continue
        text = _label_text(item.caption)
        label = index.get(normalise_name(text)) if text else None
        if label is None:
            skipped["unknown_label" if text else "missing_label"] += 1
            continue
        yield item, label


def encode_labeled(vlm: BayesVLM, data: LabeledData, *, cache_dir: str | Path | None = None, batch_size: int = 64,
                   progress: bool = True) -> EncodedData:
    """Image features [N, p] / [N, D] of every usable item, read from or written to the feature cache.

    The cache file is ``<cache_dir>/features-<model fp>-<data fp>.safetensors``; the data fingerprint
    covers each item's key, label and file (path, size, mtime) or bytes, and the class names.
    Features are stored (and always used) as float32, so a cached rerun gives identical numbers.
    """
    from ..fitting.features import model_fingerprint

    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([CACHE_VERSION, vlm.image_size, [normalise_name(c) for c in data.classnames]]).encode())
    total = 0
    for item, label in _labelled_items(data, Counter()):
        h.update(f"{label}:{items_digest([item])}\n".encode())  # one item at a time: shards stay streamed
        total += 1
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"features-{model_fingerprint(vlm)[:16]}-{h.hexdigest()[:16]}.safetensors"
        if path.is_file():
            t, meta = load_features(path)
            return EncodedData(Features(t["activations"].double(), t["embeddings"].double()), t["labels"].long(),
                               meta["keys"], meta["skipped"], path, True)
    skipped: Counter = Counter()
    acts: list[torch.Tensor] = []
    embs: list[torch.Tensor] = []
    labels: list[int] = []
    keys: list[str] = []
    batch: list[tuple[torch.Tensor, int, str]] = []

    def flush() -> None:
        if batch:
            feats = vlm.encoder.image_features(torch.stack([b[0] for b in batch]).to(vlm.encoder.image_dtype))
            acts.append(feats.activations.float())
            embs.append(feats.embeddings.float())
            labels.extend(b[1] for b in batch)
            keys.extend(b[2] for b in batch)
            batch.clear()

    for item, label in tqdm(_labelled_items(data, skipped), total=total, desc="encode images", unit="img",
                            disable=not progress, mininterval=2.0):
        try:
            batch.append((vlm.preprocess(load_image(item.image)), label, item.key))
        except InputError:
            skipped["bad_image"] += 1
        if len(batch) >= batch_size:
            flush()
    flush()
    if not labels:
        raise EvaluationError(f"{data.description}: no usable labelled image (skipped: {dict(skipped)})")
    out = EncodedData(Features(torch.cat(acts).double(), torch.cat(embs).double()), torch.tensor(labels),
                      keys, dict(skipped), path, False)
    if path is not None:
        save_features(path, {"activations": torch.cat(acts), "embeddings": torch.cat(embs), "labels": out.labels},
                      {"keys": keys, "skipped": out.skipped})
    return out


def posterior_copy(post: Posterior, *, pseudo_count: float | None = None,
                   prior_precision: float | None = None) -> Posterior:
    """An independent copy of ``post`` (new factor tensors), optionally with another ``n`` and/or ``λ``."""
    sides = {}
    for side, kp in post.sides().items():
        sides[side] = KronPosterior(kp.A.clone(), kp.B.clone(), num_pairs=kp.num_pairs,
                                    pseudo_count=pseudo_count or kp.pseudo_count,
                                    prior_precision=prior_precision or kp.prior_precision)
    return Posterior(sides["image"], sides["text"], copy.deepcopy(dict(post.metadata)))


def with_posterior(vlm: BayesVLM, post: Posterior) -> Any:
    """A shallow copy of ``vlm`` that uses ``post``; the encoder is shared and ``vlm`` is left untouched."""
    view = copy.copy(vlm)
    view.posterior = post  # the setter rebinds the copy's attribute only
    return view


def bald_scores(vlm: BayesVLM, img: Features, txt: Features, prompts: list[str], num_samples: int, seed: int = 0,
                max_elements: int = 1 << 22) -> torch.Tensor:
    """BALD [N] (nats) from Gaussian logit draws with the full class covariance, in chunks of images; each
    draw becomes class probabilities by the model's own link (:func:`~bayesvlm_explain.selection.class_probabilities`:
    softmax for contrastive models, renormalised sigmoids for SigLIP-style ones)."""
    rows = max(1, max_elements // (num_samples * len(prompts)))
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, img.activations.shape[0], rows):
        part = Features(img.activations[start:start + rows], img.embeddings[start:start + rows])
        pred = vlm.predict_features(part, txt, prompts, predictive="map")
        out.append(bald(class_probabilities(pred.sample(num_samples, gen), vlm.adapter.likelihood)))
    return torch.cat(out)


def confidence_scores(map_probs: torch.Tensor, probs: torch.Tensor, bald_score: torch.Tensor | None
                      ) -> dict[tuple[str, str], torch.Tensor]:
    """Confidence scores (higher = more confident) per ``(method, score)``: [N] each (``bald_score``
    [N], from :func:`bald_scores`, adds the negative BALD)."""
    out = {("deterministic", "max_prob"): map_probs.max(-1).values,
           ("deterministic", "neg_entropy"): -categorical_entropy(map_probs),
           ("bayes", "max_prob"): probs.max(-1).values,
           ("bayes", "neg_entropy"): -categorical_entropy(probs)}
    if bald_score is not None:
        out[("bayes", "neg_bald")] = -bald_score
    return out


def misclassification_rows(map_probs: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor,
                           bald_score: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Per ``(method, score)``: AUROC of the score for correct-vs-wrong and selective accuracies.

    A method's correctness is that of its own argmax; AUROC is ``nan`` when all or none are correct.
    """
    correct = {"deterministic": map_probs.argmax(-1) == labels, "bayes": probs.argmax(-1) == labels}
    rows = []
    for (method, name), score in confidence_scores(map_probs, probs, bald_score).items():
        ok = correct[method]
        rows.append({"method": method, "score": name, "auroc": misclassification_auroc(score, ok),
                     **{f"selective_accuracy_{round(100 * c)}": selective_accuracy(score, ok, c) for c in COVERAGES}})
    return rows


def class_prompts(classnames: list[str], template: str) -> list[str]:
    """``template.format(name)`` per class; the template must hold exactly one ``{}``."""
    if template.count("{}") != 1:
        raise EvaluationError(f"the prompt template must contain '{{}}' exactly once, got {template!r}")
    return [template.replace("{}", name) for name in classnames]


def evaluate(vlm: BayesVLM, data: Any, *, classnames: list[str] | None = None, template: str = DEFAULT_TEMPLATE,
             predictive: str = "probit", num_samples: int = 1000, pseudo_count: float | None = None,
             prior_precision: float | None = None, cache_dir: str | Path | None = None, batch_size: int = 64,
             n_bins: int = 20, progress: bool = True, seed: int = 0) -> Evaluation:
    """Evaluate ``vlm`` (with its posterior) on labelled images: the ``evaluation.json`` report and the
    class probabilities behind it (:class:`Evaluation`).

    ``pseudo_count`` / ``prior_precision`` override the posterior's (on a copy; a new ``n`` without a
    ``λ`` re-optimises ``λ`` by marginal likelihood).
    """
    from ..fitting import optimize_posterior_prior

    start = time.perf_counter()
    labeled = data if isinstance(data, LabeledData) else open_labeled(data, classnames)
    prompts = class_prompts(labeled.classnames, template)
    post = posterior_copy(vlm.require_posterior(), pseudo_count=pseudo_count, prior_precision=prior_precision)
    if pseudo_count is not None and prior_precision is None:
        optimize_posterior_prior(vlm, post)
    view = with_posterior(vlm, post)
    enc = encode_labeled(vlm, labeled, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
    feature_s = time.perf_counter() - start
    txt = vlm.encode_prompts(prompts)
    pred = view.predict_features(enc.features, txt, prompts, predictive=predictive, num_samples=num_samples,
                                 seed=seed)
    probs, map_probs = pred.probs, pred.map_probs
    bald_score = (bald_scores(view, enc.features, txt, prompts, min(num_samples, 256), seed)
                  if predictive != "map" else None)
    rows = [{"method": "deterministic", **calibration_metrics(map_probs, enc.labels, n_bins)},
            {"method": "bayes", **calibration_metrics(probs, enc.labels, n_bins)}]
    report = {
        "data": labeled.description, "model": vlm.name, "classes": labeled.classnames, "template": template,
        "images": int(enc.labels.numel()), "skipped": enc.skipped,
        "settings": {"predictive": predictive, "mc_samples": num_samples, "ece_bins": n_bins,
                     "pseudo_count": {s: p.pseudo_count for s, p in post.sides().items()},
                     "prior_precision": {s: p.prior_precision for s, p in post.sides().items()},
                     "coverages": list(COVERAGES)},
        "rows": rows,
        "misclassification": misclassification_rows(map_probs, probs, enc.labels, bald_score),
        "cache": {"path": str(enc.cache_path) if enc.cache_path else None, "hit": enc.cache_hit},
        "seconds": {"features": feature_s, "total": time.perf_counter() - start},
    }
    return Evaluation(report, {"deterministic": map_probs, f"bayes ({predictive})": probs}, enc.labels)


@dataclass
class Evaluation:
    """What :func:`evaluate` returns.

    Attributes:
        report: the ``evaluation.json`` payload (plain JSON: data, model, classes, settings, metric rows,
            misclassification rows, cache, seconds).
        probs: method name (``"deterministic"``, ``"bayes (<predictive>)"``) -> class probabilities [N, C].
        labels: true class index per image [N].
    """

    report: dict[str, Any]
    probs: dict[str, torch.Tensor]
    labels: torch.Tensor


def summary_markdown(payload: dict[str, Any]) -> str:
    """The metrics and misclassification tables as Markdown."""
    s = payload["settings"]
    lines = [f"# Evaluation of {payload['model']} on {payload['data']}", "",
             f"{payload['images']} images, {len(payload['classes'])} classes, template `{payload['template']}`, "
             f"predictive `{s['predictive']}`, n = {s['pseudo_count']['image']:g}, "
             f"λ = {s['prior_precision']['image']:.4g} (image) / {s['prior_precision']['text']:.4g} (text); "
             f"skipped: {payload['skipped'] or 'none'}.", "",
             f"| method | accuracy | ECE ({s['ece_bins']} bins) | NLPD | Brier |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['accuracy']:.4f} | {r['ece']:.4f} | {r['nlpd']:.4f} | {r['brier']:.4f} |"
              for r in payload["rows"]]
    lines += ["", "Misclassification detection (the score ranks each method's own predictions):", "",
              "| method | score | AUROC | selective acc. @50% | selective acc. @80% |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['score']} | {r['auroc']:.4f} | {r['selective_accuracy_50']:.4f} | "
              f"{r['selective_accuracy_80']:.4f} |" for r in payload["misclassification"]]
    return "\n".join(lines) + "\n"


def write_report(result: Evaluation, out_dir: str | Path) -> Path:
    """``evaluation.json``, ``evaluation.md`` and ``reliability.png`` in ``out_dir``; returns the JSON path."""
    from .figures import reliability_diagram

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    public = result.report
    (out / "evaluation.json").write_text(json.dumps(public, indent=2))
    (out / "evaluation.md").write_text(summary_markdown(public))
    fig = reliability_diagram(result.probs, result.labels, n_bins=public["settings"]["ece_bins"],
                              title=f"reliability: {Path(str(public['data'])).name}")
    fig.savefig(out / "reliability.png", dpi=90)
    return out / "evaluation.json"
