"""The pre-training corpus: which rows of its manifest train and validate (``pretrain_split``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------- the pre-training corpus

#: Corpora that can be the pre-training corpus (``data.pretrain_corpus``).
PRETRAIN_CORPORA = ("mimic", "ptbxl", "manifest")
#: Rows of the corpus that pre-train (``train``) and validate (``val``); any other value: not used.
PRETRAIN_SPLITS = ("train", "val")
#: PTB-XL as the corpus: folds 1–8 train, fold 9 validates (fold 10 stays for zero-shot tests).
DEFAULT_PTBXL_PRETRAIN_FOLDS = {"train": list(range(1, 9)), "val": [9]}


def mark_pretraining(manifest: pd.DataFrame, corpus: str, ptbxl_folds: dict | None = None) -> pd.DataFrame:
    """Add ``pretrain_split`` (train / val / "" = not pre-training) to the corpus manifest.

    MIMIC-IV-ECG: every record trains (the trainer holds out its own validation share). PTB-XL:
    by ``strat_fold`` (``ptbxl_folds``: {"train": [...], "val": [...]}). A user manifest: its
    ``split`` column where it says train/val, every record trains otherwise.
    """
    manifest = manifest.copy()
    if corpus == "ptbxl":
        folds = ptbxl_folds or DEFAULT_PTBXL_PRETRAIN_FOLDS
        train, val = {int(f) for f in folds.get("train", ())}, {int(f) for f in folds.get("val", ())}
        if train & val:
            raise ValueError(f"PTB-XL folds {sorted(train & val)} are both pre-training train and val")
        fold = manifest["strat_fold"].astype(int)
        manifest["pretrain_split"] = np.where(fold.isin(train), "train", np.where(fold.isin(val), "val", ""))
    elif corpus == "manifest" and "split" in manifest and manifest["split"].isin(PRETRAIN_SPLITS).any():
        manifest["pretrain_split"] = manifest["split"].where(manifest["split"].isin(PRETRAIN_SPLITS), "")
    elif corpus in PRETRAIN_CORPORA:
        manifest["pretrain_split"] = "train"
    else:
        raise ValueError(f"unknown pre-training corpus {corpus!r}; known: {PRETRAIN_CORPORA}")
    return manifest


def pretraining_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows of a marked corpus manifest that pre-train (their reports go to the extraction stage)."""
    if "pretrain_split" not in manifest:
        raise ValueError("the manifest has no pretrain_split column: it is not the pre-training corpus")
    keep = manifest["pretrain_split"].isin(PRETRAIN_SPLITS).to_numpy()
    rows = manifest[keep].reset_index(drop=True)
    rows.attrs["n_left_out"] = int((~keep).sum())
    return rows
