"""Text transfer: hf: backbones, text data and batching, multi-label, bundles, CLI, and clear errors.

Everything runs on a tiny randomly initialised BERT written to a temporary folder (WordPiece vocab, config,
weights): no download. Tests marked `real` use the MiniLM package and the BBC News corpus.
"""
from __future__ import annotations

import csv
import json
import random
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import headstart as hs
from headstart.backbones import create_backbone
from headstart.backbones.hf_source import POOLINGS, TextBackbone
from headstart.bundle import load_model, save_bundle
from headstart.cli import app
from headstart.data import DataSplits, TextData, make_batcher, num_batches
from headstart.data.text import TextBatcher, length_grouped_order
from headstart.errors import DataError, HeadstartError
from headstart.metrics import METRICS

FAST = dict(progress=False, batch_size=8, eval_batch_size=16, precision="fp32")
WORDS = "the a cat dog sat on mat ran fast slow movie was very plot film it and".split()
POSITIVE, NEGATIVE = ["good", "great"], ["bad", "awful"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + POSITIVE + NEGATIVE + ["##s", "sport", "news"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models only lose from two threads, and on a busy 2-core machine each op then waits ~10 ms.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_tiny_bert(folder, vocab=VOCAB, vocab_size=None, hidden=32, seed=0):
    """A randomly initialised 2-layer BERT with its WordPiece vocab, as transformers saves a model."""
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size or len(vocab), hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


def sentiment_rows(n=80, seed=0):
    """Short texts whose label is written in one keyword among random filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 12))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        rows.append({"body": " ".join(words), "topic": label})
    return rows


def write_csv(path, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def text_model(tiny_bert, **kwargs):
    return hs.create_model(f"hf:{tiny_bert}", **{"pooling": "mean", **kwargs})


# ----------------------------------------------------------------------------------------------------------
# Backbone


@pytest.mark.parametrize("pooling", POOLINGS.list())
def test_layer_groups_cover_every_parameter_once(tiny_bert, pooling):
    backbone, spec = create_backbone(f"hf:{tiny_bert}", pooling=pooling)
    names = [n for n, _ in backbone.named_parameters()]
    grouped = [p for g in spec.layer_groups for p in g.params]
    assert sorted(grouped) == sorted(names) and len(grouped) == len(set(grouped))
    expected = ["embeddings", "layer.0", "layer.1"] + (["pooler"] if pooling == "pooler" else [])
    assert spec.group_names == expected
    # An unused pooler is dropped, so every parameter can get a gradient.
    x = make_batcher(TextData(["the cat sat", "a dog"], torch.zeros(2), []), spec, train=False).inputs(
        torch.arange(2))
    backbone.forward_features(x).sum().backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_spec_records_tokenizer_length_and_pooling(tiny_bert):
    _, spec = create_backbone(f"hf:{tiny_bert}")
    pre = spec.preprocessing
    assert spec.modality == "text" and spec.num_features == 32
    assert (pre.tokenizer, pre.max_length, pre.pooling, pre.vocab_size) == (str(tiny_bert), 64, "cls", len(VOCAB))
    assert spec.weights == str(tiny_bert) and spec.weights_id.startswith("sha256:")
    again = hs.backbones.spec.preprocessing_from_dict(spec.to_dict()["preprocessing"])
    assert again == pre


def test_normalize_follows_the_sentence_transformers_pipeline_and_survives_the_bundle(tiny_bert, tmp_path):
    st = shutil.copytree(tiny_bert, tmp_path / "st-bert")
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    texts = ["a good film", "the plot was awful and very slow"]
    model = hs.create_model(f"hf:{st}", 2)
    plain = hs.create_model(f"hf:{st}", 2, normalize=False)
    assert model.spec.preprocessing.normalize and not plain.spec.preprocessing.normalize
    assert not text_model(tiny_bert).spec.preprocessing.normalize  # no Normalize module listed: raw embedding
    x = make_batcher(TextData(texts, torch.tensor([0, 1]), ["n", "p"], {}), model.spec, train=False
                     ).inputs(torch.arange(2))
    model.eval(), plain.eval()
    with torch.no_grad():
        unit, raw = model.backbone.forward_features(x), plain.backbone.forward_features(x)
    # The model's direction at norm sqrt(F): unit RMS per feature, a scale heads train well on.
    torch.testing.assert_close(unit.norm(dim=1), torch.full((2,), 32 ** 0.5))
    torch.testing.assert_close(unit, raw / raw.norm(dim=1, keepdim=True) * 32 ** 0.5)
    save_bundle(model, tmp_path / "bundle")
    loaded = load_model(tmp_path / "bundle")
    assert loaded.spec.preprocessing.normalize
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_mean_pooling_ignores_padding(tiny_bert):
    backbone, spec = create_backbone(f"hf:{tiny_bert}", pooling="mean")
    backbone.eval()
    texts = ["the cat sat", "the dog ran very fast on the mat and it was a good film"]
    batcher = make_batcher(TextData(texts, torch.zeros(2), []), spec, train=False)
    with torch.no_grad():
        alone = backbone.forward_features(batcher.inputs(torch.tensor([0])))
        together = backbone.forward_features(batcher.inputs(torch.tensor([0, 1])))
        x = batcher.inputs(torch.tensor([0]))
        padded = {k: torch.nn.functional.pad(v, (0, 20), value=0) for k, v in x.items()}  # 20 extra [PAD]
        extra = backbone.forward_features(padded)
    assert together[0].shape == alone[0].shape == (32,)
    torch.testing.assert_close(together[0], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(extra[0], alone[0], rtol=0, atol=1e-5)
    # The check can fail: averaging over the pad positions too gives another vector.
    with torch.no_grad():
        states = backbone.net(**padded).last_hidden_state
    assert not torch.allclose(states.mean(1)[0], alone[0], atol=1e-3)


def test_dynamic_padding_gives_the_same_logits_as_fixed_padding(tiny_bert):
    model = text_model(tiny_bert, num_classes=3).eval()
    texts = [r["body"] for r in sentiment_rows(12)]
    batcher = make_batcher(TextData(texts, torch.zeros(12), []), model.spec, train=False)
    idx = torch.arange(12)
    dynamic = batcher.inputs(idx)
    assert dynamic["input_ids"].shape[1] == int(batcher.lengths.max()) < 64
    tokenizer = hs.backbones.hf_source.load_tokenizer(model.spec.preprocessing.tokenizer)
    fixed = dict(tokenizer(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt"))
    assert fixed["input_ids"].shape[1] == 64
    with torch.no_grad():
        torch.testing.assert_close(model(dynamic), model(fixed), rtol=0, atol=1e-5)


def test_text_backbone_is_a_tensor_dict_consumer(tiny_bert):
    backbone, _ = create_backbone(f"hf:{tiny_bert}")
    assert isinstance(backbone, TextBackbone)
    with pytest.raises(HeadstartError, match="input_ids and attention_mask"):
        backbone.forward_features(torch.zeros(2, 5, dtype=torch.long))


# ----------------------------------------------------------------------------------------------------------
# Batching


def test_length_grouped_order_covers_each_index_once_and_is_deterministic():
    lengths = torch.randint(2, 60, (103,), generator=torch.Generator().manual_seed(0))
    a = length_grouped_order(lengths, 8, True, seed=3, epoch=1, chunk_batches=4)
    b = length_grouped_order(lengths, 8, True, seed=3, epoch=1, chunk_batches=4)
    c = length_grouped_order(lengths, 8, True, seed=3, epoch=2, chunk_batches=4)
    flat = torch.cat(a)
    assert sorted(flat.tolist()) == list(range(103))
    assert len(a) == num_batches(103, 8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(flat, torch.cat(c))
    # Texts of similar length share a batch: far less padding than a plain shuffled order.
    def waste(batches):
        return sum(int(lengths[i].max()) * len(i) - int(lengths[i].sum()) for i in batches)
    plain = list(hs.data.iterate_batches(103, 8, True, 3, 1))
    assert waste(a) < 0.5 * waste(plain)
    # Evaluation: longest first, every index once.
    ev = torch.cat(length_grouped_order(lengths, 8, False, 0, 0))
    assert sorted(ev.tolist()) == list(range(103))
    assert torch.all(lengths[ev][:-1] >= lengths[ev][1:])


def test_length_grouped_order_shards_across_ranks():
    lengths = torch.arange(50) % 17 + 2
    shards = [length_grouped_order(lengths, 4, True, seed=0, epoch=0, rank=r, world_size=3) for r in range(3)]
    counts = {len(s) for s in shards}
    assert counts == {num_batches(50, 4, world_size=3)}
    seen = torch.cat([torch.cat(s) for s in shards]).tolist()
    assert set(seen) == set(range(50)) and len(seen) == 51  # padded to a multiple of 3 by repeating the start


def test_batcher_tokenises_once_and_pads_per_batch(tiny_bert):
    _, spec = create_backbone(f"hf:{tiny_bert}", max_length=8)
    texts = ["the cat", "the dog sat on the mat and it was a very good film", ("the cat", "a dog")]
    single = make_batcher(TextData(texts[:2], torch.zeros(2), []), spec, train=True)
    assert isinstance(single, TextBatcher)
    assert single.lengths.tolist() == [4, 8]  # [CLS] the cat [SEP]; the long one cut at max_length
    x = single.inputs(torch.tensor([0]))
    assert x["input_ids"].shape == (1, 4) and x["attention_mask"].tolist() == [[1, 1, 1, 1]]
    pair = make_batcher(TextData([texts[2]], torch.zeros(1), []), spec, train=False).inputs(torch.tensor([0]))
    assert pair["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1]]


# ----------------------------------------------------------------------------------------------------------
# Loaders


def test_loaders_read_csv_tsv_jsonl_json_and_parquet_alike(tmp_path):
    rows = sentiment_rows(20)
    write_csv(tmp_path / "a.csv", rows)
    write_csv(tmp_path / "a.tsv", rows, delimiter="\t")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    loaded = [hs.data.text_file(tmp_path / f"a.{ext}", "body", "topic", val_fraction=0.2)
              for ext in ("csv", "tsv", "jsonl", "json", "parquet")]
    for splits in loaded:
        assert splits.modality == "text" and splits.classes == ["neg", "pos"]
        assert splits.train.texts == loaded[0].train.texts
        assert torch.equal(splits.train.targets, loaded[0].train.targets)
        assert len(splits.train) + len(splits.val) == 20
        assert splits.val.class_counts().tolist() == [2, 2]  # stratified: 10% of each class of 10


def test_columns_joined_or_paired_and_label_names(tmp_path):
    rows = [{"title": "Cats", "body": "the cat sat", "y": 0}, {"title": "Dogs", "body": "a dog ran", "y": 1}] * 3
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    joined = hs.data.text_file(tmp_path / "d.jsonl", ["title", "body"], "y", val_fraction=0,
                               label_names=["cats", "dogs"])
    assert joined.train.texts[0] == "Cats\nthe cat sat" and joined.classes == ["cats", "dogs"]
    assert joined.train.columns["text_columns"] == ["title", "body"]
    paired = hs.data.text_file(tmp_path / "d.jsonl", ["title", "body"], "y", text_pair=True, val_fraction=0,
                               label_names={"0": "c", "1": "d"})
    assert paired.train.texts[1] == ("Dogs", "a dog ran") and paired.train.is_pair
    assert paired.train.targets.tolist() == [0, 1] * 3


def test_split_is_seeded_and_stratified(tmp_path):
    write_csv(tmp_path / "t.csv", sentiment_rows(60))
    a = hs.data.text_file(tmp_path / "t.csv", "body", "topic", val_fraction=0.2, test_fraction=0.2, seed=1)
    b = hs.data.text_file(tmp_path / "t.csv", "body", "topic", val_fraction=0.2, test_fraction=0.2, seed=1)
    c = hs.data.text_file(tmp_path / "t.csv", "body", "topic", val_fraction=0.2, test_fraction=0.2, seed=2)
    assert a.test.texts == b.test.texts and a.val.texts == b.val.texts and a.test.texts != c.test.texts
    assert a.test.class_counts().tolist() == [6, 6] and len(a.train) + len(a.val) + len(a.test) == 60
    assert a.train.fingerprint() == b.train.fingerprint() != c.train.fingerprint()


def test_multi_label_columns_give_multi_hot_targets(tmp_path):
    rows = [{"text": "the cat sat", "tags": "sport;news"}, {"text": "a dog", "tags": "news"},
            {"text": "the film", "tags": ""}, {"text": "a plot", "tags": "sport"}]
    write_csv(tmp_path / "m.csv", rows)
    splits = hs.data.text_file(tmp_path / "m.csv", label_column="tags", label_delimiter=";", val_fraction=0)
    assert splits.classes == ["news", "sport"]
    assert splits.train.targets.tolist() == [[1, 1], [1, 0], [0, 0], [0, 1]]
    assert splits.train.targets.dtype == torch.float32 and splits.train.multi_label
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"text": r["text"], "tags": r["tags"].split(";") if
                                                         r["tags"] else []}) + "\n" for r in rows))
    from_lists = hs.data.text_file(tmp_path / "m.jsonl", label_column="tags", multi_label=True, val_fraction=0)
    assert torch.equal(from_lists.train.targets, splits.train.targets)


def test_builtin_bbc_news_is_registered():
    assert "bbc-news" in hs.data.list_datasets()


# ----------------------------------------------------------------------------------------------------------
# Training, bundles, prediction


@pytest.fixture
def sentiment_csv(tmp_path):
    return write_csv(tmp_path / "reviews.csv", sentiment_rows(80))


def test_fit_end_to_end_and_bundle_reloads_offline_and_predicts_identically(tiny_bert, sentiment_csv, tmp_path,
                                                                            monkeypatch):
    own = shutil.copytree(tiny_bert, tmp_path / "own-bert")
    data = hs.data.text_file(sentiment_csv, "body", "topic", val_fraction=0.25, test_fraction=0.2)
    model = text_model(own)
    run = hs.fit(model, data, "full", epochs=10, lr=1e-2, out=tmp_path / "run", **FAST)
    # The keyword decides the label: the tiny encoder learns it (chance is 0.5).
    assert max(r["val/accuracy"] for r in run.history) >= 0.8
    assert run.test_metrics["test/accuracy"] >= 0.75
    meta = json.loads((tmp_path / "run" / "best" / "headstart.json").read_text())
    assert meta["backbone"]["preprocessing"]["tokenizer"] == "text" and meta["data"]["text_columns"] == ["body"]

    # The bundle carries its tokenizer and config: the model folder it came from is no longer needed.
    shutil.rmtree(own)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = ["a good film", "the plot was awful", "never seen"]
    first, second = hs.load(tmp_path / "run"), hs.load(tmp_path / "run" / "best")
    np.testing.assert_array_equal(first.predict_proba(texts), second.predict_proba(texts))
    labels = first.predict(texts)
    assert [lab for lab, _ in labels] == [first.labels[i] for i in first.predict_proba(texts).argmax(1)]

    # Saved and reloaded in fp32: exactly the same logits.
    model.eval()
    save_bundle(model, tmp_path / "again")
    loaded = load_model(tmp_path / "again")
    x = make_batcher(data.test, model.spec, train=False).inputs(torch.arange(len(data.test)))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.spec.source == model.spec.source and loaded.labels == ["neg", "pos"]


def test_linear_probe_keeps_encoder_bit_identical(tiny_bert, sentiment_csv, tmp_path):
    data = hs.data.text_file(sentiment_csv, "body", "topic", val_fraction=0.25)
    model = text_model(tiny_bert)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    hs.fit(model, data, "linear-probe", epochs=2, lr=1e-2, out=tmp_path / "lp", **FAST)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_multilabel_fit_metrics_and_predict(tiny_bert, tmp_path):
    rng = random.Random(0)
    rows = []
    for _ in range(60):
        tags = [t for t, kw in (("positive", "good"), ("negative", "bad")) if rng.random() < 0.5]
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 6))] + [
            {"positive": "good", "negative": "bad"}[t] for t in tags]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "tags": "|".join(tags)})
    write_csv(tmp_path / "ml.csv", rows)
    data = hs.data.text_file(tmp_path / "ml.csv", label_column="tags", label_delimiter="|", val_fraction=0.25)
    with pytest.raises(DataError, match="task='multilabel'"):
        hs.fit(text_model(tiny_bert), data, "full", epochs=1, out=tmp_path / "wrong", **FAST)
    model = text_model(tiny_bert, task="multilabel")
    run = hs.fit(model, data, "full", epochs=4, lr=1e-2, out=tmp_path / "ml", **FAST)
    assert {"val/micro_f1", "val/macro_f1", "val/mAP", "val/loss"} <= set(run.best_metrics)
    assert run.best_metrics["val/mAP"] > 0.6
    preds = hs.load(tmp_path / "ml").predict(["good", "bad", "good bad"], threshold=0.0)
    assert all(isinstance(p, list) and {lab for lab, _ in p} == {"negative", "positive"} for p in preds)


def test_multilabel_metrics_match_their_definitions():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 4, generator=gen)
    targets = (torch.rand(40, 4, generator=gen) < 0.4).float()
    pred = (logits > 0).numpy()
    t = targets.numpy()
    assert METRICS.get("micro_f1")(logits, targets) == pytest.approx(sklearn_metrics.f1_score(t, pred, average="micro"))
    assert METRICS.get("macro_f1")(logits, targets) == pytest.approx(sklearn_metrics.f1_score(t, pred, average="macro"))
    assert METRICS.get("mAP")(logits, targets) == pytest.approx(
        sklearn_metrics.average_precision_score(t, logits.numpy(), average="macro"))
    # A perfect ranking scores 1 whatever the threshold.
    assert METRICS.get("mAP")(targets * 5 - 10, targets) == 1.0


def test_cli_fit_predict_evaluate_text(tiny_bert, sentiment_csv, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli-run"
    res = runner.invoke(app, ["fit", "--backbone", f"hf:{tiny_bert}", "--data", str(sentiment_csv),
                              "--text-column", "body", "--label-column", "topic", "--epochs", "1", "--out", str(out),
                              "--set", "train.progress=false", "--set", "model.max_length=24",
                              "--set", "data.test_fraction=0.2", "--set", "train.batch_size=8"])
    assert res.exit_code == 0, res.output
    assert "test: test/accuracy=" in res.output
    new = write_csv(tmp_path / "new.csv", [{"body": "a good film"}, {"body": "an awful plot\nreally"}])
    res = runner.invoke(app, ["predict", str(out), str(new), "--out", str(tmp_path / "preds.csv")])
    assert res.exit_code == 0, res.output
    preds = list(csv.DictReader(open(tmp_path / "preds.csv", encoding="utf-8")))
    assert [p["text"] for p in preds] == ["a good film", "an awful plot\nreally"]
    assert all(p["label"] in ("neg", "pos") and 0.5 <= float(p["probability"]) <= 1 for p in preds)
    res = runner.invoke(app, ["evaluate", str(out), "--data", str(sentiment_csv)])
    assert res.exit_code == 0 and "reviews/accuracy=" in res.output, res.output  # named after the file


def test_cli_multitask_table_fits_predicts_and_evaluates_every_task(tiny_bert, tmp_path):
    rows = [{**r, "mood": "" if i % 4 == 0 else ("happy" if r["topic"] == "pos" else "sad")}
            for i, r in enumerate(sentiment_rows(80))]
    table = write_csv(tmp_path / "two.csv", rows)
    runner = CliRunner()
    out = tmp_path / "mt-run"
    res = runner.invoke(app, ["fit", "--backbone", f"hf:{tiny_bert}", "--data", str(table), "--text-column", "body",
                              "--task", "topic", "--task", "feeling=mood", "--weighting", "uncertainty",
                              "--epochs", "1", "--out", str(out), "--set", "train.progress=false",
                              "--set", "model.max_length=24", "--set", "data.test_fraction=0.2",
                              "--set", "train.batch_size=8"])
    assert res.exit_code == 0, res.output
    assert "test/topic/accuracy=" in res.output and "test/feeling/accuracy=" in res.output
    new = write_csv(tmp_path / "new.csv", [{"body": "a good film"}, {"body": "an awful plot"}])
    res = runner.invoke(app, ["predict", str(out), str(new), "--out", str(tmp_path / "preds.csv")])
    assert res.exit_code == 0, res.output
    preds = list(csv.DictReader(open(tmp_path / "preds.csv", encoding="utf-8")))
    assert [(p["task"], p["text"]) for p in preds] == [("topic", "a good film"), ("topic", "an awful plot"),
                                                        ("feeling", "a good film"), ("feeling", "an awful plot")]
    assert {p["label"] for p in preds if p["task"] == "feeling"} <= {"happy", "sad"}
    res = runner.invoke(app, ["evaluate", str(out), "--data", str(table)])
    assert res.exit_code == 0 and "two/feeling/accuracy=" in res.output, res.output
    res = runner.invoke(app, ["fit", "--backbone", f"hf:{tiny_bert}", "--data", str(table), "--text-column", "body",
                              "--task", "topic", "--task", "feeling=nope", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "label column 'nope' (task 'feeling') is not in the file" in res.output


# ----------------------------------------------------------------------------------------------------------
# Bad input: one clear message each


def test_missing_column_names_the_columns_that_exist(tmp_path, sentiment_csv):
    with pytest.raises(DataError, match=r"'text' is not in .*its columns are: body, topic"):
        hs.data.text_file(sentiment_csv)
    with pytest.raises(DataError, match=r"label column 'label' is not in .*body, topic"):
        hs.data.text_file(sentiment_csv, text_column="body")
    res = CliRunner().invoke(app, ["fit", "--backbone", "toy:cnn", "--data", str(sentiment_csv), "--text-column",
                                   "bdy", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "its columns are: body, topic" in res.output and "Traceback" not in res.output


def test_empty_and_non_string_text_cells_are_refused_with_their_rows(tmp_path):
    write_csv(tmp_path / "e.csv", [{"text": "fine", "label": "a"}, {"text": "  ", "label": "b"},
                                   {"text": "ok", "label": "a"}])
    with pytest.raises(DataError, match=r"empty or missing text in rows 2 "):
        hs.data.text_file(tmp_path / "e.csv")
    (tmp_path / "n.jsonl").write_text('{"text": "fine", "label": "a"}\n{"text": 42, "label": "b"}\n')
    with pytest.raises(DataError, match=r"non-text values in rows 2 .*int '42'"):
        hs.data.text_file(tmp_path / "n.jsonl")
    with pytest.raises(DataError, match="empty texts"):
        TextData(["ok", ""], torch.zeros(2, dtype=torch.long), ["a"])
    with pytest.raises(DataError, match=r"positions 1 are not strings \(e.g. NoneType 'None'\)"):
        hs.data.from_texts(["ok", None, "fine"], ["a", "b", "a"])
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        hs.data.text_file(tmp_path / "latin1.csv")
    write_csv(tmp_path / "l.csv", [{"text": "fine", "label": "a"}, {"text": "ok", "label": ""}])
    with pytest.raises(DataError, match=r"missing label in rows 2"):
        hs.data.text_file(tmp_path / "l.csv")


def test_labels_unseen_in_training_are_an_error_at_evaluation(tiny_bert, tmp_path):
    write_csv(tmp_path / "train.csv", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}] * 4)
    write_csv(tmp_path / "test.csv", [{"text": "good", "label": "pos"}, {"text": "meh", "label": "neutral"}])
    with pytest.raises(DataError, match=r"test file test.csv has labels \['neutral'\] that are not among the "
                                        r"training labels \['neg', 'pos'\]"):
        hs.data.text_file(tmp_path / "train.csv", test=tmp_path / "test.csv")
    model = text_model(tiny_bert, num_classes=2, labels=["neg", "pos"])
    other = hs.data.from_texts(["good", "meh"], ["pos", "neutral"], val_fraction=0)
    with pytest.raises(DataError, match=r"not trained on: \['neutral'\]"):
        hs.evaluate(model, other, split="train")
    # Same classes in another order are re-indexed, not rejected.
    reordered = TextData(["good", "bad"], torch.tensor([0, 1]), ["pos", "neg"])
    assert hs.evaluate(model, reordered) == hs.evaluate(model, TextData(["good", "bad"], torch.tensor([1, 0]),
                                                                        ["neg", "pos"]))


def test_tokenizer_that_does_not_match_the_model_is_refused(tmp_path, tiny_bert):
    small = write_tiny_bert(tmp_path / "small", vocab_size=10)  # embedding table smaller than the vocab
    with pytest.raises(HeadstartError, match=rf"has {len(VOCAB)} tokens but the model's embedding table has only 10"):
        create_backbone(f"hf:{small}")
    # Through a spec that claims a smaller table than the tokenizer's ids: the batcher refuses too.
    _, spec = create_backbone(f"hf:{tiny_bert}")
    spec.preprocessing = hs.TextPreprocessing(spec.preprocessing.tokenizer, 16, "cls", vocab_size=6)
    with pytest.raises(DataError, match="do not match"):
        make_batcher(TextData(["the cat sat"], torch.zeros(1), []), spec, train=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_length": 65}, "max_length=65 is longer than"),
    ({"pooling": "avg"}, "unknown pooling .avg.. Valid choices: cls, max, mean, pooler"),
    ({"weights": "package:efficientnet-lite0"}, "unknown text model package"),
    ({"weights": "/no/such/model.safetensors"}, "expected a folder"),
])
def test_bad_backbone_options(tiny_bert, kwargs, message):
    with pytest.raises(HeadstartError, match=message):
        create_backbone(f"hf:{tiny_bert}", **kwargs)


def test_bad_names_and_modalities(tiny_bert, tmp_path, monkeypatch):
    with pytest.raises(HeadstartError, match="does not exist"):
        create_backbone("hf:/no/such/folder")
    with pytest.raises(HeadstartError, match="config.json"):
        create_backbone(f"hf:{tmp_path}")  # a folder without a model in it

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    import transformers

    with monkeypatch.context() as patched, pytest.raises(
            HeadstartError, match=r"Offline\? Pass a local folder instead: backbone='hf:/path/to/model'"):
        patched.setattr(transformers.AutoModel, "from_pretrained", offline)
        create_backbone("hf:some-org/some-bert")
    with pytest.raises(HeadstartError, match="apply to text backbones"):
        hs.create_model("toy:cnn", max_length=32)
    with pytest.raises(HeadstartError, match="image_size applies to image backbones"):
        hs.create_model(f"hf:{tiny_bert}", image_size=64)
    texts = hs.data.from_texts(["good film", "bad film"] * 4, ["pos", "neg"] * 4, val_fraction=0.25)
    with pytest.raises(DataError, match="needs a text backbone"):
        hs.fit(hs.create_model("toy:cnn"), texts, "full", epochs=1, out=tmp_path / "r", **FAST)
    with pytest.raises(HeadstartError, match="a text or a list of texts"):
        hs.Predictor(text_model(tiny_bert, num_classes=2)).predict(np.zeros((2, 8, 8)))
    with pytest.raises(DataError, match="text_pair=True needs exactly two"):
        hs.data.text_file(tmp_path / "x.csv", ["a"], text_pair=True)


def test_datasplits_of_text_must_share_classes():
    a = TextData(["x"], torch.tensor([0]), ["a"])
    b = TextData(["y"], torch.tensor([0]), ["b"])
    with pytest.raises(DataError, match="same class list"):
        DataSplits(a, b, None, ["a"], name="t", modality="text")


# ----------------------------------------------------------------------------------------------------------
# Real weights and data (seconds, not minutes)


@pytest.mark.real
def test_minilm_package_features_put_paraphrases_together():
    backbone, spec = create_backbone("hf:sentence-transformers/all-MiniLM-L6-v2", max_length=64)
    assert spec.weights == "package:all-minilm-l6-v2" and spec.preprocessing.pooling == "mean"
    assert spec.num_features == 384 and spec.group_names[0] == "embeddings" and len(spec.group_names) == 7
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply."]
    batcher = make_batcher(TextData(texts, torch.zeros(3), []), spec, train=False)
    with torch.no_grad():
        f = torch.nn.functional.normalize(backbone.eval().forward_features(batcher.inputs(torch.arange(3))), dim=1)
    assert f.shape == (3, 384)
    assert float(f[0] @ f[1]) > float(f[0] @ f[2]) + 0.3


@pytest.mark.real
def test_linear_probe_on_a_small_bbc_news_subset(tmp_path):
    data = hs.datasets.load("bbc-news", subset=12, test_subset=12)
    assert data.classes == ["business", "entertainment", "politics", "sports", "tech"]
    model = hs.create_model("hf:sentence-transformers/all-MiniLM-L6-v2", max_length=64)
    run = hs.fit(model, data, "linear-probe", epochs=8, lr=1e-2, batch_size=16, progress=False, out=tmp_path / "r")
    # Chance is 0.2; MiniLM's features separate the topics from a dozen articles each.
    assert run.test_metrics["test/accuracy"] > 0.7
    label, prob = hs.load(tmp_path / "r").predict(["Shares in the bank fell after its profits dropped."])[0]
    assert label == "business" and prob > 0.3


@pytest.mark.real
def test_text_demo_end_to_end(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["demo", "text", "--out", str(tmp_path / "demo"), "--subset", "4", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    acc = float(res.output.split("test accuracy ")[1].split()[0])
    assert 0.0 <= acc <= 1.0
    command = res.output.split("predict with it: headstart ")[1].split()
    res = runner.invoke(app, command[:3])
    assert res.exit_code == 0, res.output
    assert len(res.output.strip().splitlines()) == 8
