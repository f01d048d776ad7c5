"""The `mora` command's option checks and the precedence of its output root."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.config import OUTPUT_ROOT_ENV

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "us_new_york_small.yaml"


def error_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def test_quarantine_of_region_never_run(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv(OUTPUT_ROOT_ENV, str(tmp_path / "env"))
    assert main(["quarantine", str(CONFIG), "--output-root", str(tmp_path / "flag")]) == 2
    [message] = error_lines(caplog)
    assert "no outputs at" in message
    assert str(tmp_path / "flag" / "us_new_york_small") in message
    assert "mora ingest" in message
    assert "no quarantined rows" not in capsys.readouterr().out


def test_quarantine_of_region_without_rejections(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(OUTPUT_ROOT_ENV, raising=False)
    (tmp_path / "us_new_york_small" / "tables").mkdir(parents=True)
    assert main(["quarantine", str(CONFIG), "--output-root", str(tmp_path)]) == 0
    assert "no quarantined rows" in capsys.readouterr().out


def test_output_root_flag_beats_environment(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(OUTPUT_ROOT_ENV, str(tmp_path / "env"))
    assert main(["quarantine", str(CONFIG)]) == 2
    assert str(tmp_path / "env" / "us_new_york_small") in error_lines(caplog)[0]
    caplog.clear()
    assert main(["quarantine", str(CONFIG), "--output-root", str(tmp_path / "flag")]) == 2
    assert str(tmp_path / "flag" / "us_new_york_small") in error_lines(caplog)[0]


@pytest.mark.parametrize(
    "value", ["2015-07-01T00:00+02:00", "2015-07-01 00:00", "20150701", "2015-7-1", "July"]
)
def test_ingest_start_must_be_a_day(value, tmp_path, caplog):
    argv = ["ingest", str(CONFIG), "--output-root", str(tmp_path), "--start", value]
    assert main(argv) == 2
    [message] = error_lines(caplog)
    assert repr(value) in message
    assert "YYYY-MM-DD" in message
    # Nothing ran: the check comes before the first stage.
    assert not (tmp_path / "us_new_york_small").exists()


def test_train_rejects_unknown_variant(tmp_path, caplog):
    argv = ["train", str(CONFIG), "--output-root", str(tmp_path), "--variant", "../escape"]
    assert main(argv) == 2
    [message] = error_lines(caplog)
    assert "'../escape'" in message
    assert "h3_adjacency" in message
