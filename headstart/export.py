"""Exported models: a trained model as one ONNX or TorchScript file, checked against PyTorch, and loaded back.

`export(run, "onnx")` writes what inference needs and nothing else: PEFT adapters merged into their layers,
BatchNorm folded into the convolutions, every head included, and the preprocessing (image size, mean/std,
resize, or the tokenizer and its length cut), labels and decision threshold in the file's own metadata
(ONNX `metadata_props`, TorchScript `_extra_files`) and in a JSON file beside it. A text model's tokenizer
is saved beside it too. Every export is then run against the PyTorch model on real validation batches at
several batch sizes; the largest logit difference and the top-1 agreement are printed and stored
(`<run>/export/parity.json`).

`load_exported(path)` gives back a model with the surface `inference.Predictor` uses, run by onnxruntime or
torch.jit: `hs.load("model.onnx")` predicts through the same preprocessing code as `hs.load(run)`.
"""
from __future__ import annotations

import copy
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from .atomic import atomic_write, atomic_write_text
from .backbones.spec import BackboneSpec, TextPreprocessing, preprocessing_from_dict
from .bundle import META, bundle_dir, load_model, read_meta
from .data import DataSplits, make_batcher
from .errors import BundleError, ConfigError, DataError
from .fold import _ConvAct, fold_for_inference
from .model import TransferModel
from .runtime import run_over_split

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}  # format -> file suffix of its default name
KIND, VERSION = "headstart-export", 1
EXTRA = "headstart.json"  # the metadata's key (ONNX) or extra-file name (TorchScript)
OPSET = 18
BATCH_SIZES = (1, 7, 64)
TOLERANCE = 1e-4  # fp32: a larger logit difference means the export computes something else


# ----------------------------------------------------------------------------------------------------------
# Writing


class _Graph(nn.Module):
    """The model as an export sees it: plain tensors in (pixels, or token ids and mask), every head's outputs
    out as a tuple, the main head first."""

    def __init__(self, model: TransferModel, input_names: Sequence[str]):
        super().__init__()
        self.model, self.input_names = model, tuple(input_names)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = inputs[0] if self.input_names == ("pixels",) else dict(zip(self.input_names, inputs))
        return tuple(self.model.forward_heads(self.model.forward_features(x)).values())


def _unfused(module: nn.Module) -> nn.Module:
    """The folded copy with its oneDNN conv+activation post-ops split back into conv, activation: that op is
    internal to torch's CPU build, and neither ONNX nor a TorchScript file run elsewhere has it."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _ConvAct):
                setattr(parent, name, nn.Sequential(child.conv, child.act))
    return module


def inference_graph(model: TransferModel, sample: Any) -> tuple[nn.Module, dict[str, Any]]:
    """An eval-mode copy of `model` as it is exported: adapters merged, BatchNorm folded (checked on `sample`,
    a batch of real inputs), heads kept. Returns it and what was done ({"adapters": method or None,
    "batchnorm": pairs folded})."""
    work = copy.deepcopy(model).eval()
    method = (work.adapters or {}).get("method")
    work.merge_adapters()
    with torch.no_grad():
        folded, counts = fold_for_inference(work.backbone, lambda m: m.forward_features(sample))
    work.backbone = _unfused(folded)
    work.eval()
    for p in work.parameters():
        p.requires_grad_(False)
    return work, {"adapters": method, "batchnorm": counts["batchnorm"]}


def input_names(model: TransferModel) -> list[str]:
    if model.spec.modality == "image":
        return ["pixels"]
    if model.spec.modality != "text":
        raise ConfigError(f"export supports image and text models; this one takes {model.spec.modality} input")
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in model.backbone.input_names]


def export_meta(model: TransferModel, bundle_meta: dict[str, Any], fmt: str, names: list[str],
                tokenizer_dir: str | None, done: dict[str, Any]) -> dict[str, Any]:
    """What a user of the file needs to feed it and read its outputs (the same for every format)."""
    pre = model.spec.preprocessing.to_dict()
    if tokenizer_dir is not None:
        pre["tokenizer"] = tokenizer_dir  # relative: the files can move together
    heads = model.head_tasks()
    return {"format": KIND, "version": VERSION, "export_format": fmt, "modality": model.spec.modality,
            "source": model.spec.source, "weights": model.spec.weights, "weights_id": model.spec.weights_id,
            "num_features": model.spec.num_features, "preprocessing": pre, "inputs": names,
            "outputs": list(heads), "main": model.main_name, "heads": heads, "task": model.task,
            "labels": list(model.labels), "decision": model.decision, "data": bundle_meta.get("data"),
            "adapters_merged": done["adapters"], "batchnorm_folded": done["batchnorm"],
            "torch": torch.__version__}


def _example(model: TransferModel, batcher, names: list[str]) -> tuple[torch.Tensor, ...]:
    """Real inputs to trace with: two samples, so that no dimension is 1 (torch.export would fix it at 1)."""
    n = len(batcher.data)
    if n == 0:
        raise DataError("the validation data is empty; export needs at least one sample to check the export on")
    x = batcher.inputs(torch.arange(2) % n)
    if model.spec.modality == "image":
        return (x.float(),)
    if x["input_ids"].shape[1] < 2:  # a one-token batch: pad a column, masked out
        x = {k: nn.functional.pad(v, (0, 1), value=0) for k, v in x.items()}
    return tuple(x[k] for k in names)


def _write_onnx(graph: nn.Module, example: tuple, names: list[str], outputs: list[str], text: bool,
                meta: dict[str, Any], path: Path) -> str:
    """Write `graph` as ONNX (torch.export-based exporter; the TorchScript-based one if that fails); returns
    the exporter used."""
    import onnx

    batch = torch.export.Dim("batch")
    if text:  # token ids never exceed the tokenizer's length cut
        tokens = torch.export.Dim("tokens", max=max(int(meta["preprocessing"]["max_length"]), example[0].shape[1]))
    shapes = tuple({0: batch, 1: tokens} if text else {0: batch} for _ in names)
    axes = {n: ({0: "batch", 1: "tokens"} if text else {0: "batch"}) for n in names} | {o: {0: "batch"} for o in outputs}

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' own deprecation and tracing chatter
            try:
                torch.onnx.export(graph, example, tmp, input_names=names, output_names=outputs,
                                  dynamic_shapes=(shapes,), opset_version=OPSET, dynamo=True, external_data=False,
                                  verbose=False)
                used["exporter"] = "dynamo"
            except Exception as e:  # noqa: BLE001 - any failure of the new exporter: the older one may work
                used["exporter"], used["why"] = "torchscript-onnx", f"{type(e).__name__}: {str(e)[:200]}"
                torch.onnx.export(graph, example, tmp, input_names=names, output_names=outputs,
                                  dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        proto = onnx.load(tmp)
        for key, value in (("headstart", json.dumps({**meta, "exporter": used["exporter"]})),
                           ("labels", json.dumps(meta["labels"])), ("preprocessing", json.dumps(meta["preprocessing"]))):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, tmp)

    used: dict[str, str] = {}
    atomic_write(path, write)
    if "why" in used:
        warnings.warn(f"the torch.export-based ONNX exporter failed ({used['why']}); exported with the "
                      "TorchScript-based one instead", stacklevel=3)
    return used["exporter"]


def _write_torchscript(graph: nn.Module, example: tuple, meta: dict[str, Any], path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing and deprecation warnings; the parity check is what decides
        traced = torch.jit.trace(graph, example, check_trace=False, strict=False)
        extra = {EXTRA: json.dumps({**meta, "exporter": "torch.jit.trace"})}
        atomic_write(path, lambda tmp: torch.jit.save(traced, tmp, _extra_files=extra))
    return "torch.jit.trace"


def _validation(data: Any) -> Any:
    """The split parity runs on: a DataSplits' val split (its test split when it has none), or a split."""
    if isinstance(data, DataSplits):
        part = data.val if data.val is not None and len(data.val) else data.test
        if part is None or not len(part):
            raise DataError("the data has neither a val nor a test split to check the export on; pass a split")
        return part
    if not hasattr(data, "modality") or not hasattr(data, "targets"):
        raise DataError(f"export checks parity on labelled data (DataSplits or one split); got {type(data).__name__}")
    return data


def export(run_or_bundle: str | Path, format: str = "onnx", out: str | Path | None = None, *,
           data: Any = None, batch_sizes: Sequence[int] = BATCH_SIZES, samples: int = 256,
           tolerance: float = TOLERANCE, echo: Callable[[str], None] | None = print) -> Path:
    """Export the best model of a run (or a bundle) for inference, then check it against PyTorch.

    Args:
        format: ``onnx`` (run by onnxruntime) or ``torchscript`` (a traced ``torch.jit`` file).
        out: the file to write; default ``<run>/export/model.onnx`` (``model.pt`` for TorchScript).
        data: validation data for the parity check: DataSplits (its val split), one split, or a function of
            the loaded model returning either (`headstart export` reloads the run's data from config.yaml).
        batch_sizes, samples: parity runs the first `samples` validation inputs at each batch size.
        tolerance: the largest absolute logit difference the check accepts (fp32).
        echo: where the parity summary is printed (None: nowhere).
    Returns:
        the exported file. Beside it: ``<file>.json`` (the metadata and the parity results) and, for text
        models, the tokenizer in ``<file>.tokenizer/``; in the run folder, ``export/parity.json``.
    Raises:
        ConfigError: an unknown format, or no data to check the export on.
        BundleError: the run has no best model yet.

    Example:
        hs.export("runs/fmnist", "onnx", data=hs.datasets.load("fashion-mnist", subset=200))
        hs.load("runs/fmnist/export/model.onnx").predict(["shoe.png"])
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    source = Path(run_or_bundle)
    if (source / "config.yaml").is_file() and not (source / "best" / META).is_file():
        raise BundleError(f"run {str(source)!r} has no best model yet (best/{META} is missing): a run exports "
                          "after it has finished at least one epoch. Finish or resume it (headstart fit --resume).")
    folder = bundle_dir(source)
    run_dir = folder.parent if folder.name == "best" and (folder.parent / "config.yaml").is_file() else None
    model = load_model(folder).eval()
    if data is None:
        raise ConfigError("export checks the exported model against PyTorch on validation data: pass data= "
                          "(DataSplits or a split), or run `headstart export RUN`, which reloads the run's data "
                          "from its config.yaml")
    part = _validation(data(model) if callable(data) else data)
    part = part.subset(torch.arange(min(samples, len(part)))) if len(part) > samples else part
    if part.modality != model.spec.modality:
        raise DataError(f"the validation data holds {part.modality} inputs but the model takes {model.spec.modality}")
    path = Path(out) if out is not None else (run_dir or folder) / "export" / f"model{FORMATS[format]}"
    if path.is_dir():
        raise ConfigError(f"out {str(path)!r} is a folder; give a file path, e.g. {str(path / ('model' + FORMATS[format]))!r}")

    batcher = make_batcher(part, model.spec, train=False)
    names = input_names(model)
    example = _example(model, batcher, names)
    graph_model, done = inference_graph(model, example[0] if names == ["pixels"] else dict(zip(names, example)))
    graph = _Graph(graph_model, names).eval()
    tokenizer_dir = None
    if isinstance(model.spec.preprocessing, TextPreprocessing):
        from .backbones.hf_source import load_tokenizer

        tokenizer_dir = f"{path.name}.tokenizer"
        load_tokenizer(model.spec.preprocessing.tokenizer).save_pretrained(str(path.parent / tokenizer_dir))
    meta = export_meta(model, read_meta(folder), format, names, tokenizer_dir, done)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "onnx":
        exporter = _write_onnx(graph, example, names, list(meta["outputs"]), tokenizer_dir is not None, meta, path)
    else:
        exporter = _write_torchscript(graph, example, meta, path)

    parity = check_parity(model, load_exported(path), part, batch_sizes, tolerance)
    record = {**meta, "exporter": exporter, "file": path.name, "parity": parity}
    atomic_write_text(path.with_name(path.name + ".json"), json.dumps(record, indent=2))
    if run_dir is not None:
        atomic_write_text(run_dir / "export" / "parity.json",
                          json.dumps({"file": str(path), "format": format, **parity}, indent=2))
    if echo is not None:
        echo(parity_summary(path, parity))
    if not parity["passed"]:
        warnings.warn(f"the export {str(path)!r} differs from the PyTorch model: max |logit difference| "
                      f"{parity['max_abs_diff']:.2e} (tolerance {tolerance:g}), top-1 agreement "
                      f"{parity['top1_agreement']:.4f}", stacklevel=2)
    return path


# ----------------------------------------------------------------------------------------------------------
# Parity


def check_parity(reference: nn.Module, exported: nn.Module, split: Any, batch_sizes: Sequence[int] = BATCH_SIZES,
                 tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Both models on the same preprocessed inputs of `split`: the reference once in fp32, the export at each
    batch size. Returns the largest absolute output difference and the top-1 agreement of the classifier heads,
    per batch size and overall, and whether they pass (difference <= tolerance, agreement 1.0)."""
    heads = list(reference.head_tasks())
    batcher = make_batcher(split, reference.spec, train=False)

    def outputs(model: nn.Module, batch_size: int) -> list[torch.Tensor]:
        model.eval()
        rows = run_over_split(lambda x: torch.cat([o.reshape(o.shape[0], -1).float() for o in
                                                   model(x, with_features=True)[0].values()], 1),
                              batcher, batch_size=batch_size)[0]
        return list(torch.split(rows, [h["num_outputs"] for h in reference.head_tasks().values()], 1))

    expected = outputs(reference, 64)
    classifiers = [i for i, h in enumerate(reference.head_tasks().values()) if h["task"] != "regression"]
    per_size = {}
    for b in batch_sizes:
        got = outputs(exported, b)
        diff = max(float((g - e).abs().max()) for g, e in zip(got, expected))
        agree = min((float((g.argmax(1) == expected[i].argmax(1)).float().mean()) for i, g in enumerate(got)
                     if i in classifiers), default=None)
        per_size[str(b)] = {"max_abs_diff": diff, "top1_agreement": agree}
    diff = max(r["max_abs_diff"] for r in per_size.values())
    agreements = [r["top1_agreement"] for r in per_size.values() if r["top1_agreement"] is not None]
    agree = min(agreements) if agreements else None
    return {"samples": len(split), "heads": heads, "batch_sizes": per_size, "max_abs_diff": diff,
            "top1_agreement": agree, "tolerance": tolerance,
            "passed": diff <= tolerance and (agree is None or agree == 1.0)}


def parity_summary(path: Path, parity: dict[str, Any]) -> str:
    sizes = ", ".join(f"batch {b}: {r['max_abs_diff']:.1e}" for b, r in parity["batch_sizes"].items())
    agree = "" if parity["top1_agreement"] is None else f", top-1 agreement {parity['top1_agreement']:.2%}"
    verdict = "passed" if parity["passed"] else f"FAILED (tolerance {parity['tolerance']:g})"
    return (f"exported {path}\nparity on {parity['samples']} validation inputs: max |logit difference| "
            f"{parity['max_abs_diff']:.2e} ({sizes}){agree}: {verdict}")


# ----------------------------------------------------------------------------------------------------------
# Loading


class ExportedModel(nn.Module):
    """An exported file run by onnxruntime (ONNX) or torch.jit (TorchScript), with the parts of TransferModel's
    surface that prediction and evaluation use: `spec` (modality, preprocessing), labels, task, heads,
    decision, and `forward(x[, with_features])` on the batches the data batchers make."""

    def __init__(self, path: Path, meta: dict[str, Any], run: Callable[[list[torch.Tensor]], list[torch.Tensor]]):
        super().__init__()
        self.path, self.meta, self._run = path, meta, run
        pre = dict(meta["preprocessing"])
        if pre.get("kind") == "text":
            pre["tokenizer"] = str(path.parent / pre["tokenizer"])
        self.spec = BackboneSpec(meta["source"], meta["modality"], meta["num_features"],
                                 preprocessing_from_dict(pre), [], meta.get("weights"), meta.get("weights_id"))
        heads = meta["heads"]
        self.main_task = meta["main"] if meta["main"] != TransferModel.MAIN else None
        self.task, self.labels, self.decision = meta["task"], list(meta["labels"]), meta.get("decision")
        self.extra_heads = {n: h for n, h in heads.items() if n != meta["main"]}
        self.input_names = list(meta["inputs"])
        self.columns = meta.get("data")  # text models: the columns the training texts came from

    @property
    def main_name(self) -> str:
        return self.meta["main"]

    def head_tasks(self) -> dict[str, dict[str, Any]]:
        return {n: dict(h) for n, h in self.meta["heads"].items()}

    @property
    def num_outputs(self) -> int:
        return self.meta["heads"][self.meta["main"]]["num_outputs"]

    def forward(self, x: Any, with_features: bool = False):
        if isinstance(x, dict):
            missing = [n for n in self.input_names if n not in x]
            if missing:
                raise DataError(f"the exported model takes {self.input_names}; the inputs lack {missing}")
            inputs = [x[n] for n in self.input_names]
        else:
            inputs = [x.float()]
        outs = dict(zip(self.meta["outputs"], self._run(inputs)))
        return (outs, None) if with_features else outs[self.meta["main"]]


def exported_format(path: str | Path) -> str | None:
    """"onnx" or "torchscript" when `path` is an exported model file, else None (a run or bundle folder)."""
    path = Path(path)
    if not path.is_file():
        return None
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith(f"/extra/{EXTRA}") or n == f"extra/{EXTRA}" for n in z.namelist()):
                return "torchscript"
    return None


def _checked(meta: Any, path: Path) -> dict[str, Any]:
    if not isinstance(meta, dict) or meta.get("format") != KIND or meta.get("version", 0) > VERSION:
        raise BundleError(f"{str(path)!r} is not a headstart export of version <= {VERSION}; export the run again "
                          "with `headstart export RUN`")
    return meta


def load_exported(path: str | Path) -> ExportedModel:
    """An exported ONNX or TorchScript file as a model `inference.Predictor` can run (`hs.load(path)`).

    Raises:
        BundleError: the file is not a headstart export, or is damaged.
    """
    path = Path(path)
    fmt = exported_format(path)
    if fmt == "onnx":
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise BundleError(f"cannot read {str(path)!r} as ONNX ({type(e).__name__}: {str(e)[:200]}); the file "
                              "is damaged or not an ONNX model. Export it again.") from None
        props = session.get_modelmeta().custom_metadata_map
        meta = _checked(json.loads(props["headstart"]) if "headstart" in props else None, path)

        def run(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
            feed = {n: t.detach().cpu().numpy() for n, t in zip(meta["inputs"], inputs)}
            return [torch.from_numpy(o) for o in session.run(meta["outputs"], feed)]

        return ExportedModel(path, meta, run)
    if fmt == "torchscript":
        extra = {EXTRA: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the format asked for
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as e:  # noqa: BLE001
            raise BundleError(f"cannot read {str(path)!r} as TorchScript ({type(e).__name__}: {str(e)[:200]}); "
                              "export it again.") from None
        meta = _checked(json.loads(extra[EXTRA]), path)
        module.eval()

        def run(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
            with torch.no_grad():
                return list(module(*inputs))

        return ExportedModel(path, meta, run)
    raise BundleError(f"{str(path)!r} is not an exported model: expected a .onnx file or a TorchScript file "
                      "written by `headstart export`")
