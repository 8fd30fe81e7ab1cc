"""Fault matrix: the flow killed with SIGKILL in the middle of a step, the tracking store down, a registered
artefact tampered with. Each ends with a clear message or a clean rerun: no partial outputs, no alias on an
unfinished version, the champion unchanged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import shop_params

pytestmark = pytest.mark.usefixtures("prefect_harness")
CB, REC = "semid-codebook-shop", "semid-recommender-shop"

# In the child process: the step's output folder is written in full into its staging folder, then the process is
# killed before the swap (or, for register, right after the new version is registered, before its gate).
KILL_IN_STAGING = """
import contextlib, os, signal, sys
import semid.tasks.fsutil as fsutil
module = __import__(sys.argv[1], fromlist=["x"])
real = fsutil.staged_dir
@contextlib.contextmanager
def killed(target):
    with real(target) as staging:
        yield staging
        os.kill(os.getpid(), signal.SIGKILL)
module.staged_dir = killed
"""
KILL_AFTER_REGISTER = """
import os, signal, sys
import mlflow
real = mlflow.register_model
def killed(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
mlflow.register_model = killed
"""


def _run(cwd: Path, sets: list[str], inject: str = "", target: str = "") -> subprocess.CompletedProcess:
    from prefect.settings import get_current_settings

    code = inject + "\nsys.argv = [sys.argv[0], *sys.argv[2:]]\nfrom semid.cli import app\napp()\n"
    args = [sys.executable, "-c", "import sys\n" + code, target, "run", "--config", str(cwd / "none.yaml")]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


STEPS = [("ingest", "semid.tasks.ingest", "raw"), ("validate", "semid.tasks.validate", "processed"),
         ("embed", "semid.tasks.embed", "features"), ("quantize", "semid.tasks.quantize", "semantic"),
         ("recommend", "semid.tasks.layout", "recommend"), ("register", "mlflow", None)]


@pytest.mark.parametrize("step, module, folder", STEPS, ids=[s[0] for s in STEPS])
def test_killed_during_a_step_then_rerun(tmp_path, emb_cache, step, module, folder):
    sets = shop_params(tmp_path, emb_cache)
    inject = KILL_AFTER_REGISTER if step == "register" else KILL_IN_STAGING
    killed = _run(tmp_path, sets, inject, module)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    data = tmp_path / "data"
    if folder is not None:  # the half-written output never replaced the step's folder
        assert not (data / folder / "shop").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    for model in (CB, REC):
        for mv in client.search_model_versions(f"name='{model}'"):
            assert not mv.aliases, f"{model} v{mv.version} has {mv.aliases} though no run finished"
    again = _run(tmp_path, sets)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    leftovers = [str(p) for p in data.rglob(".*") if p.is_dir() and p.name.startswith(".") and "-" in p.name]
    assert leftovers == [], leftovers
    summary = json.loads((data / "runs" / "shop.json").read_text())
    assert summary["codebook"]["promoted"] and summary["recommender"]["promoted"]
    for model in (CB, REC):
        champion = client.get_model_version_by_alias(model, "champion")
        assert champion.tags["gate"] == "passed"
        for mv in client.search_model_versions(f"name='{model}'"):  # an orphan from the kill has no alias
            assert not mv.aliases or mv.tags.get("gate") == "passed"


def test_tracking_store_unreachable_is_one_clear_error(tmp_path, emb_cache):
    sets = shop_params(tmp_path, emb_cache, **{"mlflow.tracking_uri": "http://127.0.0.1:9",
                                               "mlflow.lock_url": "postgresql+psycopg://x@127.0.0.1:9/mlflow"})
    out = _run(tmp_path, sets)
    assert out.returncode == 1
    assert "tracking store http://127.0.0.1:9 is unreachable" in out.stdout, out.stdout[-3000:]
    assert "Traceback" not in out.stdout


def test_a_tampered_champion_artefact_is_named_and_nothing_moves(tmp_path, emb_cache):
    sets = shop_params(tmp_path, emb_cache)
    assert _run(tmp_path, sets).returncode == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(CB, "champion")
    for weights in (tmp_path / "mlflow" / "artifacts").rglob("quantizer.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])  # truncated in the registry's artefact store
    out = _run(tmp_path, sets + ["flow.mode=incremental"])
    assert out.returncode == 1
    assert "quantizer.safetensors" in out.stdout and "Traceback" not in out.stdout, out.stdout[-3000:]
    assert client.get_model_version_by_alias(CB, "champion").version == champion.version
