"""`mora compare` prints the param and metric differences of two runs, stages included."""

from __future__ import annotations

import pytest

from pipelines.cli import main
from pipelines.config import load_config
from pipelines.tracking import Tracker


@pytest.fixture
def two_runs(tmp_path, monkeypatch, tiny_config):
    monkeypatch.setenv("MORA_OUTPUT_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    region = load_config(tiny_config)
    runs = []
    for epochs, loss in ((2, 0.5), (3, 0.4)):
        with Tracker(region) as tracker:
            tracker._mlflow.log_params({"training.max_epochs": epochs, "name": "us_new_york"})
            tracker.log_metrics({"r2.mora.poverty_rate.linear.blocked": 0.1 * epochs})
            with tracker.stage("train"):
                tracker.log_metrics({"mora_best_val_loss": loss})
            runs.append(tracker.run_id)
    return runs


def test_compare_prints_diffs(two_runs, capsys):
    run_a, run_b = two_runs
    assert main(["compare", run_a, run_b]) == 0
    output = capsys.readouterr().out
    assert "params: 1 differ, 1 equal" in output
    assert "training.max_epochs  A=2  B=3" in output
    assert "train/mora_best_val_loss" in output
    assert "r2.mora.poverty_rate.linear.blocked" in output


def test_compare_unknown_run_fails(two_runs, capsys):
    assert main(["compare", two_runs[0], "0" * 32]) == 2


@pytest.fixture
def reused_run(tmp_path, monkeypatch, tiny_config):
    """Two runs: the first ingests zones and logs row counts, the second reuses its tables."""
    monkeypatch.setenv("MORA_OUTPUT_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    region = load_config(tiny_config)
    runs = []
    for counts in ({"rows_read.zones": 62.0, "rows_published.zones": 62.0}, {}):
        with Tracker(region) as tracker:
            with tracker.stage("zones"):
                tracker.log_metrics({"seconds": 1.0, **counts})
            with tracker.stage("train"):
                if counts:
                    tracker.log_metrics({"mora_best_val_loss": 0.5})
            runs.append(tracker.run_id)
    return runs


def test_compare_marks_reused_counts(reused_run, capsys):
    assert main(["compare", *reused_run]) == 0
    output = capsys.readouterr().out
    assert "nan" not in output
    [line] = [line for line in output.splitlines() if "zones/rows_read.zones" in line]
    assert line.split()[1:] == ["62", "reused", "reused"]
    [line] = [line for line in output.splitlines() if "train/mora_best_val_loss" in line]
    assert line.split()[1:] == ["0.5", "–", "–"]
    assert "reused: the stage kept its current tables in that run" in output
    assert "–: the run logged no such metric" in output


def test_compare_without_absent_metrics_has_no_footnote(two_runs, capsys):
    assert main(["compare", *two_runs]) == 0
    output = capsys.readouterr().out
    assert "reused" not in output
    assert "–" not in output
