"""headstart: transfer learning on PyTorch. Pretrained backbone + new head; train, evaluate, ship.

    import headstart as hs
    model = hs.create_model("timm:tf_efficientnet_lite0", weights="package:efficientnet-lite0")
    data = hs.datasets.load("fashion-mnist", subset=200)
    run = hs.fit(model, data, strategy="linear-probe", epochs=3, out="runs/fmnist")
    hs.load("runs/fmnist").predict(["shoe.png"])

    text = hs.create_model("hf:sentence-transformers/all-MiniLM-L6-v2", max_length=128)   # text: same workflow
    news = hs.datasets.load("bbc-news")                      # or hs.data.text_file("news.csv", "body", "topic")
"""
from . import data
from .backbones import BackboneSpec, ImagePreprocessing, TextPreprocessing, create_backbone, list_backbones
from .data import datasets
from .errors import BundleError, ConfigError, DataError, HeadstartError
from .inference import Predictor, evaluate, load
from .export import export
from .model import TransferModel, create_model
from .api import fit, lr_find, rank, write_report
from .plan.rank import RankResult
from .run import RunResult
from .strategies import trainable_summary

__version__ = "0.1.0"

__all__ = ["BackboneSpec", "BundleError", "ConfigError", "DataError", "HeadstartError", "ImagePreprocessing", "Predictor", "RunResult",
           "TextPreprocessing", "TransferModel", "create_backbone", "create_model", "data", "datasets", "evaluate", "export", "fit",
           "list_backbones", "load", "lr_find", "rank", "RankResult", "trainable_summary", "write_report"]
