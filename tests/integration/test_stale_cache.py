"""One notion of "up to date": an edit to library code in models/ makes the flow recompute the stages that run
it and everything downstream, and nothing upstream (the same for `dvc repro` is in test_dvc_repro)."""

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

EDIT = ("centers, idx = kmeans(residual, k, distances[level], iters=iters, seed=seed + level)",
        "centers, idx = kmeans(residual, k, distances[level], iters=iters, seed=seed + level + 1)")


def _copy_package(dest: Path) -> Path:
    """The project's package as a plain folder dest/semid (flows/, tasks/, models/, cli.py)."""
    pkg = dest / "semid"
    for folder in ("flows", "tasks", "models"):
        shutil.copytree(REPO / folder, pkg / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "cli.py", pkg / "cli.py")
    return pkg


def _semid_run(pkg_parent: Path, sets: list[str], cwd: Path) -> dict:
    """`semid run` in a fresh process that imports semid from the copy, against the test's Prefect server."""
    from prefect.settings import get_current_settings

    code = f"import sys; sys.path.insert(0, {str(pkg_parent)!r}); from semid.cli import app; app()"
    args = [sys.executable, "-c", code, "run", "--config", str(cwd / "none.yaml")]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((cwd / "data" / "runs" / "shop.json").read_text())


def test_flow_recomputes_from_the_edited_model_code(tmp_path, emb_cache):
    pkg = _copy_package(tmp_path / "code")
    sets = shop_params(tmp_path, emb_cache, **{"flow.train_recommender": "false", "gate.k_eff_tolerance": 1.0,
                                                "gate.duplicate_tolerance": 1.0})
    first = _semid_run(tmp_path / "code", sets, tmp_path)
    assert all(first["steps"][s] == "Completed" for s in ("ingest", "quantize", "gate-codebook"))
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
