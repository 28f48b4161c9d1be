"""Rank pretrained backbones for a data set by a transferability score, then optionally confirm the shortlist.

    result = hs.rank(["timm:tf_efficientnet_lite0@package:efficientnet-lite0",
                      "timm:tf_efficientnet_lite2@package:efficientnet-lite2"], data, score="logme", confirm=2)
    print(result.to_markdown())          # scores, seconds, proxy val accuracy, and the recommendation

Each backbone costs one frozen forward pass over the training split, through the feature cache (so ranking
again, or training a linear probe on the same weights and data afterwards, reads the features from disk). The
score is computed on those features: LogME, H-score and the linear-probe proxy read the features alone; LEEP
and NCE also read the source model's predictions, which come from the source classifier kept in the weights
(package weights and weight files that still hold it) applied to the same pooled features, so they cost no
second pass. Scores rank noisily (TLlib's tables: mean Kendall tau about 0.67 for LogME), so `confirm=k`
fine-tunes the top k briefly and recommends the best by validation accuracy.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..atomic import atomic_write_text
from ..backbones import split_name
from ..backbones.weights import resolve_weights
from ..data import DataSplits, make_batcher
from ..data.sources import resolve_source
from ..errors import ConfigError, DataError, HeadstartError
from ..features import cached_features
from ..model import TransferModel, create_model
from ..runtime import inference_placement
from .transferability import SCORES, _check_labels, score as compute_score

# Names of a network's last Linear layer in timm, torchvision and lukemelas checkpoints.
CLASSIFIER_NAMES = ("classifier", "fc", "head", "_fc", "last_linear")
# rank() sets these hs.fit arguments of a proxy run itself.
_PROXY_OWN = ("epochs", "out", "seed", "progress", "resume", "cache_dir")


@dataclass
class RankRow:
    """One backbone's line in a ranking."""

    backbone: str  # as given: NAME or NAME@WEIGHTS
    score: float  # the ranking score
    scores: dict[str, float]  # every score asked for (the ranking one first)
    seconds: float  # building the backbone, its features (extracted or read from the cache) and every score
    feature_seconds: float  # building the backbone and getting its features
    score_seconds: dict[str, float]
    features_cached: bool  # True when the features came from the cache (no forward pass)
    rank: int = 0  # 1 = best by the ranking score
    proxy_accuracy: float | None = None  # best val accuracy of the proxy fine-tune (confirm), else None
    proxy_seconds: float | None = None


@dataclass
class RankResult:
    """The ranking (rows best first), what was measured, and the recommendation with its reason."""

    rows: list[RankRow]
    score: str
    scores: list[str]
    recommendation: str
    reason: str
    data: dict[str, Any]
    confirm: int = 0
    proxy: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def best(self) -> RankRow:
        """The recommended backbone's row."""
        return next(r for r in self.rows if r.backbone == self.recommendation)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: rows (best first), the scores, the recommendation and its reason."""
        return {"score": self.score, "scores": list(self.scores), "data": dict(self.data),
                "rows": [dataclasses.asdict(r) for r in self.rows], "recommendation": self.recommendation,
                "reason": self.reason, "confirm": self.confirm, "proxy": dict(self.proxy),
                "seconds": round(self.seconds, 3)}

    def to_markdown(self) -> str:
        """The ranking as a Markdown table followed by the recommendation."""
        d = self.data
        head = ["rank", "backbone", *self.scores, "seconds", "features"]
        align = ["---:", "---", *["---:"] * len(self.scores), "---:", "---"]
        if self.confirm:
            head.append("proxy val acc")
            align.append("---:")
        n = len(self.rows)
        lines = [(f"Ranking {n} backbone{'s' if n != 1 else ''} on {d.get('name') or 'the data'} "
                  f"({d.get('train_samples')} training samples, {d.get('classes')} classes) by {self.score}."), "",
                 "| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
        for r in self.rows:
            cells = [str(r.rank), f"`{r.backbone}`", *[f"{r.scores[s]:.4g}" for s in self.scores],
                     f"{r.seconds:.1f}", "cached" if r.features_cached else "extracted"]
            if self.confirm:
                cells.append("-" if r.proxy_accuracy is None else f"{r.proxy_accuracy:.4f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"**Recommendation: `{self.recommendation}`**: {self.reason}"]
        return "\n".join(lines) + "\n"


def parse_backbone(entry: str) -> tuple[str, str | None]:
    """`NAME` or `NAME@WEIGHTS` -> (name, weights or None); split at the first '@'.

    Example: ``timm:tf_efficientnet_lite0@package:efficientnet-lite0``, ``toy:cnn@/tmp/w.safetensors``.
    """
    if not isinstance(entry, str):
        raise ConfigError(f"a backbone is written as a string NAME or NAME@WEIGHTS; received {entry!r} "
                          f"({type(entry).__name__}).")
    name, sep, weights = entry.strip().partition("@")
    if not name or (sep and not weights):
        raise ConfigError(f"backbone {entry!r} is not NAME or NAME@WEIGHTS, e.g. 'timm:resnet50' or "
                          f"'timm:tf_efficientnet_lite0@package:efficientnet-lite0'.")
    return name, weights or None


def source_classifier(weights: str | None, num_features: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The source model's classifier (W (Z, F), b (Z,)) kept in `weights`, if it reads the pooled features.

    A backbone's features are the input of its network's last Linear layer (timm's pre-logits), so that
    layer applied to them gives the source model's predictions. It is found as the one 2-D `<name>.weight`
    with `<name>` ending in one of CLASSIFIER_NAMES and F input columns. None for random or hub weights
    (their classifier is not kept), weights without one, or an ambiguous file.
    """
    if weights is None or weights in ("random", "none", "hub"):
        return None
    state = resolve_weights(weights).state_dict
    found = []
    for key, w in state.items():
        prefix = key.removesuffix(".weight")
        if prefix == key or prefix.rsplit(".", 1)[-1] not in CLASSIFIER_NAMES:
            continue
        if isinstance(w, torch.Tensor) and w.ndim == 2 and w.shape[1] == num_features:
            bias = state.get(prefix + ".bias")
            found.append((w.float(), bias.float() if bias is not None else torch.zeros(w.shape[0])))
    return found[0] if len(found) == 1 else None


def rank(backbones: Sequence[str], data: DataSplits, score: str | Sequence[str] = "logme", confirm: int = 0, *,
         image_size: int | None = None, cache_dir: str | Path | None = None, proxy_epochs: int = 2,
         proxy_strategy: str = "lp-ft", proxy_options: dict[str, Any] | None = None, seed: int = 0,
         precision: str = "auto", batch_size: int = 128, out: str | Path | None = None,
         progress: bool = False, fit: Callable[..., Any] | None = None) -> RankResult:
    """Score every backbone on the training split without fine-tuning it; optionally confirm the top `confirm`.

    Args:
        backbones: ``NAME`` or ``NAME@WEIGHTS`` each, e.g. ``timm:tf_efficientnet_lite0@package:efficientnet-lite0``,
            ``timm:resnet50@/models/r50.safetensors``, ``toy:cnn`` (no ``@``: random init, seeded by `seed`).
        data: the data set; its training split is scored, its val split judges the proxies.
        score: a registered score (``logme``, ``h_score``, ``linear_probe``, ``leep``, ``nce``) or a list of them:
            the first ranks, the others are extra columns. LEEP and NCE need weights that keep their classifier.
        confirm: fine-tune the top k by the score (``proxy_strategy`` for ``proxy_epochs`` epochs, identical for
            all) and recommend the best by val accuracy; 0 recommends the top score. Larger than the number of
            backbones means all of them.
        image_size: input size for every image backbone (smaller is faster on a CPU).
        cache_dir: feature cache folder (default ~/.cache/headstart/features or $HEADSTART_CACHE).
        proxy_options: more `hs.fit` arguments for the proxies (lr, batch_size, lp_epochs, ...).
        precision: ``auto`` (bf16 where measured faster), ``bf16`` or ``fp32`` for the feature pass.
        out: folder for ``rank.json``, ``rank.md`` and the proxy runs (``proxy-<i>``); None keeps proxies in a
            temporary folder that is removed afterwards.
        fit: what trains the proxies, with `hs.fit`'s signature (`hs.rank` passes `hs.fit`).

    Returns:
        RankResult: rows best first (score, seconds, whether the features came from the cache, proxy val
        accuracy), the recommended backbone and a one-line reason.

    Raises:
        ConfigError: no backbones, a malformed or repeated entry, a bad `confirm`, proxy options rank sets itself.
        UnknownNameError: an unknown score.
        HeadstartError: a backbone that cannot be built (named in the message).
        DataError: one class only, too few samples, data without a val split when confirming, a score that
            needs a source classifier the weights do not hold.

    Example:
        >>> data = hs.datasets.load("fashion-mnist", subset=100)  # doctest: +SKIP
        >>> hs.rank(["timm:tf_efficientnet_lite0@package:efficientnet-lite0", "timm:tf_efficientnet_lite0"],
        ...         data, "logme", confirm=1, image_size=128).recommendation  # doctest: +SKIP
    """
    start = time.perf_counter()
    entries = _check_backbones(backbones)
    score_names = [score] if isinstance(score, str) else list(score)
    if not score_names:
        raise ConfigError("score is an empty list; give a score name such as 'logme' (choices: "
                          f"{', '.join(SCORES)}).")
    infos = [SCORES.get(s) for s in score_names]  # unknown names fail here, before any work
    if isinstance(confirm, bool) or not isinstance(confirm, int) or confirm < 0:
        raise ConfigError(f"confirm must be an int >= 0 (how many top backbones to fine-tune briefly); received "
                          f"{confirm!r}.")
    confirm = min(confirm, len(entries))
    labels = _check_data(data, confirm)
    proxy_root = _check_proxy_setup(out, confirm, proxy_options)
    needs_source = any(n in info.needs for info in infos for n in ("source_probs", "source_labels"))

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fingerprint = data.train.fingerprint()
    model_kwargs = {"image_size": image_size} if image_size is not None else {}
    rows = []
    for i, entry in enumerate(entries):
        t0 = time.perf_counter()
        model = _build(entry, seed, model_kwargs, rows)
        head = _source_head(entry, model, score_names) if needs_source else None
        placement = inference_placement(model, precision, device=device)
        placement.move(model)
        feats, cached = cached_features(model.backbone, model.spec, make_batcher(data.train, model.spec, train=False),
                                        fingerprint, cache_dir=cache_dir, batch_size=batch_size, **placement.kwargs())
        del model  # before the scores: a large backbone's memory is not needed for them
        probs = None
        if head is not None:
            probs = torch.softmax(feats.double() @ head[0].double().T + head[1].double(), dim=1)
        t_feat = time.perf_counter() - t0
        values, seconds = {}, {}
        for name in score_names:
            t1 = time.perf_counter()
            try:
                values[name] = compute_score(name, labels=labels, features=feats, source_probs=probs)
            except DataError as e:
                raise DataError(f"backbone {entry!r}: {e}") from None
            seconds[name] = round(time.perf_counter() - t1, 4)
        row = RankRow(entry, values[score_names[0]], values, round(time.perf_counter() - t0, 4), round(t_feat, 4),
                      seconds, cached)
        rows.append(row)
        if progress:
            shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            print(f"[{i + 1}/{len(entries)}] {entry}: {shown} ({row.seconds:.1f} s, "
                  f"{'cached' if cached else 'extracted'} features)", flush=True)

    sign = 1.0 if infos[0].higher_is_better else -1.0
    order = sorted(range(len(rows)), key=lambda j: (-sign * rows[j].score, j))
    rows = [rows[j] for j in order]
    for r, row in enumerate(rows, 1):
        row.rank = r
    proxy = {}
    if confirm:
        proxy = {"strategy": proxy_strategy, "epochs": proxy_epochs, "options": dict(proxy_options or {})}
        if fit is None:
            raise ConfigError("confirm > 0 fine-tunes proxies: pass fit=hs.fit (hs.rank does)")
        _run_proxies(fit, rows[:confirm], data, proxy_root, proxy_strategy, proxy_epochs, proxy_options or {}, seed,
                     cache_dir, model_kwargs, progress, keep=out is not None)
    recommendation, reason = _recommend(rows, score_names[0], confirm, proxy_strategy, proxy_epochs)
    n_classes = len(np.unique(labels))
    result = RankResult(rows, score_names[0], score_names, recommendation, reason,
                        {"name": data.name, "train_samples": len(data.train), "classes": n_classes,
                         "image_size": image_size, "precision": precision}, confirm, proxy,
                        time.perf_counter() - start)
    if out is not None:
        atomic_write_text(Path(out) / "rank.json", json.dumps(result.to_dict(), indent=2))
        atomic_write_text(Path(out) / "rank.md", result.to_markdown())
    return result


def load_data(source: str, *, subset: int | None = None, image_size: int | None = None, seed: int = 0,
              text_column: str | Sequence[str] = "text", label_column: str = "label") -> DataSplits:
    """A built-in data set by name, a text file (.csv, .tsv, .jsonl, .json, .parquet) or an image folder.

    `subset` keeps at most that many training examples per class (seeded). Image folders are decoded once at
    the size the largest eval transform needs (`image_size` / 0.875, or 256 px): several backbones share them.
    """
    return resolve_source(source, subset=subset, image_size=image_size, seed=seed, text_column=text_column,
                          label_column=label_column)


# ---------------------------------------------------------------------------------------------------------
# checks and pieces


def _check_backbones(backbones: Sequence[str]) -> list[str]:
    if isinstance(backbones, str):
        raise ConfigError(f"backbones must be a list of names; received the single string {backbones!r}. "
                          f"Pass [{backbones!r}].")
    entries = list(backbones)
    if not entries:
        raise ConfigError("rank needs at least one backbone; received an empty list. Pass names such as "
                          "['timm:tf_efficientnet_lite0@package:efficientnet-lite0', 'timm:resnet18'].")
    for entry in entries:
        split_name(parse_backbone(entry)[0])  # an unknown source prefix fails now, not after extracting others
    repeated = sorted({e for e in entries if entries.count(e) > 1})
    if repeated:
        raise ConfigError(f"backbone(s) {repeated} are listed more than once; list each once.")
    return [e.strip() for e in entries]


def _check_data(data: DataSplits, confirm: int) -> np.ndarray:
    """The training labels as an array, refused early (before any extraction) when no score could use them."""
    if not isinstance(data, DataSplits):
        raise DataError(f"data must be a DataSplits (hs.datasets.load, hs.data.image_folder, hs.data.from_arrays, "
                        f"...); received {type(data).__name__}.")
    targets = data.train.targets
    if isinstance(targets, dict):
        raise DataError(f"ranking scores one task; data {data.name!r} has tasks {list(targets)}. Rank on the main "
                        "task's single-task data (the data before derive_tasks / combine_tasks / table_tasks).")
    if targets.ndim != 1 or targets.is_floating_point():
        kind = "multi-label" if targets.ndim == 2 else "regression"
        raise DataError(f"ranking scores need single-label class targets; data {data.name!r} has {kind} targets "
                        f"(dtype {targets.dtype}, shape {tuple(targets.shape)}).")
    labels = targets.cpu().numpy()
    _check_labels(labels)  # one class, too few samples per class: the scores' own message
    if confirm and (data.val is None or len(data.val) == 0):
        raise DataError(f"confirm={confirm} judges the proxy fine-tunes on the val split, but data {data.name!r} "
                        f"has none; load it with val_fraction > 0 or a val folder, or use confirm=0.")
    return labels


def _check_proxy_setup(out: str | Path | None, confirm: int, options: dict[str, Any] | None) -> Path | None:
    clash = sorted(set(options or {}) & set(_PROXY_OWN))
    if clash:
        raise ConfigError(f"proxy_options may not set {clash}: rank sets them itself (use proxy_epochs, out, "
                          f"seed, progress, cache_dir). Other hs.fit options (lr, batch_size, lp_epochs, ...) work.")
    if not confirm or out is None:
        return None
    taken = [p.name for p in (Path(out) / f"proxy-{i}" for i in range(1, confirm + 1)) if p.exists()]
    if taken:
        raise ConfigError(f"out folder {str(out)!r} already holds proxy runs {taken}; choose another out folder "
                          f"or remove them. Nothing was changed.")
    return Path(out)


def _build(entry: str, seed: int, model_kwargs: dict[str, Any], done: list[RankRow]) -> TransferModel:
    name, weights = parse_backbone(entry)
    torch.manual_seed(seed)  # random-init weights: the same in the ranking and in the proxy fine-tune
    try:
        return create_model(name, weights=weights, **model_kwargs)
    except Exception as e:  # any failure (bad name, weights that do not fit, missing package) names the backbone
        note = (f" The features of the {len(done)} backbone(s) ranked before it are cached: a rerun reads them."
                if done else "")
        raise HeadstartError(f"backbone {entry!r} could not be built: {e}{note}") from e


def _source_head(entry: str, model: TransferModel, score_names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The source classifier for LEEP / NCE, or an error that names the scores that work without one."""
    weights = parse_backbone(entry)[1]
    head = source_classifier(weights, model.spec.num_features)
    if head is None:
        needing = [s for s in score_names if SCORES.get(s).needs != ("features",)]
        usable = [s for s in SCORES if SCORES.get(s).needs == ("features",)]
        raise DataError(f"{' and '.join(needing)} read(s) the source model's predictions, but backbone {entry!r} "
                        f"has no source classifier headstart can use: its weights ({weights or 'random init'}) do "
                        f"not keep one that reads the pooled features. Package weights (e.g. "
                        f"package:efficientnet-lite0) and weight files with a single classifier/fc/head layer do. "
                        f"Otherwise use a feature-based score: {', '.join(usable)}.")
    return head


def _run_proxies(fit: Callable[..., Any], rows: list[RankRow], data: DataSplits, root: Path | None, strategy: str,
                 epochs: int, options: dict[str, Any], seed: int, cache_dir: str | Path | None, model_kwargs: dict[str, Any],
                 progress: bool, keep: bool) -> None:
    """Fine-tune each row's backbone identically and record its best val accuracy (test split untouched)."""
    root = root if keep else Path(tempfile.mkdtemp(prefix="headstart-rank-"))
    # Model selection must not see the test split: the proxies are judged on val only.
    proxy_data = dataclasses.replace(data, test=None)
    try:
        for i, row in enumerate(rows, 1):
            model = _build(row.backbone, seed, model_kwargs, [])
            result = fit(model, proxy_data, strategy, out=root / f"proxy-{i}", epochs=epochs, seed=seed,
                         progress=progress, report=False, cache_dir=None if cache_dir is None else str(cache_dir), **options)
            acc = result.best_metrics.get("val/accuracy")
            row.proxy_accuracy = None if acc is None or math.isnan(acc) else float(acc)
            row.proxy_seconds = round(result.seconds, 3)
            if progress:
                print(f"proxy {i}/{len(rows)} {row.backbone}: val accuracy {row.proxy_accuracy} "
                      f"({row.proxy_seconds:.1f} s)", flush=True)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _recommend(rows: list[RankRow], score: str, confirm: int, strategy: str, epochs: int) -> tuple[str, str]:
    """The recommended backbone and a one-line reason. rows are best-scored first."""
    top = rows[0]
    if not confirm:
        if len(rows) == 1:
            return top.backbone, f"the only backbone given ({score} {top.score:.4g}); nothing to compare."
        return top.backbone, (f"highest {score} ({top.score:.4g}; next {rows[1].backbone} {rows[1].score:.4g}); "
                              f"not confirmed by fine-tuning: confirm=k fine-tunes the top k briefly.")
    tried = [r for r in rows[:confirm] if r.proxy_accuracy is not None]
    if not tried:
        return top.backbone, f"highest {score} ({top.score:.4g}); the proxy runs logged no val accuracy."
    # Ties in val accuracy (small val sets) go to the better score: rows are in score order and max keeps the first.
    best = max(tried, key=lambda r: r.proxy_accuracy)
    what = f"{epochs}-epoch {strategy}"
    reason = f"best val accuracy {best.proxy_accuracy:.4f} after a {what} proxy, of the top {confirm} by {score}"
    others = [r for r in tried if r is not best]
    if best is not top:
        got = "no val accuracy" if top.proxy_accuracy is None else f"{top.proxy_accuracy:.4f}"
        reason += f"; the top {score} pick {top.backbone} reached {got}"
    elif others:
        runner = max(others, key=lambda r: r.proxy_accuracy)
        reason += f", also the top {score} pick (next: {runner.backbone} {runner.proxy_accuracy:.4f})"
    else:
        reason += ", also the top score"
    return best.backbone, reason + "."
