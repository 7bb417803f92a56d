"""Compare two runs' final tables: `python tests/slurm/compare_runs.py LOCAL_RESULTS OTHER_RESULTS`.

Prints, per summary table, whether the rows match and the largest absolute difference of its numeric
columns; exits 1 when they differ beyond --atol. A missing local run is reported and exits 0 (there is
nothing to compare with yet: run `make demo` first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

TABLES = ("zeroshot/summary.csv", "linear_probe/summary.csv")


def compare_table(left: pd.DataFrame, right: pd.DataFrame, atol: float) -> tuple[bool, str]:
    """Equal shape, columns and text cells; numeric cells within ``atol`` (NaN equals NaN)."""
    if list(left.columns) != list(right.columns) or left.shape != right.shape:
        return False, f"shape/columns differ: {left.shape} vs {right.shape}"
    numeric = left.select_dtypes("number").columns
    text = [c for c in left.columns if c not in numeric]
    if not left[text].astype(str).equals(right[text].astype(str)):
        return False, "text columns differ"
    a, b = left[numeric].to_numpy(float), right[numeric].to_numpy(float)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    worst = float(np.nanmax(diff)) if diff.size else 0.0
    if np.isnan(diff).any():
        return False, "NaN in one run only"
    return worst <= atol, f"{len(left)} rows, max |difference| {worst:.3g}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("local", type=Path)
    p.add_argument("other", type=Path)
    p.add_argument("--atol", type=float, default=1e-9)
    args = p.parse_args(argv)
    if not (args.local / TABLES[0]).exists():
        print(f"no local run in {args.local}: run `make demo` to compare with it")
        return 0
    ok = True
    for table in TABLES:
        same, detail = compare_table(pd.read_csv(args.local / table), pd.read_csv(args.other / table), args.atol)
        ok &= same
        print(f"{table}: {'EQUAL' if same else 'DIFFERENT'} ({detail})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
