"""Tests of ``predict``: real CinC records of several formats scored against free-text queries by a tiny
checkpoint whose text encoder is a tiny BERT folder written here (no MiniLM to load)."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from toy_ecg import toy_signals

from supreme_ecg import catalogue, formats
from supreme_ecg.leads import CANONICAL_LEADS
from supreme_ecg.model import (
    TextEncoder,
    build_model,
    default_model_config,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from supreme_ecg.predict import (
    PREDICTION_COLUMNS,
    add_arguments,
    predict,
    prepare_record,
    read_queries_file,
    run,
    task_queries,
)
from supreme_ecg.preprocess import PreprocessConfig, preprocess_record

TEXT_DIM = 16
QUERIES = ["atrial fibrillation", "left bundle branch block", "normal sinus rhythm"]
#: training's preprocessing, deliberately not the defaults (250 Hz, 10 s, per-lead z-score)
PREPROCESS = PreprocessConfig(fs=250, n_samples=2500, normalisation="zscore_lead")
#: real records in several formats: .mat path (header beside it), a header whose first token is
#: "E00009.mat", an extension-less 1 kHz PTB record, Chapman, an SPH .h5, a 100 Hz PTB-XL .dat
FIXTURE_RECORDS = ["cinc2020/cpsc2018/A0001.mat", "cinc2020/georgia/E00009.hea", "cinc2020/ptb/S0001",
                   "cinc2020/chapman_ningbo/JS00001.hea", "cinc2020/sph/SPH00001.h5",
                   "ptbxl/records100/00000/00001_lr.dat"]


def write_tiny_bert(folder: Path) -> Path:
    """A 1-layer, 16-d BERT with a word-level vocabulary of the test's queries, saved for ``TextEncoder``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
        {w for text in QUERIES + [c.description.lower() for c in catalogue.task_classes("cpsc2018")]
         for w in text.split()})
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=TEXT_DIM, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)
    return folder


def make_checkpoint(text_encoder: str, preprocess=PREPROCESS) -> dict:
    """A small untrained model in a checkpoint dict with the keys pretrain writes (``preprocess`` dropped when None)."""
    torch.manual_seed(0)
    model = build_model(default_model_config(text_dim=TEXT_DIM, width=16, n_heads=2, dropout=0.0))
    ckpt = {"config": model.config, "model_state": model.state_dict(), "label_names": ["atrial fibrillation"],
            "label_ids": ["atrial_fibrillation"], "label_members": [["afib"]], "text_encoder": text_encoder,
            "text_pooling": "mean", "n_samples": 2500, "epoch": 1}
    if preprocess is not None:
        ckpt["preprocess"] = asdict(preprocess)
    return ckpt


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """The tiny text encoder, the checkpoint, and synthetic records: good, flat lead (rejected), short NaN run."""
    root = tmp_path_factory.mktemp("predict")
    bert = write_tiny_bert(root / "tiny_bert")
    save_checkpoint(root / "checkpoint.pt", make_checkpoint(str(bert)))
    _, x = toy_signals(np.random.default_rng(0), 3, [5.0, 11.0], 5000, 500)
    x[1, 4] = 0.0  # aVL flat -> RecordRejected("flat_lead")
    x[2, 7, 100:120] = np.nan  # repaired by interpolation -> scored
    paths = {name: formats.write_wfdb16(root / "rec", name, x[i], list(CANONICAL_LEADS), 500)
             for i, name in enumerate(["good", "flat", "gappy"])}
    return {"root": root, "bert": bert, "ckpt": root / "checkpoint.pt", **paths,
            "missing": root / "rec" / "nowhere.hea"}


def direct_scores(ckpt_path, paths, queries, cfg: PreprocessConfig) -> np.ndarray:
    """Reference: read + preprocess with ``cfg``, one forward pass of the model, sigmoid → (R, Q)."""
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    x = np.stack([preprocess_record(formats.read_record(p), cfg)[0] for p in paths])
    query = TextEncoder(ckpt["text_encoder"], ckpt["text_pooling"]).encode(queries)
    with torch.inference_mode():
        return torch.sigmoid(model(torch.from_numpy(x), query)).numpy()


@pytest.mark.fixtures
def test_predict_real_records_equals_training_preprocessing(fx, setup):
    """One row per record × query (record-major), all scored in (0, 1), equal to scoring the records
    preprocessed with the checkpoint's settings; other settings would give other scores."""
    paths = [str(fx / rel) for rel in FIXTURE_RECORDS]
    frame = predict(setup["ckpt"], paths, QUERIES, batch_size=4, device="cpu")
    assert list(frame.columns) == PREDICTION_COLUMNS and len(frame) == len(paths) * len(QUERIES)
    assert frame["record"].tolist() == [p for p in paths for _ in QUERIES]
    assert frame["query"].tolist() == QUERIES * len(paths)
    assert (frame["status"] == "ok").all() and frame["reason"].isna().all()
    assert ((frame["score"] > 0) & (frame["score"] < 1)).all()
    scores = frame["score"].to_numpy().reshape(len(paths), len(QUERIES))
    np.testing.assert_allclose(scores, direct_scores(setup["ckpt"], paths, QUERIES, PREPROCESS), rtol=0, atol=1e-6)
    other = direct_scores(setup["ckpt"], paths, QUERIES, replace(PREPROCESS, normalisation="minmax_global"))
    assert np.abs(scores - other).max() > 1e-3
    assert np.abs(scores - scores[:, :1]).max() > 0  # the queries are told apart
    again = predict(setup["ckpt"], paths[::-1], QUERIES, batch_size=64, device="cpu")  # batching, order
    np.testing.assert_allclose(again["score"].to_numpy().reshape(len(paths), -1), scores[::-1], rtol=0, atol=1e-6)


def test_failed_records_keep_rows_with_reason(setup):
    """A missing file and a flat-lead record get NaN scores with status and reason; the others are scored."""
    paths = [setup["good"], setup["missing"], setup["flat"], setup["gappy"]]
    frame = predict(setup["ckpt"], paths, QUERIES[:2], device="cpu")
    per_record = frame.iloc[::2].set_index("record")
    assert per_record["status"].tolist() == ["ok", "unreadable", "rejected", "ok"]
    assert per_record["reason"].tolist()[1:3] == ["missing_file", "flat_lead"]
    assert "aVL" in per_record.loc[str(setup["flat"]), "detail"]
    failed = frame["status"] != "ok"
    assert frame.loc[failed, "score"].isna().all() and frame.loc[~failed, "score"].between(0, 1).all()
    signal, status, reason, _ = prepare_record(setup["missing"], PREPROCESS)
    assert signal is None and (status, reason) == ("unreadable", "missing_file")


def test_outputs_round_trip_and_bad_extension(setup, tmp_path):
    """CSV and Parquet hold the returned table; another extension is refused before any work."""
    paths = [setup["good"], setup["missing"]]
    for name in ("p.csv", "sub/p.parquet"):
        frame = predict(setup["ckpt"], paths, QUERIES, out_path=tmp_path / name, device="cpu")
        back = pd.read_csv(tmp_path / name) if name.endswith(".csv") else pd.read_parquet(tmp_path / name)
        expected = frame.assign(record=frame["record"].astype(str))
        pd.testing.assert_frame_equal(back.astype(object).where(back.notna(), None),
                                      expected.astype(object).where(expected.notna(), None))
        assert math.isnan(back["score"].iloc[-1]) and back["reason"].iloc[-1] == "missing_file"
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        predict(setup["ckpt"], paths, QUERIES, out_path=tmp_path / "p.txt", device="cpu")
    assert not (tmp_path / "p.txt").exists()


def test_checkpoint_without_preprocess_is_refused(setup, tmp_path):
    """No ``preprocess`` key: an older checkpoint; empty settings: refused too."""
    save_checkpoint(tmp_path / "old.pt", make_checkpoint(str(setup["bert"]), preprocess=None))
    with pytest.raises(ValueError, match="older version"):
        predict(tmp_path / "old.pt", [setup["good"]], QUERIES, device="cpu")
    ckpt = make_checkpoint(str(setup["bert"]))
    ckpt["preprocess"] = {}
    save_checkpoint(tmp_path / "empty.pt", ckpt)
    with pytest.raises(ValueError, match="empty"):
        predict(tmp_path / "empty.pt", [setup["good"]], QUERIES, device="cpu")


def test_text_encoder_must_match_the_checkpoint(setup):
    """An encoder of another embedding size is refused; queries must be all texts or all pairs."""

    class EightDims:
        name, pooling = "eight", "mean"

        def encode(self, texts):
            return torch.ones(len(texts), 8)

    with pytest.raises(ValueError, match="8-d"):
        predict(setup["ckpt"], [setup["good"]], QUERIES, device="cpu", text_encoder=EightDims())
    with pytest.raises(ValueError, match="all texts"):
        predict(setup["ckpt"], [setup["good"]], ["afib", ("AF", "afib")], device="cpu")


def test_task_queries_and_run(setup, tmp_path):
    """--classes cpsc2018 gives its 9 classes (description as query, class name column); exactly one
    query source; a queries file skips blank and # lines; run() sums up what was scored."""
    pairs = task_queries("cpsc2018")
    assert pairs == [(c.name, c.description) for c in catalogue.task_classes("cpsc2018")] and len(pairs) == 9
    with pytest.raises(ValueError, match="unknown task"):
        task_queries("no_such_task")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--checkpoint", str(setup["ckpt"]), "--records", str(setup["good"]), str(setup["missing"]),
            "--device", "cpu"]
    summary = run(parser.parse_args(base + ["--classes", "cpsc2018", "--out", str(tmp_path / "c.parquet")]))
    assert summary == {"n_records": 2, "n_ok": 1, "n_failed": 1, "n_queries": 9, "out": str(tmp_path / "c.parquet"),
                       "failed_reasons": {"missing_file": 1}}
    frame = pd.read_parquet(tmp_path / "c.parquet")
    assert list(frame.columns) == ["record", "class", *PREDICTION_COLUMNS[1:]] and len(frame) == 18
    assert frame["class"].tolist()[:9] == [n for n, _ in pairs] and frame["query"].tolist()[:9] == [d for _, d in pairs]
    (tmp_path / "q.txt").write_text("# my queries\natrial fibrillation\n\n  # indented comment\nst elevation \n")
    assert read_queries_file(tmp_path / "q.txt") == ["atrial fibrillation", "st elevation"]
    assert run(parser.parse_args(base + ["--queries-file", str(tmp_path / "q.txt"), "--out",
                                         str(tmp_path / "q.csv")]))["n_queries"] == 2
    for sources in ([], ["--queries", "afib", "--classes", "cpsc2018"]):
        with pytest.raises(SystemExit):
            parser.parse_args(base + sources + ["--out", "x.csv"])


def test_cli_predict(setup, tmp_path):
    """``python -m supreme_ecg.cli predict`` (fails until the lead wires the sub-command into cli.py)."""
    out = tmp_path / "pred.csv"
    cmd = [sys.executable, "-m", "supreme_ecg.cli", "predict", "--checkpoint", str(setup["ckpt"]),
           "--records", str(setup["good"]), str(setup["flat"]), "--queries", *QUERIES, "--out", str(out),
           "--device", "cpu", "--batch-size", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    frame = pd.read_csv(out)
    assert len(frame) == 2 * len(QUERIES) and frame["status"].tolist() == ["ok"] * 3 + ["rejected"] * 3
    assert frame["score"].iloc[:3].between(0, 1).all() and frame["score"].iloc[3:].isna().all()
