"""The demo simulator's world: the conditions it renders, codes and words (``conditions.yaml``).

Nothing outside :mod:`supreme_ecg.demo` reads this list: the demo uses it to render signals
(``render`` knob ranges), to write the codes of its downstream sets (PTB-XL ``scp_codes``, CinC
``#Dx`` SNOMED codes) and to word its reports (``synonyms`` for PTB-XL-style text, ``mimic`` for
MIMIC-IV-ECG machine statements). The pre-training labels come from the reports, never from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import yaml


@dataclass(frozen=True)
class Condition:
    """One condition of the demo world.

    ``mentions`` are further words that name it (the unseen guard forbids them too). ``mimic``
    holds the MIMIC-style wording (see the header of ``conditions.yaml``): ``statements`` and
    ``hedged`` map statement text to a relative weight, ``with`` the wording after "Sinus rhythm
    with ...", ``merge`` the share stated that way, ``share`` the prevalence in the pre-training
    set and ``hedge`` the share of hedged mentions.
    """

    id: str
    name: str
    category: str
    synonyms: tuple[str, ...]
    scp: tuple[str, ...]
    snomed: tuple[str, ...]
    render: dict | None = field(default=None, compare=False, hash=False)
    mentions: tuple[str, ...] = ()
    mimic: dict = field(default_factory=dict, compare=False, hash=False)


def _load() -> dict:
    return yaml.safe_load(resources.files("supreme_ecg.demo").joinpath("conditions.yaml").read_text("utf-8"))


@lru_cache(maxsize=1)
def conditions() -> dict[str, Condition]:
    """All conditions by id, in file order."""
    return {
        cid: Condition(
            id=cid,
            name=c["name"],
            category=c["category"],
            synonyms=tuple(c.get("synonyms") or ()),
            scp=tuple(c.get("scp") or ()),
            snomed=tuple(str(s) for s in c.get("snomed") or ()),
            render=c.get("render"),
            mentions=tuple(c.get("mentions") or ()),
            mimic=dict(c.get("mimic") or {}),
        )
        for cid, c in _load()["conditions"].items()
    }


def conditions_version() -> int:
    """Version of the condition file."""
    return int(_load()["version"])
