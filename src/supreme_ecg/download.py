"""Download stage: fetch PhysioNet projects and the MERL split CSVs, verified against SHA-256 sums.

Every file is written to ``<name>.part``, resumed with an HTTP ``Range`` request after a dropped
connection, hashed, and only then moved into place, so an interrupted run loses no completed file
and a file that fails its checksum is never used. Verification results are cached in
``dest/.supreme_verified.jsonl`` keyed by size and mtime, so a rerun does not re-hash the data.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import httpx
from tqdm import tqdm

PHYSIONET_BASE = "https://physionet.org/files/"
GITHUB_RAW_BASE = "https://raw.githubusercontent.com/"
MERL_REPO = "cheliu-computation/MERL-ICML2024"
MERL_COMMIT = "38799b7"
MERL_SUMS = Path(__file__).with_name("resources") / "merl_splits.sha256"
MANIFEST = "SHA256SUMS.txt"
REPORT_NAME = ".supreme_download.json"
STATE_NAME = ".supreme_verified.jsonl"
CHUNK = 1 << 20
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_SHA_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


class DownloadError(RuntimeError):
    """Some files could not be fetched and verified (or, for a local folder, are missing or bad)."""

    def __init__(self, message: str, report: DownloadReport | None = None):
        super().__init__(message)
        self.report = report


class _Fatal(Exception):
    """A non-retryable failure of one file (e.g. HTTP 404)."""


class _Retry(Exception):
    """A retryable failure of one attempt (5xx, dropped connection, time-out)."""


@dataclass(frozen=True)
class DatasetSource:
    """One PhysioNet project (or a sub-folder of one) and where its checksum manifest lives."""

    name: str
    slug: str
    version: str
    prefix: str | None = None
    base_url: str = PHYSIONET_BASE
    manifest: str = MANIFEST

    @property
    def url(self) -> str:
        """Root URL of the project version, ending in a slash."""
        return f"{self.base_url.rstrip('/')}/{self.slug}/{self.version}/"

    def with_base(self, base_url: str | None) -> DatasetSource:
        """The same project served from another base URL (a mirror or a test server)."""
        return dataclasses.replace(self, base_url=base_url) if base_url else self


PHYSIONET_SETS: dict[str, DatasetSource] = {
    "mimic": DatasetSource("mimic", "mimic-iv-ecg", "1.0"),
    "ptbxl": DatasetSource("ptbxl", "ptb-xl", "1.0.3"),
    "cpsc2018": DatasetSource("cpsc2018", "challenge-2020", "1.0.2", prefix="training/cpsc_2018/"),
    "csn": DatasetSource("csn", "ecg-arrhythmia", "1.0.0"),
}


def get_source(name: str, base_url: str | None = None, slug: str | None = None,
               version: str | None = None) -> DatasetSource:
    """The known source ``name`` with an optional base URL, slug or version override."""
    if name not in PHYSIONET_SETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(PHYSIONET_SETS)}")
    src = PHYSIONET_SETS[name].with_base(base_url)
    return dataclasses.replace(src, slug=slug or src.slug, version=version or src.version)


@dataclass
class DownloadReport:
    """What a fetch or verification did; written to ``dest/.supreme_download.json``."""

    dataset: str
    url: str
    dest: str
    files: int = 0
    bytes: int = 0
    verified: int = 0
    skipped: int = 0
    fetched: int = 0
    downloaded_bytes: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


@dataclass(frozen=True)
class _Item:
    """One file to fetch: local relative path, URL and expected SHA-256."""

    rel: str
    url: str
    sha256: str


# --------------------------------------------------------------------------- manifests


def parse_manifest(text: str) -> list[tuple[str, str]]:
    """``(sha256, relative path)`` pairs from SHA256SUMS text; rejects unsafe paths."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = _SHA_LINE.match(line.rstrip("\r"))
        if not m:
            raise ValueError(f"bad checksum line: {line[:120]!r}")
        out.append((m.group(1).lower(), _safe_rel(m.group(2))))
    return out


def _safe_rel(rel: str) -> str:
    """``rel`` if it is a plain relative POSIX path inside the destination, else ValueError."""
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts or "\\" in rel:
        raise ValueError(f"unsafe path in checksum manifest: {rel!r}")
    return p.as_posix()


def select_entries(entries: Iterable[tuple[str, str]], prefix: str | None = None,
                   include: Sequence[str] | None = None,
                   manifest: str = MANIFEST) -> list[tuple[str, str]]:
    """Entries under ``prefix`` matching any ``include`` glob (full path, sub-path or name)."""
    out = []
    for sha, rel in entries:
        if rel == manifest or (prefix and not rel.startswith(prefix)):
            continue
        if include and not _matches(rel, prefix, include):
            continue
        out.append((sha, rel))
    return out


def _matches(rel: str, prefix: str | None, patterns: Sequence[str]) -> bool:
    """Whether ``rel`` (or its part below ``prefix``, or its name) matches a glob."""
    names = {rel, rel.rsplit("/", 1)[-1], rel[len(prefix):] if prefix else rel}
    return any(fnmatch.fnmatchcase(n, pat) for n in names for pat in patterns)


# --------------------------------------------------------------------------- verification cache


def sha256_file(path: Path, chunk: int = CHUNK) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class _State:
    """Append-only cache ``path -> (size, mtime_ns, sha256)`` of files already verified."""

    def __init__(self, path: Path | None):
        self.path, self.lock, self.seen = path, threading.Lock(), {}
        if path is not None and path.is_file():
            self._load(path)

    def _load(self, path: Path) -> None:
        """Read the cache, ignoring a torn last line."""
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
                self.seen[rec["path"]] = (rec["size"], rec["mtime_ns"], rec["sha256"])
            except (ValueError, KeyError, TypeError):
                continue

    def is_verified(self, target: Path, rel: str, sha: str) -> bool:
        """Whether ``target`` is recorded as verified with this size, mtime and hash."""
        st = target.stat()
        return self.seen.get(rel) == (st.st_size, st.st_mtime_ns, sha)

    def record(self, target: Path, rel: str, sha: str) -> None:
        """Remember that ``target`` matched ``sha`` at its current size and mtime."""
        st = target.stat()
        with self.lock:
            self.seen[rel] = (st.st_size, st.st_mtime_ns, sha)
            if self.path is not None:
                line = {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(line) + "\n")


def _check_present(target: Path, rel: str, sha: str, state: _State) -> bool:
    """Whether ``target`` exists and matches ``sha`` (cached by size+mtime, else hashed)."""
    if not target.is_file():
        return False
    if state.is_verified(target, rel, sha):
        return True
    if sha256_file(target) == sha:
        state.record(target, rel, sha)
        return True
    return False


# --------------------------------------------------------------------------- progress


class _Progress:
    """Thread-safe byte progress bar; the total is estimated from the sizes seen so far."""

    def __init__(self, n_files: int, enabled: bool, desc: str, file=None):
        self.n_files, self.sizes, self.expected, self.lock = n_files, {}, 0, threading.Lock()
        self.bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                        disable=not enabled, file=file, dynamic_ncols=True)
        self.transferred = 0

    def expect(self, rel: str, size: int) -> None:
        """Set the expected size of ``rel`` (0 if unknown) and re-estimate the total."""
        with self.lock:
            self.expected += size - self.sizes.get(rel, 0)
            self.sizes[rel] = size
            mean = self.expected / max(1, len(self.sizes))
            self.bar.total = int(self.expected + mean * max(0, self.n_files - len(self.sizes)))
            self.bar.refresh()

    def update(self, n: int) -> None:
        """Count ``n`` bytes received."""
        with self.lock:
            self.transferred += n
            self.bar.update(n)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


def _show_progress(progress: bool) -> bool:
    """Whether to draw a bar: asked for and stderr is a terminal."""
    return bool(progress) and sys.stderr.isatty()


# --------------------------------------------------------------------------- one file


class _Fetcher:
    """Fetches files over one shared ``httpx.Client`` with retries, resume and verification."""

    def __init__(self, client: httpx.Client, dest: Path, state: _State, bar: _Progress,
                 retries: int, backoff: float):
        self.client, self.dest, self.state, self.bar = client, dest, state, bar
        self.retries, self.backoff = retries, backoff
        self.stop = threading.Event()

    def run(self, item: _Item) -> tuple[str, str | None]:
        """Make ``item`` present and verified; returns ``(status, error)``."""
        target = self.dest / item.rel
        if self.stop.is_set():
            return "failed", "interrupted"
        try:
            if _check_present(target, item.rel, item.sha256, self.state):
                return "skipped", None
            target.unlink(missing_ok=True)
            self._fetch(item, target)
            return "fetched", None
        except _Fatal as exc:
            return "failed", str(exc)
        except OSError as exc:
            return "failed", f"{type(exc).__name__}: {exc}"

    def _fetch(self, item: _Item, target: Path) -> None:
        """Download into ``.part`` until it verifies, then move it into place."""
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                digest = self._attempt(item, part)
            except _Retry as exc:
                last = str(exc)
                continue
            if digest == item.sha256:
                os.replace(part, target)
                self.state.record(target, item.rel, item.sha256)
                return
            part.unlink(missing_ok=True)
            last = f"checksum mismatch (got {digest[:12]}…, want {item.sha256[:12]}…)"
        raise _Fatal(f"gave up after {self.retries + 1} attempts: {last}")

    def _attempt(self, item: _Item, part: Path) -> str:
        """One request: resume or restart ``part``; returns the SHA-256 of the whole part."""
        have = part.stat().st_size if part.is_file() else 0
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with self.client.stream("GET", item.url, headers=headers) as resp:
                return self._receive(item, part, resp, have)
        except httpx.TransportError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from exc

    def _receive(self, item: _Item, part: Path, resp: httpx.Response, have: int) -> str:
        """Write the body of ``resp`` to ``part`` (appending on 206) and hash the result."""
        code = resp.status_code
        if code == 416 and have:
            return self._unsatisfiable(part)
        if code in RETRY_STATUS or code >= 500:
            raise _Retry(f"HTTP {code}")
        if code not in (200, 206):
            raise _Fatal(f"HTTP {code} {resp.reason_phrase}".strip())
        start = _range_start(resp) if code == 206 else 0
        h = _hash_prefix(part, start) if start else hashlib.sha256()
        length = int(resp.headers.get("Content-Length", 0) or 0)
        self.bar.expect(item.rel, start + length if length else 0)
        with open(part, "r+b" if start else "wb") as f:
            f.seek(start)
            f.truncate()
            for block in resp.iter_bytes():
                if self.stop.is_set():
                    raise _Fatal("interrupted")
                f.write(block)
                f.flush()
                h.update(block)
                self.bar.update(len(block))
        return h.hexdigest()

    def _unsatisfiable(self, part: Path) -> str:
        """HTTP 416 on resume: the part is already whole (or too long); hash it as it is."""
        return sha256_file(part)


def _range_start(resp: httpx.Response) -> int:
    """First byte offset of a 206 answer, from ``Content-Range: bytes N-M/T``."""
    m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
    if not m:
        raise _Retry("206 without a usable Content-Range")
    return int(m.group(1))


def _hash_prefix(part: Path, n: int):
    """A SHA-256 object fed with the first ``n`` bytes of ``part``; _Retry if it is shorter."""
    h = hashlib.sha256()
    with open(part, "rb") as f:
        left = n
        while left and (block := f.read(min(CHUNK, left))):
            h.update(block)
            left -= len(block)
    if left:
        part.unlink(missing_ok=True)
        raise _Retry("server resumed past the end of the partial file")
    return h


# --------------------------------------------------------------------------- runs


def _client(jobs: int, timeout: float) -> httpx.Client:
    """An HTTP client with ``jobs`` connections and the given time-out."""
    limits = httpx.Limits(max_connections=jobs, max_keepalive_connections=jobs)
    return httpx.Client(timeout=httpx.Timeout(timeout), limits=limits, follow_redirects=True,
                        headers={"User-Agent": "supreme-ecg-download/0.1"})


def _get_text(client: httpx.Client, url: str, retries: int, backoff: float) -> str:
    """GET a small text file with retries; DownloadError on a non-retryable status."""
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            resp = client.get(url)
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {exc}"
            continue
        if resp.status_code == 200:
            return resp.text
        last = f"HTTP {resp.status_code}"
        if resp.status_code not in RETRY_STATUS and resp.status_code < 500:
            break
    raise DownloadError(f"could not fetch {url}: {last}")


def _run_items(items: list[_Item], dest: Path, report: DownloadReport, client: httpx.Client,
               jobs: int, retries: int, backoff: float, progress: bool) -> DownloadReport:
    """Fetch ``items`` in a pool of ``jobs`` threads, fill ``report`` and write it."""
    t0 = time.monotonic()
    bar = _Progress(len(items), _show_progress(progress), report.dataset)
    fetcher = _Fetcher(client, dest, _State(dest / STATE_NAME), bar, retries, backoff)
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        for item, (status, err) in _bounded_map(pool, fetcher.run, items, 4 * max(1, jobs)):
            _tally(report, dest, item, status, err)
    except BaseException:
        fetcher.stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        report.downloaded_bytes += bar.transferred
        report.elapsed_s = round(report.elapsed_s + time.monotonic() - t0, 3)
    return _finish(report, dest)


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable,
                 window: int) -> Iterator[tuple]:
    """``(item, fn(item))`` in order, with at most ``window`` calls queued at a time."""
    pending: deque[tuple[object, Future]] = deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= window:
            done, fut = pending.popleft()
            yield done, fut.result()
    while pending:
        done, fut = pending.popleft()
        yield done, fut.result()


def _tally(report: DownloadReport, dest: Path, item: _Item, status: str, err: str | None) -> None:
    """Add one file's outcome to the report."""
    if err is not None:
        report.failures[item.rel] = err
        return
    report.verified += 1
    report.bytes += (dest / item.rel).stat().st_size
    report.skipped += status == "skipped"
    report.fetched += status == "fetched"


def _finish(report: DownloadReport, dest: Path) -> DownloadReport:
    """Write the report into ``dest`` and raise DownloadError if anything failed."""
    (dest / REPORT_NAME).write_text(report.to_json() + "\n", encoding="utf-8")
    if report.failures:
        raise DownloadError(_failure_message(report), report)
    return report


def _failure_message(report: DownloadReport, limit: int = 20) -> str:
    """A readable list of the failed files."""
    lines = [f"  {rel}: {why}" for rel, why in sorted(report.failures.items())[:limit]]
    more = len(report.failures) - limit
    if more > 0:
        lines.append(f"  … and {more} more (see {REPORT_NAME})")
    head = f"{report.dataset}: {len(report.failures)} of {report.files} files not fetched/verified"
    return "\n".join([head, *lines])


def fetch_dataset(source: DatasetSource, dest: str | os.PathLike, jobs: int = 4, retries: int = 5,
                  backoff: float = 0.5, timeout: float = 60, include: Sequence[str] | None = None,
                  progress: bool = True) -> DownloadReport:
    """Download and verify every file of ``source`` (under its prefix, matching ``include``)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with _client(jobs, timeout) as client:
        text = _get_text(client, source.url + source.manifest, retries, backoff)
        _write_atomic(dest / source.manifest, text)
        entries = select_entries(parse_manifest(text), source.prefix, include, source.manifest)
        items = [_Item(rel, source.url + rel, sha) for sha, rel in entries]
        report = DownloadReport(source.name, source.url, str(dest), files=len(items))
        return _run_items(items, dest, report, client, jobs, retries, backoff, progress)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def verify_local(source: DatasetSource, dest: str | os.PathLike,
                 include: Sequence[str] | None = None,
                 manifest: str | os.PathLike | None = None,
                 progress: bool = True) -> DownloadReport:
    """Check a folder the user already has against its manifest; never modifies the folder.

    The source's sub-folder prefix applies when the manifest lists paths under it (PhysioNet's
    project-wide SHA256SUMS); a manifest made in the folder itself (e.g. for the original CPSC2018
    release, which ships none) is used whole. A manifest that lists no file is an error.
    """
    dest = Path(dest)
    sums = Path(manifest) if manifest else dest / source.manifest
    if not sums.is_file():
        raise DownloadError(
            f"{source.name}: no checksum manifest at {sums}. For a copy that came without one, record "
            f"its sums once: cd {dest} && find . -type f ! -name '.supreme_*' ! -name {source.manifest} "
            f"-printf '%P\\0' | xargs -0 sha256sum > {source.manifest}")
    listed = parse_manifest(sums.read_text(encoding="utf-8"))
    prefix = source.prefix if source.prefix and any(rel.startswith(source.prefix) for _, rel in listed) else None
    entries = select_entries(listed, prefix, include, source.manifest)
    if not entries:
        raise DownloadError(f"{source.name}: {sums} lists no file to verify"
                            + (f" matching {list(include)}" if include else ""))
    report = DownloadReport(source.name, str(dest), str(dest), files=len(entries))
    t0 = time.monotonic()
    for sha, rel in tqdm(entries, desc=f"verify {source.name}", unit="file",
                         disable=not _show_progress(progress)):
        _verify_one(report, dest / rel, rel, sha)
    report.elapsed_s = round(time.monotonic() - t0, 3)
    if report.failures:
        raise DownloadError(_failure_message(report), report)
    return report


def _verify_one(report: DownloadReport, path: Path, rel: str, sha: str) -> None:
    """Add one local file's check to the report."""
    if not path.is_file():
        report.failures[rel] = "missing"
    elif sha256_file(path) != sha:
        report.failures[rel] = "checksum mismatch"
    else:
        report.verified += 1
        report.bytes += path.stat().st_size


# --------------------------------------------------------------------------- MERL splits


def merl_split_sums(path: Path = MERL_SUMS) -> list[tuple[str, str, str]]:
    """``(sha256, repo path, local name)`` for the pinned MERL split CSVs."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            sha, repo_path, local = line.split()
            out.append((sha, _safe_rel(repo_path), _safe_rel(local)))
    return out


def fetch_merl_splits(dest: str | os.PathLike, base_url: str = GITHUB_RAW_BASE,
                      repo: str = MERL_REPO, commit: str = MERL_COMMIT, jobs: int = 4,
                      retries: int = 5, backoff: float = 0.5, timeout: float = 60,
                      progress: bool = True) -> DownloadReport:
    """Download the MERL split CSVs at a pinned commit and verify them against pinned hashes."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = f"{base_url.rstrip('/')}/{repo}/{commit}/"
    items = [_Item(local, root + path, sha) for sha, path, local in merl_split_sums()]
    report = DownloadReport("merl_splits", root, str(dest), files=len(items))
    with _client(jobs, timeout) as client:
        return _run_items(items, dest, report, client, jobs, retries, backoff, progress)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    """Command-line arguments."""
    p = argparse.ArgumentParser(prog="python -m supreme_ecg.download", description=__doc__)
    p.add_argument("--dataset", required=True, choices=[*PHYSIONET_SETS, "merl"])
    p.add_argument("--dest", required=True, type=Path)
    p.add_argument("--source", choices=["physionet", "local"], default="physionet")
    p.add_argument("--base-url", default=None, help="PhysioNet files root (or raw GitHub root)")
    p.add_argument("--slug", default=None, help="override the PhysioNet project slug")
    p.add_argument("--version", default=None, help="override the PhysioNet project version")
    p.add_argument("--commit", default=MERL_COMMIT, help="MERL repository commit")
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--retries", type=int, default=5)
    p.add_argument("--backoff", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--include", nargs="+", action="extend", default=None, metavar="GLOB")
    p.add_argument("--no-progress", action="store_true")
    return p


def _run_cli(a: argparse.Namespace) -> DownloadReport:
    """Dispatch parsed arguments to the right function."""
    net = {"jobs": a.jobs, "retries": a.retries, "backoff": a.backoff, "timeout": a.timeout,
               "progress": not a.no_progress}
    if a.dataset == "merl":
        if a.source == "local":
            return _verify_merl_local(a.dest)
        return fetch_merl_splits(a.dest, base_url=a.base_url or GITHUB_RAW_BASE,
                                 commit=a.commit, **net)
    src = get_source(a.dataset, a.base_url, a.slug, a.version)
    if a.source == "local":
        return verify_local(src, a.dest, include=a.include, progress=not a.no_progress)
    return fetch_dataset(src, a.dest, include=a.include, **net)


def _verify_merl_local(dest: Path) -> DownloadReport:
    """Check a local folder of MERL split CSVs against the pinned hashes."""
    report = DownloadReport("merl_splits", str(dest), str(dest))
    sums = merl_split_sums()
    report.files = len(sums)
    for sha, _, local in sums:
        _verify_one(report, dest / local, local, sha)
    if report.failures:
        raise DownloadError(_failure_message(report), report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 on success, 1 if any file failed."""
    args = _parser().parse_args(argv)
    try:
        r = _run_cli(args)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{r.dataset}: {r.verified}/{r.files} files verified ({r.bytes} bytes; "
          f"{r.fetched} fetched, {r.skipped} already present)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
