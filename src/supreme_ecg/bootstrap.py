"""Bootstrap confidence intervals of per-class and macro ROC AUCs over the test records.

A resample draws the test records with replacement (fixed seed). A resample in which some class that
has a defined AUC on the full test set lacks a positive or a negative is redrawn, and the redraws are
counted (classes with 1–5 test positives make them frequent). The interval is the percentile interval
of the accepted resamples (95 % by default). When fewer than the wanted resamples are found within
``MAX_DRAWS_PER_RESAMPLE`` draws each (too few positives), there are no intervals: they are NaN and
``note`` says why, for the caller to write beside the figures. AUCs of a resample are computed from record *weights*
(how often each record was drawn), so each class's scores are sorted once, not once per resample; ties
count one half, as in ``sklearn.metrics.roc_auc_score``.

Several score matrices (e.g. probes trained with different seeds) share the resamples: the macro AUC of
their mean is bootstrapped, so its interval covers the test-set noise of the seed-averaged figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from supreme_ecg.config_schema import schema_defaults

#: defaults of the evaluation, the config schema's ``evaluation``: resamples, seed, interval level
N_RESAMPLES, SEED, LEVEL = (schema_defaults("evaluation")[k] for k in ("n_resamples", "bootstrap_seed", "level"))
#: give up after this many draws per wanted resample (a class with almost no positives)
MAX_DRAWS_PER_RESAMPLE = 200


def weighted_auc(truth: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of one class under each row of ``weights`` (R, N); truth (N,) 0/1, score (N,).

    AUC = Σ_pos Σ_neg w_i w_j ([s_i > s_j] + ½[s_i = s_j]) / (W_pos W_neg); NaN where W_pos or W_neg is 0.
    """
    order = np.argsort(score, kind="mergesort")
    s, y = score[order], truth[order].astype(bool)
    w = weights[:, order].astype(np.float64)
    # tie groups of equal scores: negatives strictly below + half of the equal ones
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    group = np.cumsum(np.r_[True, s[1:] != s[:-1]]) - 1
    w_neg = np.where(y, 0.0, w)
    cum_neg = np.cumsum(w_neg, axis=1)
    below = np.concatenate([np.zeros((w.shape[0], 1)), cum_neg], axis=1)[:, starts]  # before each group
    ends = np.r_[starts[1:], len(s)]
    group_neg = np.concatenate([np.zeros((w.shape[0], 1)), cum_neg], axis=1)[:, ends] - below
    credit = below[:, group] + 0.5 * group_neg[:, group]
    w_pos = np.where(y, w, 0.0)
    n_pos, n_neg = w_pos.sum(axis=1), w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (w_pos * credit).sum(axis=1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def column_aucs(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC per column (labels ≥ 0 only; NaN without both classes), by mid-ranks — the same values as
    ``roc_auc_score`` without its per-call validation, for loops that score every epoch."""
    from scipy.stats import rankdata

    out = np.full(truth.shape[1], np.nan)
    for c in range(truth.shape[1]):
        known = truth[:, c] >= 0
        y = truth[known, c] > 0
        n_pos = int(y.sum())
        n_neg = int(len(y) - n_pos)
        if n_pos and n_neg:
            ranks = rankdata(scores[known, c])
            out[c] = (ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


@dataclass
class BootstrapResult:
    """Point estimates and percentile intervals of per-class and macro AUCs."""

    auc: np.ndarray            # (C,) on the full test set (mean over score matrices)
    ci_low: np.ndarray         # (C,)
    ci_high: np.ndarray        # (C,)
    macro: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # group → (auc, low, high)
    macro_samples: dict[str, np.ndarray] = field(default_factory=dict)  # group → (R,) resampled macro AUCs
    n_resamples: int = 0
    n_redraws: int = 0
    level: float = LEVEL
    seed: int = SEED
    note: str = ""             # why there are no intervals (too few positives), else empty


def _class_weights(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class: known-label mask (labels ≥ 0) and positive mask."""
    known = truth >= 0
    return known, (truth > 0) & known


def _resample_weights(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, n) draw counts of ``size`` resamples of n records with replacement."""
    draws = rng.integers(0, n, size=(size, n))
    offsets = (np.arange(size) * n)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=size * n).reshape(size, n)


def bootstrap_aucs(truth: np.ndarray, scores, groups: dict[str, np.ndarray] | None = None,
                   n_resamples: int = N_RESAMPLES, seed: int = SEED, level: float = LEVEL) -> BootstrapResult:
    """Per-class and macro AUCs with bootstrap percentile intervals.

    ``truth`` (N, C) ints: 1 positive, 0 negative, -1 unknown (left out of that class). ``scores`` (N, C)
    or a list of such matrices (their AUCs are averaged per resample). ``groups``: name → boolean mask
    over classes; each gives a macro AUC over its classes with a defined AUC (default: ``{"all": every
    class}``). ``n_resamples=0`` gives point estimates with NaN intervals.
    """
    truth = np.asarray(truth)
    matrices = [np.asarray(s, dtype=np.float64) for s in (scores if isinstance(scores, (list, tuple)) else [scores])]
    n, n_classes = truth.shape
    if any(m.shape != truth.shape for m in matrices):
        raise ValueError(f"scores {[m.shape for m in matrices]} do not match truth {truth.shape}")
    groups = {"all": np.ones(n_classes, bool)} if groups is None else {k: np.asarray(v, bool) for k, v in groups.items()}
    known, positive = _class_weights(truth)

    def aucs(weights: np.ndarray) -> np.ndarray:
        """(R, C) AUCs averaged over the score matrices."""
        out = np.full((weights.shape[0], n_classes), np.nan)
        for c in range(n_classes):
            rows = known[:, c]
            if not rows.any():
                continue
            out[:, c] = np.mean([weighted_auc(positive[rows, c], m[rows, c], weights[:, rows]) for m in matrices],
                                axis=0)
        return out

    point = aucs(np.ones((1, n)))[0]
    defined = ~np.isnan(point)
    kept, n_redraws, n_draws = [], 0, 0
    rng = np.random.default_rng(seed)
    note = ""
    while sum(len(k) for k in kept) < n_resamples:
        if n_draws > MAX_DRAWS_PER_RESAMPLE * n_resamples:
            n_pos = (positive & known).sum(axis=0)
            n_neg = (known & ~positive).sum(axis=0)
            rare = sorted(np.flatnonzero(defined), key=lambda c: min(n_pos[c], n_neg[c]))[:5]
            note = (f"no intervals: after {n_draws} draws only {sum(len(k) for k in kept)} of {n_resamples} "
                    "resamples had a positive and a negative of every evaluated class (rarest classes by column: "
                    f"{', '.join(f'{c}: {n_pos[c]} pos / {n_neg[c]} neg' for c in rare)}); score more records")
            kept, n_resamples = [], 0
            break
        size = min(max(64, n_resamples), 4096)
        weights = _resample_weights(n, size, rng)
        n_draws += size
        pos_w = weights @ positive[:, defined].astype(np.int64)
        neg_w = weights @ (known & ~positive)[:, defined].astype(np.int64)
        ok = (pos_w > 0).all(axis=1) & (neg_w > 0).all(axis=1)
        n_redraws += int((~ok).sum())
        kept.append(weights[ok][: n_resamples - sum(len(k) for k in kept)])
    boot = aucs(np.concatenate(kept)) if n_resamples else np.zeros((0, n_classes))

    ci = np.array([percentile_interval(boot[:, c], level) if defined[c] else (np.nan, np.nan)
                   for c in range(n_classes)])
    macro, samples = {}, {}
    for name, mask in groups.items():
        cols = mask & defined
        if not cols.any():
            macro[name], samples[name] = (float("nan"), float("nan"), float("nan")), np.full(len(boot), np.nan)
            continue
        samples[name] = boot[:, cols].mean(axis=1)
        macro[name] = (float(point[cols].mean()), *percentile_interval(samples[name], level))
    return BootstrapResult(auc=point, ci_low=ci[:, 0] if len(ci) else ci, ci_high=ci[:, 1] if len(ci) else ci,
                           macro=macro, macro_samples=samples, n_resamples=n_resamples, n_redraws=n_redraws,
                           level=level, seed=seed, note=note)


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap samples (NaNs left out; NaN when none remain)."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if not len(samples):
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def samples_table(result: BootstrapResult, **keys) -> pd.DataFrame:
    """Long table of a result's resampled macro AUCs: ``keys`` columns, group, resample, macro_auc."""
    frames = [pd.DataFrame({**keys, "group": name, "resample": np.arange(len(values)), "macro_auc": values})
              for name, values in result.macro_samples.items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=[*keys, "group", "resample", "macro_auc"])


def write_bootstrap_samples(tables: list[pd.DataFrame], path) -> None:
    """``bootstrap.parquet``: the resampled macro AUCs (encoder, group, resample, macro_auc), from which
    the intervals of averages over tasks are computed."""
    columns = ["encoder", "group", "resample", "macro_auc"]
    frame = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)
    frame = frame[columns].astype({"encoder": str, "group": str, "resample": np.int64, "macro_auc": np.float64})
    frame.to_parquet(path, index=False)


def average_over_tasks(samples: list[pd.DataFrame], encoder: str, group: str, level: float = LEVEL
                       ) -> tuple[float, float]:
    """Interval of the mean over tasks of a macro AUC: per resample index, the mean of the tasks'
    resampled values (tasks with no value for the group left out)."""
    values = [s.loc[(s["encoder"] == encoder) & (s["group"] == group)].set_index("resample")["macro_auc"]
              for s in samples]
    values = [v for v in values if len(v) and v.notna().any()]
    if not values:
        return float("nan"), float("nan")
    return percentile_interval(pd.concat(values, axis=1).mean(axis=1, skipna=True).to_numpy(), level)
