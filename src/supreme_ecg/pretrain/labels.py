"""Training labels: the label table, the vocabulary and the text queries of each label."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from supreme_ecg.pretrain.config import PretrainConfig


@dataclass(frozen=True)
class LabelTable:
    """The training labels: ids (``label`` slugs), names and member surface forms, in vocabulary order,
    and the int8 (n, K) matrix (1 present, 0 absent, -1 unknown) with its record_id → row index."""

    index: dict
    matrix: np.ndarray
    ids: list[str]
    names: list[str]
    members: list[list[str]]


def _member_forms(value) -> list[str]:
    """Surface forms of one ``members`` cell (list of {surface_form, n_records}), most frequent first."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    forms = [m["surface_form"] if isinstance(m, dict) else m for m in value]
    return [str(f) for f in forms if f is not None and str(f).strip()]


def read_label_vocabulary(vocabulary_path) -> tuple[list[str], list[str], list[list[str]]]:
    """(label ids, names, member surface forms) of ``label_vocabulary.parquet`` in ``label_index`` order."""
    vocab = pd.read_parquet(vocabulary_path)
    if "label_index" in vocab.columns:
        vocab = vocab.sort_values("label_index")
    missing = {"label", "name"} - set(vocab.columns)
    if missing:
        raise ValueError(f"label vocabulary {vocabulary_path} lacks columns {sorted(missing)}")
    cells = vocab["members"] if "members" in vocab.columns else [None] * len(vocab)
    members = [_member_forms(m) for m in cells]
    return [str(c) for c in vocab["label"]], [str(n) for n in vocab["name"]], members


def read_label_table(labels_path, vocabulary_path) -> LabelTable:
    """Labels of ``labels.parquet`` for the vocabulary's ``label`` columns (missing values → -1)."""
    ids, names, members = read_label_vocabulary(vocabulary_path)
    labels = pd.read_parquet(labels_path)
    missing = [c for c in ids if c not in labels.columns]
    if missing:
        raise ValueError(f"labels {labels_path} lack vocabulary labels {missing[:10]}")
    if labels["record_id"].duplicated().any():
        raise ValueError(f"labels {labels_path} repeat record ids")
    index = {str(r): i for i, r in enumerate(labels["record_id"])}
    matrix = labels[ids].to_numpy(dtype=np.float64, na_value=-1).reshape(len(labels), len(ids))
    return LabelTable(index, matrix.astype(np.int8), ids, names, members)



def label_phrasings(names: list[str], members: list[list[str]], cfg: PretrainConfig) -> list[list[str]]:
    """Each label's query texts: its name, then (``query_members``) up to ``max_query_members`` of its
    member surface forms (most frequent first, at least ``min_member_chars`` long, the name excluded)."""
    phrasings = []
    for name, forms in zip(names, members):
        texts, seen = [name], {name.strip().lower()}
        if cfg.query_members:
            for form in forms:
                key = form.strip().lower()
                if len(texts) - 1 >= cfg.max_query_members:
                    break
                if len(key) >= cfg.min_member_chars and key not in seen:
                    texts.append(form)
                    seen.add(key)
        phrasings.append(texts)
    return phrasings


class QueryBank:
    """Text embeddings of every label's phrasings, encoded once; one phrasing per label per step.

    A label's phrasings are its name and the member surface forms that standardisation merged into it
    (``label_vocabulary.parquet``: they come from the reports, not from any curated list). Training on
    all of them teaches the head the region of text space around each label, so zero-shot class
    descriptions that word a finding differently still land on it. With ``query_members`` off, or for
    a label without other members, it always returns the name.
    """

    def __init__(self, text, names: list[str], members: list[list[str]], cfg: PretrainConfig, device):
        phrasings = label_phrasings(names, members, cfg)
        self.phrasings = phrasings
        flat = [t for texts in phrasings for t in texts]
        self.embeddings = text.encode(flat).to(device)  # once per run, never per step
        self.first = torch.tensor(np.cumsum([0] + [len(t) for t in phrasings[:-1]]), device=device)
        self.count = torch.tensor([len(t) for t in phrasings], device=device)
        self.canonical = self.embeddings[self.first]

    def sample(self) -> torch.Tensor:
        """One random phrasing per label (torch's global RNG, seeded per epoch)."""
        pick = (torch.rand(len(self.count), device=self.count.device) * self.count).long()
        return self.embeddings[self.first + pick]
