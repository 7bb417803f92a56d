"""The canonical 12-lead order and reordering of any record's leads *by name*."""

from __future__ import annotations

import numpy as np

CANONICAL_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
#: MIMIC-IV-ECG stores aVF before aVL.
MIMIC_LEAD_ORDER: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6",
)
LIMB_LEADS = CANONICAL_LEADS[:6]
PRECORDIAL_LEADS = CANONICAL_LEADS[6:]

_BY_KEY = {name.upper(): name for name in CANONICAL_LEADS}


class MissingLeadsError(ValueError):
    """The record lacks leads that cannot be derived (e.g. a precordial lead)."""

    def __init__(self, problem: str, lead_names):
        super().__init__(f"{problem}; the record has {list(lead_names)}")


def canonical_lead_name(name: str) -> str | None:
    """Map a header's lead name (``AVR``, ``avr``, `` v1 ``) to its canonical spelling, or None."""
    return _BY_KEY.get(name.strip().upper())


def derive_limb_leads(i: np.ndarray, ii: np.ndarray) -> dict[str, np.ndarray]:
    """Einthoven and Goldberger: every limb lead from leads I and II."""
    return {
        "I": i,
        "II": ii,
        "III": ii - i,
        "aVR": -(i + ii) / 2,
        "aVL": i - ii / 2,
        "aVF": ii - i / 2,
    }


def reorder_by_name(
    signal: np.ndarray, lead_names: list[str] | tuple[str, ...]
) -> tuple[np.ndarray, list[str], list[str]]:
    """Return ``(signal12, source_names, derived)`` with rows in :data:`CANONICAL_LEADS` order.

    ``signal`` is ``(n_leads, n_samples)``. Matching is case-insensitive. A missing limb lead is
    derived from I and II (listed in ``derived``); a missing precordial lead, or a missing limb lead
    when I or II is absent, raises :class:`MissingLeadsError`. Extra leads (e.g. PTB's Frank
    leads) are ignored. ``source_names`` gives, per canonical row, the header name it came from
    (or ``"derived"``). A signal already in canonical order is returned as it is (not copied).
    """
    index: dict[str, int] = {}
    for row, name in enumerate(lead_names):
        canon = canonical_lead_name(name)
        if canon is not None and canon not in index:
            index[canon] = row
    missing_precordial = [name for name in PRECORDIAL_LEADS if name not in index]
    if missing_precordial:
        raise MissingLeadsError(f"missing precordial leads {missing_precordial}", lead_names)
    missing_limb = [name for name in LIMB_LEADS if name not in index]
    derived_rows: dict[str, np.ndarray] = {}
    if missing_limb:
        if "I" not in index or "II" not in index:
            raise MissingLeadsError(f"missing limb leads {missing_limb} and cannot derive without I and II",
                                    lead_names)
        limb = derive_limb_leads(signal[index["I"]], signal[index["II"]])
        derived_rows = {name: limb[name] for name in missing_limb}
    if not missing_limb:
        rows = [index[name] for name in CANONICAL_LEADS]
        sources = [lead_names[row] for row in rows]
        if rows == list(range(12)) and signal.shape[0] == 12:
            return signal, sources, []
        return signal[rows], sources, []
    out = np.empty((12, signal.shape[1]), dtype=signal.dtype)
    sources: list[str] = []
    for row, name in enumerate(CANONICAL_LEADS):
        if name in index:
            out[row] = signal[index[name]]
            sources.append(lead_names[index[name]])
        else:
            out[row] = derived_rows[name]
            sources.append("derived")
    return out, sources, missing_limb
