"""The zero-shot benchmark definition (the demo's condition list lives in :mod:`supreme_ecg.demo.conditions`)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml


@dataclass(frozen=True)
class BenchmarkClass:
    """One class of a zero-shot task: its name, its text query and (cpsc2018, csn) its SNOMED codes.

    Nothing ties a class to a pre-training label; whether it was seen is measured by the zero-shot stage.
    """

    task: str
    name: str
    description: str
    snomed: tuple[str, ...] = ()


def _load_yaml(name: str) -> dict:
    return yaml.safe_load(resources.files("supreme_ecg.resources").joinpath(name).read_text("utf-8"))


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
            snomed=tuple(str(s) for s in c.get("snomed") or ()),
        )
        for name, c in spec["classes"].items()
    ]


def scp_statement_facts() -> dict[str, dict]:
    """SCP code -> {description, diagnostic, form, rhythm, diagnostic_class, diagnostic_subclass}."""
    return benchmark()["scp_statements"]
