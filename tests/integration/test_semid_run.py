"""`semid run` as a user runs it, in a fresh process, output through a pipe:
- one notion of "up to date": an edit to library code in models/ makes the flow recompute the stages that run it
  and everything downstream, and nothing upstream (the same for `dvc repro` is in test_dvc_repro);
- output read from a pipe (a log file, CI) shows every diagnostics header and number in full."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.conftest import shop_params

pytestmark = pytest.mark.usefixtures("prefect_harness")

EDIT = ("centers, idx = fit(residual, k, distances[level], iters=iters, seed=seed + level)",
        "centers, idx = fit(residual, k, distances[level], iters=iters, seed=seed + level + 1)")


def _copy_package(dest: Path) -> Path:
    """The project's package as a plain folder dest/semid (flows/, tasks/, models/, cli.py)."""
    pkg = dest / "semid"
    for folder in ("flows", "tasks", "models"):
        shutil.copytree(REPO / folder, pkg / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "cli.py", pkg / "cli.py")
    return pkg


def _semid(pkg_parent: Path, command: list[str], sets: list[str], cwd: Path) -> str:
    """A `semid` command in a fresh process that imports semid from the copy, against the test's Prefect server;
    stdout is a pipe, as in a CI log or `semid run > out.txt`."""
    from prefect.settings import get_current_settings

    code = f"import sys; sys.path.insert(0, {str(pkg_parent)!r}); from semid.cli import app; app()"
    args = [sys.executable, "-c", code, *command, "--config", str(cwd / "none.yaml")]
    for s in sets:
        args += ["--set", s]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["PREFECT_API_URL"] = str(get_current_settings().api.url)
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)  # pipes
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _semid_run(pkg_parent: Path, sets: list[str], cwd: Path) -> dict:
    out = _semid(pkg_parent, ["run"], sets, cwd)
    return {**json.loads((cwd / "data" / "runs" / "shop.json").read_text()), "stdout": out}


HEADERS = ("lvl", "dist", "active", "ppl", "gini", "1/Σπ²", "K_eff", "K_eff/K", "K_gauss", "σ", "MSE")


def _assert_table_in_full(out: str) -> None:
    header = next(line for line in out.splitlines() if "lvl" in line and "dist" in line)
    assert [h for h in HEADERS if f" {h} " not in header] == [], header
    assert "…" not in out, out  # no cell cut short
    rows = [line for line in out.splitlines() if line.startswith("│ ") and ("cos" in line or "euc" in line)]
    assert rows and all(len([c for c in row.split("│") if c.strip()]) == len(HEADERS) for row in rows), rows


def test_flow_recomputes_from_the_edited_model_code(tmp_path, emb_cache):
    pkg = _copy_package(tmp_path / "code")
    sets = shop_params(tmp_path, emb_cache, **{"flow.train_recommender": "false", "gate.k_eff_tolerance": 1.0,
                                                "gate.duplicate_tolerance": 1.0})
    first = _semid_run(tmp_path / "code", sets, tmp_path)
    assert all(first["steps"][s] == "Completed" for s in ("ingest", "quantize", "gate-codebook"))
    _assert_table_in_full(first["stdout"])
    diagnose = _semid(tmp_path / "code", ["diagnose", "shop"], sets, tmp_path)
    _assert_table_in_full(diagnose)
    assert "duplicate rate" in diagnose
    ids = (tmp_path / "data" / "semantic" / "shop" / "ids.parquet").read_bytes()

    quantizer = pkg / "models" / "quantizer.py"
    source = quantizer.read_text()
    assert EDIT[0] in source
    quantizer.write_text(source.replace(*EDIT))  # a behaviour change in the residual k-means of models/
    edited = _semid_run(tmp_path / "code", sets, tmp_path)
    steps = edited["steps"]
    assert [s for s in ("ingest", "validate", "embed") if steps[s] != "Cached"] == [], steps
    assert [s for s in ("quantize", "diagnose", "register-codebook", "gate-codebook")
            if steps[s] != "Completed"] == [], steps
    assert (tmp_path / "data" / "semantic" / "shop" / "ids.parquet").read_bytes() != ids  # really recomputed
    assert edited["codebook"]["version"] != first["codebook"]["version"]
