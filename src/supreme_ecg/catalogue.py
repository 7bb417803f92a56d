"""The project's curated knowledge: ECG concepts and the zero-shot benchmark definition."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import yaml


@dataclass(frozen=True)
class Concept:
    """One standardised ECG finding (see ``resources/concepts.yaml``)."""

    id: str
    name: str
    category: str
    synonyms: tuple[str, ...]
    scp: tuple[str, ...]
    snomed: tuple[str, ...]
    render: dict | None = field(default=None, compare=False, hash=False)


@dataclass(frozen=True)
class BenchmarkClass:
    """One class of a zero-shot task."""

    task: str
    name: str
    description: str
    concepts: tuple[str, ...]
    snomed: tuple[str, ...]
    members: tuple[str, ...] = ()


def _load_yaml(name: str) -> dict:
    return yaml.safe_load(resources.files("supreme_ecg.resources").joinpath(name).read_text("utf-8"))


@lru_cache(maxsize=1)
def concepts() -> dict[str, Concept]:
    """All concepts by id, in file order."""
    raw = _load_yaml("concepts.yaml")["concepts"]
    return {
        cid: Concept(
            id=cid,
            name=c["name"],
            category=c["category"],
            synonyms=tuple(c.get("synonyms") or ()),
            scp=tuple(c.get("scp") or ()),
            snomed=tuple(str(s) for s in c.get("snomed") or ()),
            render=c.get("render"),
        )
        for cid, c in raw.items()
    }


def concepts_version() -> int:
    """Version of the concept vocabulary file (part of cache keys)."""
    return int(_load_yaml("concepts.yaml")["version"])


@lru_cache(maxsize=1)
def benchmark() -> dict:
    """The raw benchmark definition (tasks, classes, SCP statement facts)."""
    return _load_yaml("benchmark.yaml")


def task_names() -> list[str]:
    """The six zero-shot tasks in benchmark order."""
    return list(benchmark()["tasks"])


def task_dataset(task: str) -> str:
    """Downstream dataset a task is evaluated on (ptbxl, cpsc2018, csn)."""
    return benchmark()["tasks"][task]["dataset"]


def task_classes(task: str) -> list[BenchmarkClass]:
    """Classes of one task, in the order of the MERL test CSVs."""
    spec = benchmark()["tasks"][task]
    return [
        BenchmarkClass(
            task=task,
            name=name,
            description=c["description"],
            concepts=tuple(c.get("concepts") or ()),
            snomed=tuple(str(s) for s in c.get("snomed") or ()),
            members=tuple(c.get("members") or ()),
        )
        for name, c in spec["classes"].items()
    ]


def scp_statement_facts() -> dict[str, dict]:
    """SCP code -> {description, diagnostic, form, rhythm, diagnostic_class, diagnostic_subclass}."""
    return benchmark()["scp_statements"]
