"""The command line the rules call: argument wiring and clear failures."""

from __future__ import annotations

import socket

import pandas as pd
import pytest

from supreme_ecg import cli


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "manifest.parquet"
    pd.DataFrame({"record_id": ["1", "2"], "report": ["sinus rhythm. left axis deviation", "atrial fibrillation"]}
                 ).to_parquet(path)
    return path


def test_extract_stops_with_a_clear_message_when_the_server_is_down(manifest, tmp_path):
    host = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(SystemExit) as stop:
        cli.main(["extract", "--reports", str(manifest), "--out", str(tmp_path / "out"),
                  "--cache-dir", str(tmp_path / "cache"), "--backend", "ollama", "--model", "m:1b",
                  "--backend-options", f'{{"host": "{host}", "timeout_s": 2}}'])
    assert "ollama serve" in str(stop.value) and "ollama pull m:1b" in str(stop.value)
    assert not (tmp_path / "out" / "labels.parquet").exists()


def test_extract_fallback_rows_name_the_backend(manifest, tmp_path):
    host = f"http://127.0.0.1:{_closed_port()}"
    assert cli.main(["extract", "--reports", str(manifest), "--out", str(tmp_path / "out"),
                     "--cache-dir", str(tmp_path / "cache"), "--backend", "openai", "--min-label-count", "1", "--text-encoder", "none",
                     "--backend-options", f'{{"host": "{host}/v1", "model": "m", "fallback": "lexicon"}}']) == 0
    records = pd.read_parquet(tmp_path / "out" / "records.parquet")
    assert records["backend"].tolist() == ["lexicon", "lexicon"]
    assert "atrial_fibrillation" in pd.read_parquet(tmp_path / "out" / "labels.parquet").columns


def test_every_stage_has_a_subcommand():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"demo", "fetch", "index", "preprocess", "preprocess-summary", "extract", "labels",
            "pretrain", "zeroshot", "summarise"} <= set(commands)
