"""Linear probes: class-stratified shares, early stopping on validation, features streamed from shards,
per-class and summary tables with intervals, a task without train/val accounted for."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from toy_ecg import toy_signals

from supreme_ecg.datasets import write_task_labels
from supreme_ecg.linear_probe import (
    SUMMARY_COLUMNS,
    ProbeConfig,
    draw_fraction,
    extract_features,
    read_features,
    run_linear_probe,
    summarise_probes,
    train_probe,
)
from supreme_ecg.model import build_model, default_model_config, random_init_checkpoint, save_checkpoint
from supreme_ecg.preprocess import signal_array

FREQS = [3.0, 11.0]
LENGTH, FS = 1000, 500


def test_draw_fraction_keeps_every_class_and_its_share():
    rng = np.random.default_rng(0)
    truth = (rng.random((2000, 6)) < np.array([0.3, 0.1, 0.02, 0.005, 0.002, 0.0])).astype(np.int64)
    rows = draw_fraction(truth, 1, seed=0)
    sub = truth[rows]
    assert (sub[:, :5].sum(axis=0) >= 1).all()          # every class with positives keeps one
    assert sub[:, 0].sum() >= round(0.01 * truth[:, 0].sum())
    assert 20 <= len(rows) <= 30                         # ≈ 1 % of 2000, a few more for the rare classes
    assert len(np.unique(rows)) == len(rows) and (np.diff(rows) > 0).all()
    assert np.array_equal(rows, draw_fraction(truth, 1, seed=0))
    assert not np.array_equal(rows, draw_fraction(truth, 1, seed=1))
    assert np.array_equal(draw_fraction(truth, 100, seed=5), np.arange(2000))
    assert abs(len(draw_fraction(truth, 10, seed=0)) - 200) <= 5


def test_probe_keeps_the_best_validation_epoch_and_never_sees_test():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(16, 3))

    def data(n):
        x = rng.normal(size=(n, 16)).astype(np.float32)
        return x, ((x @ w + rng.normal(0, 0.5, (n, 3))) > 0).astype(np.int64)

    (xt, yt), (xv, yv) = data(300), data(150)
    yt[:10, 0] = -1  # unknown labels are masked, not negatives
    predict, info = train_probe(xt, yt, xv, yv, ProbeConfig(max_epochs=60, patience=5), seed=0)
    assert info["val_metric"] == "macro_auc" and 1 <= info["best_epoch"] <= info["epochs_run"] <= 60
    assert info["epochs_run"] - info["best_epoch"] <= 5  # stopped by patience, or ran out of epochs
    from supreme_ecg.pretrain import macro_auc

    x_test, y_test = data(400)
    assert macro_auc(y_test, predict(x_test))[0] > 0.85
    again, same = train_probe(xt, yt, xv, yv, ProbeConfig(max_epochs=60, patience=5), seed=0)
    np.testing.assert_allclose(again(x_test), predict(x_test), rtol=1e-6)  # deterministic per seed
    assert same == info


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """Toy shards of 240 records (sines per class), a user-task label table with train/val/test, and a
    random-init checkpoint pair (two seeds) standing in for pretrained / random_init."""
    root = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(0)
    n = 240
    y, x = toy_signals(rng, n, FREQS, LENGTH, FS, amplitude=2.0)
    ids = [f"toy/{i:04d}" for i in range(n)]
    shard = root / "shard-0-of-1.parquet"
    pq.write_table(pa.table({"record_id": ids, "signal": signal_array(x)}), shard, row_group_size=64)
    split = np.array(["train"] * 140 + ["val"] * 40 + ["test"] * 60)
    labels = pd.DataFrame({"record_id": ids + ["toy/rejected"], "split": list(split) + ["test"],
                           "LOW": list(y[:, 0]) + [1], "HIGH": list(y[:, 1]) + [0]})
    definition = {"task": "toy_task", "dataset": "toy", "label_source": "name", "user": True,
                  "classes": [{"name": "LOW", "description": "slow wave", "codes": []},
                              {"name": "HIGH", "description": "fast wave", "codes": []}]}
    write_task_labels(labels, root / "labels.parquet", definition)
    model = build_model(default_model_config(text_dim=8, width=16, downsample=2))
    base = {"config": model.config, "model_state": model.state_dict(), "epoch": 1}
    save_checkpoint(root / "a.pt", random_init_checkpoint(base, seed=1))
    save_checkpoint(root / "b.pt", random_init_checkpoint(base, seed=2))
    return {"root": root, "shard": shard, "labels": root / "labels.parquet", "n": n, "split": split}


def test_features_are_streamed_per_encoder_and_account_for_missing_signals(task):
    out = task["root"] / "features.parquet"
    info = extract_features({"pretrained": task["root"] / "a.pt", "random_init": task["root"] / "b.pt"},
                            [task["shard"]], task["labels"], out, batch_size=32, device="cpu")
    assert info["n_labelled"] == task["n"] + 1 and info["n_with_signal"] == task["n"] and info["n_without_signal"] == 1
    ids, splits, feats = read_features(out, "pretrained")
    assert len(ids) == task["n"] and feats.shape == (task["n"], 16) and feats.dtype == np.float32
    assert (splits == task["split"]).all()
    _, _, other = read_features(out, "random_init")
    assert not np.allclose(feats, other)  # two different encoders


def test_probe_task_writes_per_class_summary_and_bootstrap(task, tmp_path):
    features = task["root"] / "features.parquet"
    if not features.exists():
        extract_features({"pretrained": task["root"] / "a.pt", "random_init": task["root"] / "b.pt"},
                         [task["shard"]], task["labels"], features, device="cpu")
    cfg = ProbeConfig(max_epochs=40, patience=5)
    dirs = []
    for percent in (10, 100):
        folder = tmp_path / str(percent)
        report = run_linear_probe("toy_task", features, task["labels"], percent, folder, seeds=(0, 1), cfg=cfg,
                                  n_resamples=100)
        dirs.append(folder)
        info = report["encoders"]["pretrained"]
        assert info["status"] == "ok" and (info["n_train"], info["n_val"], info["n_test"]) == (140, 40, 60)
        assert len(info["runs"]) == (1 if percent == 100 else 2)
        assert info["ci_low"] <= info["macro_auc"] <= info["ci_high"]
        per_class = pd.read_parquet(folder / "per_class.parquet")
        assert per_class["encoder"].tolist() == ["pretrained", "pretrained", "random_init", "random_init"]
        assert (per_class["n_pos"] + per_class["n_neg"] == 60).all()
        assert (per_class["n_train_pos"] >= 1).all()
        boot = pd.read_parquet(folder / "bootstrap.parquet")
        assert len(boot) == 2 * 100
    full = json.loads((dirs[1] / "probe.json").read_text())["encoders"]["pretrained"]
    assert full["runs"][0]["n_train_used"] == 140 and full["macro_auc"] > 0.8  # the sines are linearly visible
    table = summarise_probes(dirs, tmp_path / "summary.csv")
    csv = pd.read_csv(tmp_path / "summary.csv")
    assert list(csv.columns) == SUMMARY_COLUMNS
    assert csv[["task", "fraction"]].values.tolist() == [["toy_task", 0.1], ["average", 0.1],
                                                         ["toy_task", 1.0], ["average", 1.0]]
    row = csv.iloc[0]
    assert row["n_seeds"] == 2 and row["n_classes"] == 2 and row["status"] == "ok"
    assert row["ci_low"] <= row["macro_auc"] <= row["ci_high"] and not np.isnan(row["random_init_macro_auc"])
    assert csv.iloc[1]["macro_auc"] == pytest.approx(row["macro_auc"])  # one task: its own average
    assert len(table) == 4


def test_task_without_train_split_is_reported_not_skipped(task, tmp_path):
    labels = pd.read_parquet(task["labels"]).assign(split="test")
    definition = json.loads(pq.read_schema(task["labels"]).metadata[b"supreme_ecg.task"])
    write_task_labels(labels, tmp_path / "all_test.parquet", definition, split_policy="all_test")
    features = tmp_path / "features.parquet"
    extract_features({"pretrained": task["root"] / "a.pt"}, [task["shard"]], tmp_path / "all_test.parquet",
                     features, device="cpu")
    report = run_linear_probe("toy_task", features, tmp_path / "all_test.parquet", 100, tmp_path / "p",
                              encoders=("pretrained",), n_resamples=10)
    assert "no train/val records" in report["encoders"]["pretrained"]["status"]
    per_class = pd.read_parquet(tmp_path / "p" / "per_class.parquet")
    assert per_class["auc"].isna().all() and len(per_class) == 2
