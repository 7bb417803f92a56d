"""Report figures: per-class AUC bars, the overview of methods per task, and example ECGs on ECG paper.

Every ``plot_*`` function writes a PNG (110 dpi) to ``path`` and returns None; the ``*_figure``
functions build the same figure and return it (for tests or further editing). Figures are made with
:class:`matplotlib.figure.Figure` on the Agg canvas, so no pyplot state or interactive backend is touched.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from supreme_ecg import formats
from supreme_ecg.leads import CANONICAL_LEADS, reorder_by_name
from supreme_ecg.preprocess import resample

DPI = 110
PRETRAINED, RANDOM_INIT = "pretrained", "random_init"
KIND_COLOURS = {"seen": "#1f77b4", "unseen": "#ff7f0e"}
SINGLE_COLOUR = "#4c72b0"
METHOD_ORDER = ("zero-shot", "probe 1%", "probe 10%", "probe 100%")

# ECG paper (clinical standard)
PAPER_MM_PER_S = 25.0
PAPER_MM_PER_MV = 10.0
MINOR_MM, MAJOR_MM = 1.0, 5.0
CELL_SECONDS = 2.5
STRIP_SECONDS = 4 * CELL_SECONDS
#: height of one row of the 3×4 layout (and of the rhythm strip) in mV; signals are clipped to it
ROW_MV = 3.5
#: left margin holding each row's 1 mV × 0.2 s calibration pulse
CALIBRATION_SECONDS = 0.4
#: leads of the 3×4 layout: columns I-II-III / aVR-aVL-aVF / V1-V2-V3 / V4-V5-V6
LAYOUT = tuple(tuple(CANONICAL_LEADS[3 * col + row] for col in range(4)) for row in range(3))
RHYTHM_LEAD = "II"
PAPER_COLOURS = {"background": "#fff5f5", "minor": "#f6c6c6", "major": "#e58a8a", "trace": "black"}


def _new_figure(width_in: float, height_in: float, layout: str | None = None) -> Figure:
    """A figure on the Agg canvas."""
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> None:
    """Write ``fig`` as a PNG at :data:`DPI`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", format="png")


def _require(frame: pd.DataFrame, columns, what: str) -> None:
    """Raise ValueError naming the columns ``frame`` lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}")


def _float(value) -> float:
    """``value`` as a float, NaN for None/missing."""
    return float("nan") if value is None or pd.isna(value) else float(value)


# --------------------------------------------------------------------------- per-class AUC bars


def _not_evaluated_note(n_pos, n_neg) -> str:
    """Why a class has no AUC."""
    if not pd.isna(n_pos) and int(n_pos) == 0:
        return "not evaluated: n+=0"
    if not pd.isna(n_neg) and int(n_neg) == 0:
        return "not evaluated: n\u2212=0"
    return "not evaluated"


def class_aucs_figure(per_class: pd.DataFrame, title: str) -> Figure:
    """The figure of :func:`plot_class_aucs`."""
    _require(per_class, ["class", "auc"], "per-class table")
    if "task" in per_class.columns and per_class["task"].nunique() > 1:
        raise ValueError(f"per-class table holds several tasks {sorted(per_class['task'].unique())}; plot one")
    if "encoder" in per_class.columns:
        main = per_class[per_class["encoder"] == PRETRAINED]
        reference = per_class[per_class["encoder"] == RANDOM_INIT].set_index("class")["auc"]
        if main.empty:
            raise ValueError(f"per-class table has no rows for encoder {PRETRAINED!r}")
    else:
        main, reference = per_class, pd.Series(dtype=float)
    if main["class"].duplicated().any() or reference.index.duplicated().any():
        raise ValueError("a class appears twice for one encoder; pass one method's table")
    has_kind = "class_kind" in main.columns and main["class_kind"].notna().any()
    rows = main.assign(_missing=main["auc"].isna()).sort_values(["_missing", "auc"], ascending=[True, False],
                                                                kind="stable")
    n = len(rows)
    fig = _new_figure(7.5, 1.5 + 0.24 * max(n, 3), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(n)
    labels = []
    for i, row in enumerate(rows.to_dict("records")):
        n_pos = row.get("n_pos")
        labels.append(f"{row['class']} (n+={'?' if pd.isna(n_pos) else int(n_pos)})")
        auc = _float(row["auc"])
        kind = row.get("class_kind") if has_kind else None
        colour = KIND_COLOURS.get(kind, "0.6") if has_kind else SINGLE_COLOUR
        if np.isnan(auc):
            ax.text(0.01, i, _not_evaluated_note(n_pos, row.get("n_neg")), va="center", fontsize=7,
                    color="0.35", style="italic")
            continue
        ax.barh(i, auc, height=0.7, color=colour, alpha=0.85)
        low, high = _float(row.get("ci_low")), _float(row.get("ci_high"))
        if not (np.isnan(low) or np.isnan(high)):
            ax.errorbar(auc, i, xerr=[[max(auc - low, 0.0)], [max(high - auc, 0.0)]], fmt="none",
                        ecolor="0.15", elinewidth=0.9, capsize=2)
        ax.text(1.01, i, f"{auc:.3f}", transform=ax.get_yaxis_transform(), va="center", fontsize=7)
    ref = np.array([_float(reference.get(c)) for c in rows["class"]])
    if np.isfinite(ref).any():
        ax.scatter(ref[np.isfinite(ref)], y[np.isfinite(ref)], marker="D", s=16, color="black", zorder=3)
    ax.axvline(0.5, color="0.3", ls="--", lw=0.9)
    ax.set_yticks(y, labels, fontsize=8 if n <= 40 else 6)
    has_ci = {"ci_low", "ci_high"} <= set(main.columns) and main["ci_low"].notna().any()
    ax.set(xlim=(0, 1.02), ylim=(n - 0.5, -0.5),
           xlabel=f"ROC AUC ({PRETRAINED}{'; whiskers: 95% CI' if has_ci else ''})")
    fig.suptitle(title, fontsize=10)
    ax.grid(axis="x", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    handles = [Patch(color=KIND_COLOURS[k], label=f"{k} class") for k in KIND_COLOURS
               if has_kind and (main["class_kind"] == k).any()]
    if not has_kind:
        handles.append(Patch(color=SINGLE_COLOUR, label=PRETRAINED))
    if np.isfinite(ref).any():
        handles.append(Line2D([], [], marker="D", ls="none", color="black", markersize=4, label="random init"))
    handles.append(Line2D([], [], ls="--", color="0.3", label="chance (0.5)"))
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncol=len(handles), frameon=False)
    return fig


def plot_class_aucs(per_class: pd.DataFrame, path, title: str) -> None:
    """Horizontal AUC bars of one task's classes for encoder ``pretrained``, best at the top.

    Whiskers: ``ci_low``/``ci_high`` (when present); colour: ``class_kind`` (when present); black
    diamonds: the ``random_init`` encoder's AUC of the same class (when present); classes without an
    AUC sit at the bottom with the reason (``n+=0`` / ``n−=0``). Rows are labelled ``CLASS (n+=N)``.
    """
    _save(class_aucs_figure(per_class, title), path)


# --------------------------------------------------------------------------- overview


def _ordered(values, preferred) -> list:
    """Unique ``values``: those in ``preferred`` first in that order, then the rest in order of appearance."""
    seen = list(dict.fromkeys(values))
    return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]


def overview_figure(rows: pd.DataFrame, title: str) -> Figure:
    """The figure of :func:`plot_overview`."""
    _require(rows, ["task", "method", "encoder", "macro_auc", "ci_low", "ci_high"], "overview table")
    if rows.duplicated(["task", "method", "encoder"]).any():
        raise ValueError("overview table has several rows for one (task, method, encoder)")
    tasks = list(dict.fromkeys(rows["task"]))
    methods = _ordered(rows["method"], METHOD_ORDER)
    encoders = _ordered(rows["encoder"], (PRETRAINED, RANDOM_INIT))
    present = set(zip(rows["method"], rows["encoder"]))
    slots = [(m, e) for m in methods for e in encoders if (m, e) in present]
    width = 0.8 / len(slots)
    fig = _new_figure(max(6.0, 2.5 + len(tasks) * (0.17 * len(slots) + 0.35)), 4.6)
    ax = fig.add_subplot()
    colours = {m: f"C{k % 10}" for k, m in enumerate(methods)}
    by_key = rows.set_index(["task", "method", "encoder"])
    for s, (method, encoder) in enumerate(slots):
        for t, task in enumerate(tasks):
            if (task, method, encoder) not in by_key.index:
                continue
            row = by_key.loc[(task, method, encoder)]
            value = _float(row["macro_auc"])
            x = t - 0.4 + width * (s + 0.5)
            if np.isnan(value):
                ax.text(x, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=6.5, color="0.5")
                continue
            reference = encoder != PRETRAINED
            ax.bar(x, value, width=width * 0.92, color=colours[method], alpha=0.45 if reference else 0.9,
                   hatch="///" if reference else None, edgecolor=colours[method], linewidth=0.6)
            low, high = _float(row["ci_low"]), _float(row["ci_high"])
            if not (np.isnan(low) or np.isnan(high)):
                ax.errorbar(x, value, yerr=[[max(value - low, 0.0)], [max(high - value, 0.0)]], fmt="none",
                            ecolor="0.15", elinewidth=0.8, capsize=1.5)
            ax.text(x, 0.02, f"{value:.2f}", rotation=90, ha="center", va="bottom", fontsize=6.5,
                    color="0.1")
    ax.axhline(0.5, color="0.3", ls="--", lw=0.9)
    crowded = len(tasks) > 8
    ax.set_xticks(range(len(tasks)), tasks, rotation=20 if crowded else 0, ha="right" if crowded else "center",
                  fontsize=8)
    ax.set(ylim=(0, 1.0), xlim=(-0.5, len(tasks) - 0.5), ylabel="macro ROC AUC (whiskers: 95% CI)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    handles = [Patch(facecolor=colours[m], alpha=0.45 if e != PRETRAINED else 0.9, edgecolor=colours[m],
                     hatch="///" if e != PRETRAINED else None, label=f"{m} · {e.replace('_', ' ')}")
               for m, e in slots]
    handles.append(Line2D([], [], ls="--", color="0.3", label="chance (0.5)"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def plot_overview(rows: pd.DataFrame, path, title: str) -> None:
    """Grouped macro-AUC bars per task: one bar per (method, encoder), random_init hatched and lighter.

    ``rows``: columns task, method, encoder, macro_auc, ci_low, ci_high; NaN AUCs leave a gap.
    """
    _save(overview_figure(rows, title), path)


# --------------------------------------------------------------------------- example ECGs on ECG paper


def _paper_grid(ax, x0: float, x1: float, y0: float, y1: float) -> None:
    """Minor (1 mm) and major (5 mm) grid lines over [x0, x1] s × [y0, y1] mV."""
    for step_mm, colour, width, skip in ((MINOR_MM, "minor", 0.35, MAJOR_MM), (MAJOR_MM, "major", 0.7, None)):
        segments = []
        for lo, hi, mm_per_unit, vertical in ((x0, x1, PAPER_MM_PER_S, True), (y0, y1, PAPER_MM_PER_MV, False)):
            n = int(round((hi - lo) * mm_per_unit / step_mm))
            for k in range(n + 1):
                mm = k * step_mm
                if skip and round(mm / skip, 6).is_integer():
                    continue
                v = lo + mm / mm_per_unit
                segments.append([(v, y0), (v, y1)] if vertical else [(x0, v), (x1, v)])
        ax.add_collection(LineCollection(segments, colors=PAPER_COLOURS[colour], linewidths=width, zorder=0))


def _calibration_pulse(ax, baseline: float) -> None:
    """The 1 mV, 0.2 s square pulse in the left margin of a row."""
    x = np.array([-0.375, -0.3, -0.3, -0.1, -0.1, -0.025])
    y = baseline + np.array([0, 0, 1, 1, 0, 0], dtype=float)
    ax.plot(x, y, color=PAPER_COLOURS["trace"], lw=0.9)


def _trace(ax, signal: np.ndarray, fs: float, t0: float, t1: float, baseline: float, band) -> bool:
    """Draw ``signal[t0:t1]`` (its median at ``baseline``) clipped to ``band`` (y0, y1); True if clipped."""
    start, stop = int(round(t0 * fs)), min(int(round(t1 * fs)), signal.shape[-1])
    if stop - start < 2:
        return False
    segment = np.asarray(signal[start:stop], dtype=np.float64)
    y = segment - np.median(segment) + baseline
    (line,) = ax.plot(np.arange(start, stop) / fs, y, color=PAPER_COLOURS["trace"], lw=0.7)
    line.set_clip_path(Rectangle((t0, band[0]), t1 - t0, band[1] - band[0], transform=ax.transData))
    return bool((y < band[0]).any() or (y > band[1]).any())


def _lead_label(ax, x: float, top: float, name: str) -> None:
    """A lead name in the top-left corner of its cell."""
    ax.text(x + 0.06, top - 0.12, name, ha="left", va="top", fontsize=9, fontweight="bold",
            bbox={"boxstyle": "square,pad=0.1", "facecolor": PAPER_COLOURS["background"], "edgecolor": "none",
                  "alpha": 0.8}, zorder=4)


def _draw_paper(ax, signal: np.ndarray, fs: float) -> list[str]:
    """One example on ECG paper (3×4 layout + lead II rhythm strip); returns the leads that were clipped."""
    index = {name: i for i, name in enumerate(CANONICAL_LEADS)}
    n_rows = len(LAYOUT) + 1
    x0, x1, y0, y1 = -CALIBRATION_SECONDS, STRIP_SECONDS, 0.0, n_rows * ROW_MV
    ax.set_facecolor(PAPER_COLOURS["background"])
    _paper_grid(ax, x0, x1, y0, y1)
    clipped = []
    for r in range(n_rows):
        band = ((n_rows - 1 - r) * ROW_MV, (n_rows - r) * ROW_MV)
        baseline = band[0] + ROW_MV / 2
        _calibration_pulse(ax, baseline - 0.5)
        if r == n_rows - 1:
            if _trace(ax, signal[index[RHYTHM_LEAD]], fs, 0.0, STRIP_SECONDS, baseline, band):
                clipped.append(f"{RHYTHM_LEAD} (rhythm)")
            _lead_label(ax, 0.0, band[1], RHYTHM_LEAD)
            continue
        for c, name in enumerate(LAYOUT[r]):
            t0 = c * CELL_SECONDS
            if _trace(ax, signal[index[name]], fs, t0, t0 + CELL_SECONDS, baseline, band):
                clipped.append(name)
            _lead_label(ax, t0, band[1], name)
            if c:
                ax.plot([t0, t0], [baseline - 0.3, baseline + 0.3], color=PAPER_COLOURS["trace"], lw=1.0)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect(PAPER_MM_PER_MV / PAPER_MM_PER_S, adjustable="box")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(PAPER_COLOURS["major"])
    return clipped


def _wrap_items(prefix: str, items: list[str], width: int) -> list[str]:
    """``prefix`` + items joined by " · ", wrapped between items (an item longer than a line is wrapped itself)."""
    lines, line = [], prefix
    for k, item in enumerate(items):
        piece = item if k == 0 else f" · {item}"
        if k and len(line) + len(piece) > width:
            lines.append(line)
            line, piece = "    ", item
        line += piece
    lines.append(line)
    return [part for line in lines for part in textwrap.wrap(line, width, subsequent_indent="    ") or [line]]


def _example_lines(example: dict, clipped: list[str], width: int) -> list[str]:
    """The lines above an example: record, true labels, top queries with scores, clipped leads."""
    seconds = np.shape(example["signal_mv"])[1] / float(example["fs"])
    shown = f" (first {STRIP_SECONDS:g} s shown)" if seconds > STRIP_SECONDS + 1e-9 else ""
    lines = [f"{example['record_id']}    {seconds:.1f} s at {float(example['fs']):g} Hz{shown} · 25 mm/s · 10 mm/mV"]
    lines += _wrap_items("true: ", list(example.get("labels") or []) or ["(none)"], width)
    queries = [f"{text} ({float(score):.2f})" for text, score in example.get("top_queries") or []]
    lines += _wrap_items("top queries: ", queries or ["(none)"], width)
    if clipped:
        lines += _wrap_items(f"clipped at ±{ROW_MV / 2:g} mV around the baseline: ", clipped, width)
    return lines


def example_ecgs_figure(examples: list[dict], title: str) -> Figure:
    """The figure of :func:`plot_example_ecgs`; its paper axes are drawn at true size at :data:`DPI`."""
    if not examples:
        raise ValueError("no examples to plot")
    for example in examples:
        shape = np.shape(example["signal_mv"])
        if len(shape) != 2 or shape[0] != len(CANONICAL_LEADS):
            raise ValueError(f"{example.get('record_id')}: signal_mv must be (12, L), got {shape}")
    mm_per_in, font_pt, line_h = 25.4, 8.5, 0.165
    paper_w = (CALIBRATION_SECONDS + STRIP_SECONDS) * PAPER_MM_PER_S / mm_per_in
    paper_h = (len(LAYOUT) + 1) * ROW_MV * PAPER_MM_PER_MV / mm_per_in
    margin, title_h, gap = 0.3, 0.45, 0.35
    width_chars = int(paper_w * 72 / (0.55 * font_pt))  # average glyph ≈ 0.55 em
    fig = _new_figure(paper_w + 2 * margin, 1.0)
    panels = []
    for example in examples:  # draw first: the text (and so the layout) depends on which leads were clipped
        ax = fig.add_axes([0, 0, 1, 1])
        signal = np.nan_to_num(np.asarray(example["signal_mv"], dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        clipped = _draw_paper(ax, signal, float(example["fs"]))
        panels.append((ax, _example_lines(example, clipped, width_chars)))
    fig_w = paper_w + 2 * margin
    fig_h = title_h + sum(len(lines) * line_h + 0.1 + paper_h + gap for _, lines in panels)
    fig.set_size_inches(fig_w, fig_h)
    fig.text(0.5, 1 - 0.15 / fig_h, title, ha="center", va="top", fontsize=12, fontweight="bold")
    top = fig_h - title_h
    for ax, lines in panels:
        fig.text(margin / fig_w, top / fig_h, "\n".join(lines), ha="left", va="top", fontsize=font_pt,
                 linespacing=1.3)
        top -= len(lines) * line_h + 0.1 + paper_h
        ax.set_position([margin / fig_w, top / fig_h, paper_w / fig_w, paper_h / fig_h])
        top -= gap
    return fig


def plot_example_ecgs(examples: list[dict], path, title: str) -> None:
    """Example ECGs on ECG paper, each with its true labels and top-scoring queries.

    ``examples``: dicts with record_id, signal_mv ((12, L) mV in CANONICAL_LEADS order), fs, labels
    (true classes) and top_queries ([(text, score)]). Each example: the clinical 3×4 layout (2.5 s per
    lead; columns I-II-III / aVR-aVL-aVF / V1-V2-V3 / V4-V5-V6) and a 10 s lead II rhythm strip at
    25 mm/s and 10 mm/mV, 1 mm minor and 5 mm major grid, drawn at true size. Each trace is shown
    around its median and clipped to its row's ±1.75 mV band (the clipped leads are listed).
    """
    _save(example_ecgs_figure(examples, title), path)


def read_example_signal(path, fs: float = 500.0) -> tuple[np.ndarray, float]:
    """Any record :func:`supreme_ecg.formats.read_record` reads → ``(signal_mv, fs)`` for plotting.

    ``signal_mv``: float32 (12, L) in mV in CANONICAL_LEADS order (limb leads derived when missing),
    resampled to ``fs``; NaN samples become 0; no filtering or normalisation.
    """
    record = formats.read_record(path)
    signal, _, _ = reorder_by_name(record.signal, record.lead_names)
    signal = np.nan_to_num(np.asarray(signal, dtype=np.float32), nan=0.0)
    signal = resample(signal, float(record.fs), float(fs))
    return np.ascontiguousarray(signal, dtype=np.float32), float(fs)
