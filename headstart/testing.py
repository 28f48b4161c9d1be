"""The documented surface that benchmarks (bench/) and tests reach below the public API.

Everything a bench script needs beyond `import headstart as hs`, `hs.data` and `headstart.runtime` is
re-exported here, so internal modules can move without breaking the benchmarks; the names are stable.
"""
from .backbones.hf_source import TEXT_PACKAGES  # package name -> installed MiniLM-style text encoders
from .backbones.weights import resolve_weights  # "package:...", a file or "hub" -> loaded state dict
from .data.datasets import FASHION_MNIST_KINDS  # Fashion-MNIST's items grouped into four kinds (a second task)
from .data.datasets import _bbc_news_articles as bbc_news_articles  # (texts, labels, classes) of BBC News
from .demo import DEMO, TEXT_DEMO  # the demos' run configs
from .metrics import accuracy, macro_f1  # metrics of (N, K) logits against (N,) labels
from .plan.auto import lp_ft_options  # the LP-FT options `auto` uses per modality
from .plan.rank import parse_backbone  # "NAME@WEIGHTS" -> (name, weights)
from .run.dropout import install as install_fast_dropout  # headstart's CPU dropout on a model's Dropout layers

__all__ = ["DEMO", "FASHION_MNIST_KINDS", "TEXT_DEMO", "TEXT_PACKAGES", "accuracy", "bbc_news_articles", "install_fast_dropout",
           "lp_ft_options", "macro_f1", "parse_backbone", "resolve_weights"]
