"""User-fixable CLI errors print one message naming the problem and the fix (no traceback)."""

from __future__ import annotations

from typer.testing import CliRunner

from semid.cli import app

runner = CliRunner()


def test_unknown_model_is_one_clear_message(tmp_path):
    res = runner.invoke(app, ["train", "ml-100k", "--model", "ple", "--set", f"data.root={tmp_path}"])
    assert res.exit_code == 1
    assert "Unknown model 'ple'" in res.output and "Traceback" not in res.output


def test_evaluate_before_training_names_the_fix(tmp_path):
    res = runner.invoke(app, ["evaluate", "ml-100k", "--set", f"data.root={tmp_path}"])
    assert res.exit_code == 1
    assert "No trained recommender" in res.output and "semid train ml-100k" in res.output


def test_gate_without_diagnostics_names_the_fix(tmp_path):
    res = runner.invoke(app, ["gate", "ml-100k", "--set", f"data.root={tmp_path}"])
    assert res.exit_code == 1 and "semid diagnose ml-100k" in res.output


def test_schedule_without_server_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    res = runner.invoke(app, ["schedule", "--cron", "0 3 * * 1", "--set", f"data.root={tmp_path}"])
    assert res.exit_code == 1 and "prefect server start" in res.output
