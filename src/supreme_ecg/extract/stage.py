"""The extraction stage: a manifest of reports → entities → standardised labels, every answer cached.

:func:`extract_reports` streams the manifest (``record_id``, ``report``) in batches:

1. each report is split into normalised units (statements, or the whole report); every distinct unit
   is answered once — from memory, else from the persistent :class:`~supreme_ecg.llm_cache.AnswerCache`,
   else by the backend — and each answer is committed to the cache as soon as it exists;
2. entities are written as they come, with their surface form (:func:`standardise.normalise_surface`);
   per record, the surface forms present / uncertain go to a temporary file;
3. the distinct surface forms are merged into labels by the run's frozen text encoder
   (:func:`standardise.cluster_forms`); labels are the clusters present in ≥ ``min_label_count`` records;
4. a second pass over the temporary file writes the multi-hot ``labels.parquet``.

A record with a unit that no backend answered (quarantined, or the server failed) or without any
unit has *unknown* labels: every label it does not assert is -1 (masked in the loss), not 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from supreme_ecg.config_schema import schema_defaults
from supreme_ecg.extract import standardise
from supreme_ecg.extract.answers import ANSWER_SCHEMA, Answer, Entity, answer_from_cached
from supreme_ecg.extract.backends import ExtractionBackend, check_choice
from supreme_ecg.extract.statements import UNITS, Segmented, normalise_statement, segment_report
from supreme_ecg.llm_cache import AnswerCache, cache_key

log = logging.getLogger(__name__)

UNCERTAIN_POLICIES = ("positive", "negative", "ignore")
BACKEND_CHUNK = 256  # units per backend call: answers reach the cache in chunks
MEMO_SIZE = 200_000  # answers kept in memory between manifest batches
PROGRESS_EVERY_S = 5.0
SCHEMA_FINGERPRINT = hashlib.sha256(json.dumps(ANSWER_SCHEMA, sort_keys=True).encode()).hexdigest()
RANK = {"absent": 0, "uncertain": 1, "present": 2}
#: the config schema's ``extract`` defaults: the stage's keyword defaults
_DEFAULTS = schema_defaults("extract")


def unit_key(backend: ExtractionBackend, unit: str) -> str:
    """Cache key of a unit: backend, model, its identity (model digest + prompt hash, or rules version),
    the answer schema and the normalised unit text. Any change of these asks again; nothing else does."""
    identity = getattr(backend, "identity", "")
    return cache_key(backend.name, backend.model, backend.prompt_version, identity, SCHEMA_FINGERPRINT,
                     normalise_statement(unit))  # fmt: skip


class Progress:
    """Logs the stage's progress every ``every_s`` seconds: records, units asked, cache hits, rate, ETA."""

    def __init__(self, n_records: int, counts: Counter, every_s: float = PROGRESS_EVERY_S):
        self.n_records, self.counts, self.every_s = n_records, counts, every_s
        self.t0 = self.last = time.monotonic()
        self.records_done = 0

    def tick(self, force: bool = False) -> None:
        """Log a line if ``every_s`` passed since the last one (or ``force``)."""
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return
        self.last, elapsed, c = now, max(now - self.t0, 1e-9), self.counts
        rate = self.records_done / elapsed
        eta = (self.n_records - self.records_done) / rate if rate > 0 else float("nan")
        log.info("records %d/%d · units answered by the backend %d (%.1f/s) · cache hits %d · failed units %d · "
                 "elapsed %.0f s · ETA %.0f s", self.records_done, self.n_records, c["n_backend_units"],
                 c["n_backend_units"] / elapsed, c["n_cache_hits"], c["n_failed_units"], elapsed, eta)  # fmt: skip


class _Resolver:
    """Unit → answer: in-memory memo, then the persistent cache, then the backend (misses only)."""

    def __init__(self, backend: ExtractionBackend, cache: AnswerCache, counts: Counter, progress: Progress):
        self.backend, self.cache, self.counts, self.progress = backend, cache, counts, progress
        self.memo: dict[str, Answer] = {}
        self.failed: dict[str, str] = {}

    def resolve(self, units: Iterable[str]) -> dict[str, Answer | None]:
        """Answers for the distinct ``units`` (None where the backend failed in this run)."""
        units = list(dict.fromkeys(units))
        if len(self.memo) + len(units) > MEMO_SIZE:
            self.memo.clear()
        todo = [u for u in units if u not in self.memo and u not in self.failed]
        keys = {u: unit_key(self.backend, u) for u in todo}
        found = self.cache.get_many(keys.values())
        self.counts["n_cache_hits"] += len(found)
        for u in todo:
            if keys[u] in found:
                self.memo[u] = answer_from_cached(found[keys[u]])
        misses = [u for u in todo if keys[u] not in found]
        for i in range(0, len(misses), BACKEND_CHUNK):
            self._ask(misses[i : i + BACKEND_CHUNK], keys)
        return {u: self.memo.get(u) for u in units}

    def _ask(self, units: list[str], keys: dict[str, str]) -> None:
        """Send units to the backend once; commit each good answer as it arrives, remember failures."""
        self.counts.update(n_backend_calls=1)
        as_completed = getattr(self.backend, "extract_as_completed", None)
        if as_completed is not None:
            for i, a in as_completed(units):
                self._store(units[i], a, keys)
        else:
            answers = self.backend.extract(units)
            if len(answers) != len(units):
                raise RuntimeError(f"backend {self.backend.name} returned {len(answers)} answers for {len(units)} units")
            for u, a in zip(units, answers):
                self._store(u, a, keys)

    def _store(self, u: str, a: Answer, keys: dict[str, str]) -> None:
        """Commit a good answer to the cache at once; a failed one is remembered for quarantine."""
        self.counts["n_backend_units"] += 1
        if a.error is not None:
            self.failed[u] = a.error
        else:
            b = self.backend
            self.cache.put(keys[u], a, unit=u, backend=b.name, model=b.model, prompt_version=b.prompt_version)
            self.memo[u] = a
        self.counts["n_failed_units"] = len(self.failed)
        self.progress.tick()


ENTITY_STRINGS = ("unit", "text", "name", "surface_form", "polarity", "category")
ENTITY_TAIL = ("acuity", "severity", "backend", "model", "prompt_version")
RECORD_COUNTS = ("n_units", "n_entities", "n_failed", "n_empty", "n_noise")
UNKNOWN_REASONS = ("", "unanswered_units", "no_units")


def _entity_schema(id_type: pa.DataType) -> pa.Schema:
    """entities.parquet: one row per entity."""
    return pa.schema([("record_id", id_type), *((n, pa.string()) for n in ENTITY_STRINGS),
                      ("leads", pa.list_(pa.string())), *((n, pa.string()) for n in ENTITY_TAIL)])  # fmt: skip


def _record_schema(id_type: pa.DataType) -> pa.Schema:
    """records.parquet: one row per manifest record."""
    return pa.schema([("record_id", id_type), *((n, pa.int32()) for n in RECORD_COUNTS),
                      ("labels_unknown", pa.bool_()), ("unknown_reason", pa.string()), ("backend", pa.string())])  # fmt: skip


def _form_set_schema(id_type: pa.DataType) -> pa.Schema:
    """The temporary per-record surface-form sets between the passes."""
    return pa.schema([("record_id", id_type), ("present", pa.list_(pa.string())),
                      ("uncertain", pa.list_(pa.string())), ("unknown", pa.bool_())])  # fmt: skip


VOCABULARY_SCHEMA = pa.schema([
    ("label_index", pa.int32()), ("label", pa.string()), ("name", pa.string()), ("category", pa.string()),
    ("n_present", pa.int64()), ("n_uncertain", pa.int64()), ("n_records", pa.int64()),
    ("members", pa.list_(pa.struct([("surface_form", pa.string()), ("n_records", pa.int64())]))),
])  # fmt: skip
CLUSTER_SCHEMA = pa.schema([
    ("surface_form", pa.string()), ("label", pa.string()), ("cluster_name", pa.string()),
    ("similarity", pa.float32()), ("category", pa.string()), ("n_records", pa.int64()),
    ("n_present", pa.int64()), ("n_uncertain", pa.int64()), ("n_absent", pa.int64()),
])  # fmt: skip
QUARANTINE_COLUMNS = ("unit", "reason", "backend", "model", "prompt_version")
FORM_SETS = "_record_forms.tmp.parquet"
REPORTS_COPY = "_reports.tmp.parquet"


def _quarantine_schema(id_type: pa.DataType) -> pa.Schema:
    """quarantine.parquet: one row per unit the backend could not answer in this run."""
    return pa.schema([*((c, pa.string()) for c in QUARANTINE_COLUMNS), ("n_records", pa.int64()),
                      ("first_record_id", id_type)])  # fmt: skip


def _manifest_batches(manifest_path, batch_size: int) -> tuple[pa.DataType, int, Iterator[pa.RecordBatch]]:
    """Type of ``record_id``, number of rows, and an iterator of (record_id, report) batches."""
    pf = pq.ParquetFile(manifest_path)
    missing = {"record_id", "report"} - set(pf.schema_arrow.names)
    if missing:
        raise ValueError(f"manifest {manifest_path} lacks columns {sorted(missing)}")
    id_type = pf.schema_arrow.field("record_id").type
    return id_type, pf.metadata.num_rows, pf.iter_batches(batch_size=batch_size, columns=["record_id", "report"])


def _csv_to_parquet(csv_path, parquet_path: Path) -> Path:
    """Stream a reports CSV (``record_id``, ``report``, other columns ignored) into a Parquet file."""
    from pyarrow import csv

    options = csv.ConvertOptions(column_types={"report": pa.string()}, strings_can_be_null=True,
                                 include_columns=["record_id", "report"])  # fmt: skip
    try:
        reader = csv.open_csv(csv_path, convert_options=options)
    except (pa.ArrowInvalid, KeyError) as exc:
        raise ValueError(f"{csv_path}: needs columns record_id and report ({exc})") from None
    with pq.ParquetWriter(parquet_path, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
    return parquet_path


def record_form_sets(entities: Iterable[Entity], surface) -> tuple[list[str], list[str]]:
    """Sorted surface forms present, and uncertain (never present), in a record; absent ones drop out."""
    best: dict[str, int] = {}
    for e in entities:
        form = surface(e.name)
        best[form] = max(best.get(form, 0), RANK[e.polarity])
    return sorted(f for f, r in best.items() if r == 2), sorted(f for f, r in best.items() if r == 1)


class _FirstPass:
    """Per-batch bookkeeping of pass 1: entity rows, record rows, per-record form sets, form counts."""

    def __init__(self, out: Path, id_type: pa.DataType, backend: ExtractionBackend, counts: Counter):
        self.backend, self.counts, self.id_type = backend, counts, id_type
        self.schemas = _entity_schema(id_type), _record_schema(id_type), _form_set_schema(id_type)
        self.writers = [pq.ParquetWriter(out / name, schema)
                        for name, schema in zip(("entities.parquet", "records.parquet", FORM_SETS), self.schemas)]
        self.form_records: dict[str, Counter] = defaultdict(Counter)  # form -> polarity -> records
        self.form_category: dict[str, Counter] = defaultdict(Counter)  # form -> category -> mentions
        self.failed_records: Counter = Counter()  # failed unit -> records containing it
        self.failed_example: dict[str, object] = {}  # failed unit -> first record containing it
        self._surface = _memoised(standardise.normalise_surface)

    def close(self) -> None:
        """Close the three writers."""
        for w in self.writers:
            w.close()

    def add(self, ids: list, segments: list[Segmented], answers: dict[str, Answer | None]) -> None:
        """Account one manifest batch."""
        rows: tuple[list, list, list] = ([], [], [])
        for rid, seg in zip(ids, segments):
            self._add_record(rid, seg, answers, rows)
        for w, schema, r in zip(self.writers, self.schemas, rows):
            w.write_table(pa.Table.from_pylist(r, schema))

    def _add_record(self, rid, seg: Segmented, answers: dict, rows: tuple[list, list, list]) -> None:
        """Rows and counts of one record."""
        got = [answers[u] for u in seg.units]
        for u in dict.fromkeys(u for u, a in zip(seg.units, got) if a is None):
            self.failed_records[u] += 1
            self.failed_example.setdefault(u, rid)
        pairs = [(u, e) for u, a in zip(seg.units, got) if a is not None for e in a.entities]
        rows[0].extend(self._entity_row(rid, u, e) for u, e in pairs)
        n_failed = got.count(None)
        reason = "unanswered_units" if n_failed else "no_units" if not seg.units else ""
        n = {"n_units": len(seg.units), "n_entities": len(pairs), "n_failed": n_failed, "n_empty": seg.n_empty,
             "n_noise": seg.n_noise}  # fmt: skip
        rows[1].append({"record_id": rid, **n, "labels_unknown": bool(reason), "unknown_reason": reason,
                        "backend": self.backend.name})  # fmt: skip
        present, uncertain = record_form_sets((e for _, e in pairs), self._surface)
        rows[2].append({"record_id": rid, "present": present, "uncertain": uncertain, "unknown": bool(reason)})
        absent = {self._surface(e.name) for _, e in pairs} - set(present) - set(uncertain)
        for forms, polarity in ((present, "present"), (uncertain, "uncertain"), (absent, "absent")):
            for f in forms:
                self.form_records[f][polarity] += 1
        for _, e in pairs:
            self.form_category[self._surface(e.name)][e.category] += 1
        self.counts.update(n_records=1, n_records_unknown=int(bool(reason)), **n)

    def _entity_row(self, rid, unit: str, e: Entity) -> dict:
        """One row of entities.parquet."""
        b = self.backend
        return {"record_id": rid, "unit": unit, "text": e.text, "name": e.name, "surface_form": self._surface(e.name),
                "polarity": e.polarity, "category": e.category, "leads": list(e.leads), "acuity": e.acuity,
                "severity": e.severity, "backend": b.name, "model": b.model, "prompt_version": b.prompt_version}  # fmt: skip


def _memoised(fn):
    """``fn`` with an unbounded memo (its inputs are the few thousand distinct entity names)."""
    memo: dict = {}

    def call(x):
        if x not in memo:
            memo[x] = fn(x)
        return memo[x]

    return call


def _positives(polarities: Counter, uncertain_policy: str) -> int:
    """Records that count as positive for a form or label under the uncertain policy."""
    return polarities["present"] + (polarities["uncertain"] if uncertain_policy == "positive" else 0)


def _cluster(first: _FirstPass, encoder, threshold: float, uncertain_policy: str) -> dict[str, standardise.Assignment]:
    """Surface form → its cluster (every form seen, absent-only ones included)."""
    forms = sorted(first.form_records)
    n_records = [_positives(first.form_records[f], uncertain_policy) for f in forms]
    categories = [first.form_category[f].most_common(1)[0][0] for f in forms]
    assignments = standardise.cluster_forms(forms, n_records, categories, encoder, threshold)
    return {a.surface_form: a for a in assignments}


def _label_counts(form_sets: Path, cluster_of: dict) -> dict[str, Counter]:
    """Pass 2: cluster name → records in which it is present / uncertain (present wins)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for batch in pq.ParquetFile(form_sets).iter_batches(columns=["present", "uncertain"]):
        for present, uncertain in zip(*(batch.column(c).to_pylist() for c in ("present", "uncertain"))):
            p = {cluster_of[f].cluster_name for f in present}
            u = {cluster_of[f].cluster_name for f in uncertain} - p
            for name in p:
                counts[name]["present"] += 1
            for name in u:
                counts[name]["uncertain"] += 1
    return counts


def label_vocabulary(label_counts: dict[str, Counter], first: _FirstPass, cluster_of: dict,
                     uncertain_policy: str, min_label_count: int) -> pa.Table:  # fmt: skip
    """Clusters with ≥ ``min_label_count`` positive records, by descending count then name."""
    positives = {name: _positives(c, uncertain_policy) for name, c in label_counts.items()}
    kept = sorted((n for n, k in positives.items() if k >= max(min_label_count, 1)), key=lambda n: (-positives[n], n))
    ids = standardise.unique_label_ids(kept)
    members: dict[str, list] = defaultdict(list)
    category: dict[str, str] = {}
    for form, a in cluster_of.items():
        members[a.cluster_name].append({"surface_form": form, "n_records": _positives(first.form_records[form],
                                                                                     uncertain_policy)})  # fmt: skip
        if form == a.cluster_name:
            category[a.cluster_name] = first.form_category[form].most_common(1)[0][0]
    rows = [
        {"label_index": i, "label": lid, "name": name, "category": category[name],
         "n_present": label_counts[name]["present"], "n_uncertain": label_counts[name]["uncertain"],
         "n_records": positives[name],
         "members": sorted(members[name], key=lambda m: (-m["n_records"], m["surface_form"]))}
        for i, (lid, name) in enumerate(zip(ids, kept))
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, VOCABULARY_SCHEMA)


def _write_clusters(first: _FirstPass, cluster_of: dict, vocabulary: pa.Table, uncertain_policy: str, path) -> None:
    """entity_clusters.parquet: every surface form → its cluster, label (if kept) and similarity."""
    label_of = dict(zip(vocabulary.column("name").to_pylist(), vocabulary.column("label").to_pylist()))
    rows = []
    for form in sorted(cluster_of, key=lambda f: (cluster_of[f].cluster_name, -cluster_of[f].similarity, f)):
        a, c = cluster_of[form], first.form_records[form]
        rows.append({"surface_form": form, "label": label_of.get(a.cluster_name), "cluster_name": a.cluster_name,
                     "similarity": a.similarity, "category": first.form_category[form].most_common(1)[0][0],
                     "n_records": _positives(c, uncertain_policy), "n_present": c["present"],
                     "n_uncertain": c["uncertain"], "n_absent": c["absent"]})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, CLUSTER_SCHEMA), path)


def _write_labels(form_sets: Path, out: Path, vocabulary: pa.Table, cluster_of: dict, uncertain_policy: str) -> None:
    """Pass 3: int8 labels per record: 1 present; uncertain → 1, 0 or -1; unknown records -1 where not 1."""
    ids = vocabulary.column("label").to_pylist()
    index = {name: i for i, name in enumerate(vocabulary.column("name").to_pylist())}
    uncertain_value = {"positive": 1, "negative": 0, "ignore": -1}[uncertain_policy]
    source = pq.ParquetFile(form_sets)
    schema = pa.schema([source.schema_arrow.field("record_id")] + [(c, pa.int8()) for c in ids])

    def columns(forms: list[str]) -> list[int]:
        return [index[n] for n in {cluster_of[f].cluster_name for f in forms} if n in index]

    with pq.ParquetWriter(out, schema) as writer:
        for batch in source.iter_batches():
            sets = batch.to_pydict()
            matrix = np.zeros((batch.num_rows, len(ids)), dtype=np.int8)
            matrix[np.asarray(sets["unknown"], dtype=bool)] = -1
            for r, (present, uncertain) in enumerate(zip(sets["present"], sets["uncertain"])):
                matrix[r, columns(uncertain)] = uncertain_value
                matrix[r, columns(present)] = 1
            arrays = [batch.column("record_id")] + [pa.array(matrix[:, j]) for j in range(len(ids))]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))


def _write_quarantine(first: _FirstPass, failed: dict[str, str], backend: ExtractionBackend, path: Path) -> None:
    """Units without an answer (reason, backend, how many records they leave unknown); schema even if empty."""
    rows = [
        {"unit": u, "reason": reason, "backend": backend.name, "model": backend.model,
         "prompt_version": backend.prompt_version, "n_records": first.failed_records[u],
         "first_record_id": first.failed_example.get(u)}
        for u, reason in sorted(failed.items(), key=lambda kv: (-first.failed_records[kv[0]], kv[0]))
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, _quarantine_schema(first.id_type)), path)


def extract_reports(manifest_path, out_dir, backend: ExtractionBackend, cache_path, unit: str = _DEFAULTS["unit"],
                    uncertain_policy: str = _DEFAULTS["uncertain_policy"],
                    min_label_count: int = _DEFAULTS["min_label_count"], batch_size: int = 1000,
                    text_encoder=None, merge_threshold: float | None = None) -> dict:  # fmt: skip
    """Run the stage on reports (Parquet or CSV with ``record_id``, ``report``); write its tables to ``out_dir``.

    Tables: entities, records, entity_clusters, label_vocabulary, labels, quarantine. ``text_encoder``
    (a :class:`~supreme_ecg.model.TextEncoder`, a name, or None for exact and word-order merging only)
    merges surface forms whose cosine similarity reaches ``merge_threshold`` (default
    :data:`standardise.DEFAULT_MERGE_THRESHOLD`). Returns counts, which include the
    backend's request statistics (``llm_requests``, ``llm_retries``, …) when it keeps them.
    """
    check_choice("unit", unit, UNITS)
    check_choice("uncertain_policy", uncertain_policy, UNCERTAIN_POLICIES)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if merge_threshold is None:
        merge_threshold = standardise.DEFAULT_MERGE_THRESHOLD
    if str(manifest_path).lower().endswith(".csv"):
        manifest_path = _csv_to_parquet(manifest_path, out / REPORTS_COPY)
    counts: Counter = Counter(n_backend_calls=0, n_backend_units=0, n_cache_hits=0, n_failed_units=0,
                              n_records_unknown=0)  # fmt: skip
    id_type, n_rows, batches = _manifest_batches(manifest_path, batch_size)
    progress = Progress(n_rows, counts)
    stats_before = Counter(getattr(backend, "stats", None) or {})
    log.info("extracting %d reports with backend %s (model %s)", n_rows, backend.name, backend.model)
    with AnswerCache(cache_path) as cache:
        resolver = _Resolver(backend, cache, counts, progress)
        first = _FirstPass(out, id_type, backend, counts)
        try:
            for batch in batches:
                segments = [segment_report(r, unit) for r in batch.column("report").to_pylist()]
                answers = resolver.resolve(u for s in segments for u in s.units)
                first.add(batch.column("record_id").to_pylist(), segments, answers)
                progress.records_done += batch.num_rows
                progress.tick()
        finally:
            first.close()
    progress.tick(force=True)
    stats = Counter(getattr(backend, "stats", None) or {})
    stats.subtract(stats_before)
    counts.update({f"llm_{k}": v for k, v in stats.items() if v})
    _write_quarantine(first, resolver.failed, backend, out / "quarantine.parquet")
    encoder = _encoder(text_encoder)
    cluster_of = _cluster(first, encoder, merge_threshold, uncertain_policy)
    label_counts = _label_counts(out / FORM_SETS, cluster_of)
    vocabulary = label_vocabulary(label_counts, first, cluster_of, uncertain_policy, min_label_count)
    pq.write_table(vocabulary, out / "label_vocabulary.parquet")
    _write_clusters(first, cluster_of, vocabulary, uncertain_policy, out / "entity_clusters.parquet")
    _write_labels(out / FORM_SETS, out / "labels.parquet", vocabulary, cluster_of, uncertain_policy)
    (out / FORM_SETS).unlink()
    (out / REPORTS_COPY).unlink(missing_ok=True)
    return {**counts, "n_surface_forms": len(cluster_of), "n_clusters": len(label_counts),
            "n_labels": vocabulary.num_rows, "text_encoder": getattr(encoder, "name", None)}  # fmt: skip


def _encoder(text_encoder):
    """A text encoder from a name (loaded), an encoder (as is) or None."""
    if text_encoder is None or not isinstance(text_encoder, str):
        return text_encoder
    from supreme_ecg.model import TextEncoder

    return TextEncoder(text_encoder)
