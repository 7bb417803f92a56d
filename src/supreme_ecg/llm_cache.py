"""Persistent answer cache of the extraction stage: SQLite in WAL mode, one row per key.

Each answer is committed on its own (autocommit), inserted with ``INSERT OR IGNORE`` under a busy
timeout, so several processes (Snakemake jobs) may share one cache file; the first answer for a key
wins. The cache knows nothing about extraction: a key is :func:`cache_key` of whatever identifies
an answer (backend, model, prompt version, schema version, vocabulary version, unit text), and
``put`` accepts any object with ``raw``, ``entities`` (dataclasses or dicts) and ``latency_s``.

Lookups also add to lifetime ``hits``/``misses`` counters stored in the file (table ``counters``).

CLI: ``python -m supreme_ecg.llm_cache [--cache PATH] stats`` prints the statistics as JSON (lifetime
hits and misses, rows per backend/model/prompt version, size on disk);
``python -m supreme_ecg.llm_cache [--cache PATH] export OUT.parquet`` dumps every row.
``--cache`` defaults to ``$SUPREME_LLM_CACHE``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

CACHE_ENV = "SUPREME_LLM_CACHE"
META_COLUMNS = ("unit", "backend", "model", "prompt_version")
_SELECT_CHUNK = 500
_EXPORT_CHUNK = 10_000
_CREATE = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    unit TEXT,
    backend TEXT,
    model TEXT,
    prompt_version TEXT,
    raw TEXT NOT NULL,
    entities TEXT NOT NULL,
    latency_s REAL,
    created_at REAL NOT NULL
) WITHOUT ROWID
"""
_CREATE_COUNTERS = "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID"
_COUNT = "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"
_COLUMNS = ("key", *META_COLUMNS, "raw", "entities", "latency_s", "created_at")
EXPORT_SCHEMA = pa.schema(
    [(c, pa.string()) for c in _COLUMNS[:-2]] + [("latency_s", pa.float64()), ("created_at", pa.float64())]
)


def cache_key(*parts: Any) -> str:
    """SHA-256 (hex) of the JSON list of ``parts`` (unambiguous: no separator collisions)."""
    return hashlib.sha256(json.dumps(list(parts), ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    """One stored answer; ``entities`` are plain dicts, ``created_at`` is Unix seconds."""

    raw: str
    entities: list[dict]
    latency_s: float | None
    created_at: float
    unit: str | None = None
    backend: str | None = None
    model: str | None = None
    prompt_version: str | None = None


def _entities_json(entities: Iterable) -> str:
    """JSON list of entity dicts (dataclasses are converted)."""
    return json.dumps([asdict(e) if is_dataclass(e) else dict(e) for e in entities], ensure_ascii=False)


class AnswerCache:
    """Answers by key in one SQLite file; hits and misses are counted for this session."""

    def __init__(self, path: str | os.PathLike, timeout_s: float = 60.0):
        """Open (create) the cache at ``path`` in WAL mode with a busy timeout."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        self._db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute(_CREATE)
        self._db.execute(_CREATE_COUNTERS)
        self.hits = 0
        self.misses = 0

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedAnswer]:
        """Stored answers of the distinct ``keys`` that are present (counts hits and misses)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, CachedAnswer] = {}
        for i in range(0, len(wanted), _SELECT_CHUNK):
            chunk = wanted[i : i + _SELECT_CHUNK]
            sql = f"SELECT {', '.join(_COLUMNS)} FROM answers WHERE key IN ({', '.join('?' * len(chunk))})"
            for row in self._db.execute(sql, chunk):
                found[row[0]] = _row_answer(row)
        self.hits += len(found)
        self.misses += len(wanted) - len(found)
        if wanted:  # lifetime totals, committed with each lookup (a killed run keeps its counts)
            self._db.executemany(_COUNT, [("hits", len(found)), ("misses", len(wanted) - len(found))])
        return found

    def put(self, key: str, answer: Any, **meta: str) -> bool:
        """Store ``answer`` under ``key`` (committed at once); False if the key was already there."""
        unknown = set(meta) - set(META_COLUMNS)
        if unknown:
            raise TypeError(f"unknown cache metadata {sorted(unknown)}; allowed: {META_COLUMNS}")
        values = (
            key,
            *(meta.get(c) for c in META_COLUMNS),
            answer.raw,
            _entities_json(answer.entities),
            answer.latency_s,
            time.time(),
        )
        sql = f"INSERT OR IGNORE INTO answers ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
        return self._db.execute(sql, values).rowcount == 1

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def stats(self) -> dict:
        """Session and lifetime hits/misses, rows (also per backend/model/prompt), bytes on disk, path."""
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        totals = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        groups = self._db.execute(
            "SELECT backend, model, prompt_version, COUNT(*), AVG(latency_s) FROM answers "
            "GROUP BY backend, model, prompt_version ORDER BY COUNT(*) DESC"
        ).fetchall()
        by_backend = [
            {"backend": b, "model": m, "prompt_version": p, "rows": n, "mean_latency_s": lat} for b, m, p, n, lat in groups
        ]
        return {"path": str(self.path), "hits": self.hits, "misses": self.misses, "rows": len(self), "file_bytes": size,
                "total_hits": totals.get("hits", 0), "total_misses": totals.get("misses", 0),
                "by_backend": by_backend}  # fmt: skip

    def export_parquet(self, path: str | os.PathLike) -> int:
        """Write every row to a Parquet file (entities as a JSON string); returns the row count."""
        cursor = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM answers ORDER BY created_at, key")
        n = 0
        with pq.ParquetWriter(path, EXPORT_SCHEMA) as writer:
            while rows := cursor.fetchmany(_EXPORT_CHUNK):
                writer.write_table(pa.Table.from_pylist([dict(zip(_COLUMNS, r)) for r in rows], EXPORT_SCHEMA))
                n += len(rows)
        return n


def _row_answer(row: tuple) -> CachedAnswer:
    """A ``SELECT _COLUMNS`` row as a :class:`CachedAnswer`."""
    d = dict(zip(_COLUMNS, row))
    return CachedAnswer(
        raw=d["raw"],
        entities=json.loads(d["entities"]),
        latency_s=d["latency_s"],
        created_at=d["created_at"],
        **{c: d[c] for c in META_COLUMNS},
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: ``stats`` prints JSON statistics, ``export PATH`` writes the rows to Parquet."""
    parser = argparse.ArgumentParser(prog="python -m supreme_ecg.llm_cache", description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=os.environ.get(CACHE_ENV), help=f"cache file (default ${CACHE_ENV})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("stats", help="print statistics as JSON")
    export = sub.add_parser("export", help="export all rows to Parquet")
    export.add_argument("path", help="output .parquet file")
    args = parser.parse_args(argv)
    if not args.cache or not Path(args.cache).exists():
        parser.error(f"no cache file: pass --cache or set ${CACHE_ENV} (got {args.cache!r})")
    with AnswerCache(args.cache) as cache:
        if args.command == "export":
            print(json.dumps({"exported": cache.export_parquet(args.path), "path": args.path}))
        else:
            print(json.dumps(cache.stats()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
