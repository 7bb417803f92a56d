"""Tests of the report figures: per-class AUC bars, the overview, example ECGs on ECG paper."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection

from supreme_ecg import catalogue, formats, plots
from supreme_ecg.leads import CANONICAL_LEADS, reorder_by_name
from supreme_ecg.preprocess import resample


def _png_size(path) -> tuple[int, int]:
    """(height, width) in pixels of a written, non-empty PNG."""
    assert path.is_file() and path.stat().st_size > 1000
    image = mpimg.imread(path)
    return image.shape[0], image.shape[1]


def _per_class_38() -> pd.DataFrame:
    """A csn-sized per-class table: pretrained + random_init, two classes without AUC, seen/unseen."""
    rng = np.random.default_rng(0)
    rows = []
    for k, c in enumerate(catalogue.task_classes("csn")):
        n_pos, n_neg = (0, 300) if k == 3 else (40, 0) if k == 5 else (int(rng.integers(1, 40)), 300)
        auc = np.nan if 0 in (n_pos, n_neg) else float(rng.uniform(0.4, 0.99))
        for encoder, shift in (("pretrained", 0.0), ("random_init", -0.15)):
            value = auc + shift
            rows.append({"task": "csn", "class": c.name, "description": c.description, "encoder": encoder,
                         "n_pos": n_pos, "n_neg": n_neg, "auc": value, "ci_low": value - 0.05,
                         "ci_high": value + 0.05, "class_kind": "seen" if k % 3 else "unseen"})
    return pd.DataFrame(rows)


def test_class_aucs_38_classes(tmp_path):
    per_class = _per_class_38()
    fig = plots.class_aucs_figure(per_class, "csn")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    main = per_class[per_class["encoder"] == "pretrained"]
    assert len(labels) == 38
    expected = main.dropna(subset=["auc"]).sort_values("auc", ascending=False)
    assert labels[:36] == [f"{r['class']} (n+={r['n_pos']})" for r in expected.to_dict("records")]
    assert {labels[36], labels[37]} == {f"{main.iloc[3]['class']} (n+=0)", f"{main.iloc[5]['class']} (n+=40)"}
    notes = {t.get_text() for t in ax.texts}
    assert {"not evaluated: n+=0", "not evaluated: n\u2212=0"} <= notes
    (diamonds,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(diamonds.get_offsets()) == 36  # one random_init AUC per evaluated class
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"seen class", "unseen class", "random init"} <= legend
    path = tmp_path / "csn.png"
    plots.plot_class_aucs(per_class, path, "csn: zero-shot per-class AUC")
    height, width = _png_size(path)
    assert height > 900 and 600 < width < 1200  # one readable row per class


def test_class_aucs_minimal_tables(tmp_path):
    per_class = _per_class_38()
    only_pretrained = per_class[per_class["encoder"] == "pretrained"].head(5)
    bare = only_pretrained.drop(columns=["encoder", "class_kind", "ci_low", "ci_high"])
    for name, table in (("no_random_init", only_pretrained), ("bare", bare)):
        fig = plots.class_aucs_figure(table, name)
        assert not [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
        plots.plot_class_aucs(table, tmp_path / f"{name}.png", name)
        height, width = _png_size(tmp_path / f"{name}.png")
        assert 150 < height < 500 and width > 500
    with pytest.raises(ValueError, match="twice"):
        plots.class_aucs_figure(pd.concat([bare, bare]), "dup")
    with pytest.raises(ValueError, match="several tasks"):
        plots.class_aucs_figure(bare.assign(task=["a", "b", "a", "a", "a"]), "mixed")


def test_overview(tmp_path):
    rows = []
    for task in ("ptbxl_super", "cpsc2018", "csn"):
        for method in ("probe 10%", "zero-shot"):
            for encoder in ("pretrained", "random_init"):
                rows.append({"task": task, "method": method, "encoder": encoder, "macro_auc": 0.8,
                             "ci_low": 0.75, "ci_high": 0.85})
    rows[0]["macro_auc"] = np.nan
    rows = pd.DataFrame(rows[:-1])  # csn has no zero-shot random_init row
    fig = plots.overview_figure(rows, "overview")
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == rows["macro_auc"].notna().sum() == 10
    finite = rows[rows["macro_auc"].notna()]
    assert sum(bool(b.get_hatch()) for b in bars) == (finite["encoder"] == "random_init").sum() == 5  # hatched
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ptbxl_super", "cpsc2018", "csn"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["zero-shot · pretrained", "zero-shot · random init"]  # METHOD_ORDER
    path = tmp_path / "overview.png"
    plots.plot_overview(rows, path, "Macro AUC")
    height, width = _png_size(path)
    assert 300 < height < 800 and 600 < width < 2000
    with pytest.raises(ValueError, match="lacks columns"):
        plots.overview_figure(rows.drop(columns=["ci_low"]), "x")


def _example(record_id, signal, fs, labels=("AFIB",)):
    return {"record_id": record_id, "signal_mv": signal, "fs": fs, "labels": list(labels),
            "top_queries": [("atrial fibrillation", 0.91), ("sinus rhythm", 0.12)]}


def test_example_ecgs_on_true_scale_paper(fx, tmp_path):
    examples = [_example(p.stem, *plots.read_example_signal(p))
                for p in (fx / "cinc2020/cpsc2018/A0001.hea", fx / "cinc2020/ptb/S0001.hea")]
    fig = plots.example_ecgs_figure(examples, "examples")
    fig.canvas.draw()
    paper = list(fig.axes)
    assert len(paper) == 2
    for ax in paper:
        box = ax.get_window_extent()
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        px_per_mm_x = box.width / ((x1 - x0) * plots.PAPER_MM_PER_S)  # 25 mm per second
        px_per_mm_y = box.height / ((y1 - y0) * plots.PAPER_MM_PER_MV)  # 10 mm per mV
        assert px_per_mm_x == pytest.approx(px_per_mm_y, rel=0.01)
        assert px_per_mm_x == pytest.approx(plots.DPI / 25.4, rel=0.01)  # true size at 110 dpi
        names = [t.get_text() for t in ax.texts]
        assert sorted(names) == sorted([*CANONICAL_LEADS, "II"])  # 3×4 cells + rhythm strip
    text = "\n".join(t.get_text() for t in fig.texts)
    assert "true: AFIB" in text and "atrial fibrillation (0.91)" in text
    assert "S0001    38.4 s at 500 Hz (first 10 s shown)" in text
    path = tmp_path / "examples.png"
    plots.plot_example_ecgs(examples, path, "examples")
    height, width = _png_size(path)
    assert 1000 < width < 1300 and height > 2 * 600


def test_example_ecgs_clip_big_waves_and_nan(tmp_path):
    fs = 500.0
    t = np.arange(int(10 * fs)) / fs
    signal = np.tile(0.8 * np.sin(2 * np.pi * 1.2 * t), (12, 1)).astype(np.float32)
    quiet = _example("quiet", signal.copy(), fs)
    signal[0, 500:510] = 9.0  # lead I at 1 s: shown in the I cell, far beyond its ±1.75 mV band
    signal[5, 100:200] = np.nan
    loud = _example("loud", signal, fs, labels=())
    fig = plots.example_ecgs_figure([quiet, loud], "clip")
    texts = [t.get_text() for t in fig.texts]
    assert not any("clipped" in t for t in texts if t.startswith("quiet"))
    (loud_text,) = [t for t in texts if t.startswith("loud")]
    assert "clipped at ±1.75 mV around the baseline: I" in loud_text and "true: (none)" in loud_text
    traces = [line for line in fig.axes[1].lines if len(line.get_xdata()) > 100]
    assert len(traces) == 13
    for line in traces:  # each trace is clipped to its own cell: 2.5 s (10 s rhythm) × one 3.5 mV row
        cell = line.get_clip_box().transformed(fig.axes[1].transData.inverted())
        assert cell.height == pytest.approx(plots.ROW_MV) and cell.width in (pytest.approx(2.5), pytest.approx(10))
        assert cell.x0 - 1e-9 <= line.get_xdata().min() and line.get_xdata().max() <= cell.x1 + 1e-9
    assert all(np.isfinite(line.get_ydata()).all() for line in traces)
    plots.plot_example_ecgs([loud], tmp_path / "loud.png", "clip")
    assert _png_size(tmp_path / "loud.png")[1] > 1000
    with pytest.raises(ValueError, match=r"\(12, L\)"):
        plots.example_ecgs_figure([_example("bad", signal[:8], fs)], "bad")


def test_read_example_signal_ptb_1khz(fx):
    path = fx / "cinc2020/ptb/S0001.hea"
    record = formats.read_record(path)
    assert record.fs == 1000.0
    native, fs_native = plots.read_example_signal(path, fs=1000.0)
    canonical, _, _ = reorder_by_name(record.signal, record.lead_names)
    np.testing.assert_array_equal(native, np.nan_to_num(canonical))
    signal, fs = plots.read_example_signal(path)
    assert fs == 500.0 and signal.dtype == np.float32
    assert signal.shape == (12, record.n_samples // 2)
    np.testing.assert_allclose(signal, resample(native, 1000.0, 500.0), atol=1e-6)
    assert np.isfinite(signal).all() and 0.1 < np.abs(signal).max() < 20


def test_read_example_signal_reorders_leads_and_zeroes_nan(fx, tmp_path):
    record = formats.read_record(fx / "cinc2020/cpsc2018/A0001.hea")
    canonical, _, _ = reorder_by_name(record.signal, record.lead_names)
    order = [11, 3, 0, 7, 1, 10, 5, 2, 9, 4, 8, 6]  # a file with leads in another order, and missing samples
    shuffled = canonical[order].copy()
    shuffled[0, :50] = np.nan
    hea = formats.write_wfdb16(tmp_path, "shuffled", shuffled, [CANONICAL_LEADS[i] for i in order], 500.0)
    signal, fs = plots.read_example_signal(hea)
    assert fs == 500.0 and signal.shape == canonical.shape
    np.testing.assert_allclose(signal[:, 50:], canonical[:, 50:], atol=1e-3)  # 1 µV ADC steps
    np.testing.assert_array_equal(signal[11, :50], 0.0)  # V6's NaN samples → 0
    assert np.abs(signal).max() < 20
