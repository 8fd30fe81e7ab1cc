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
         ("register", "mlflow", None), ("recommend", "semid.tasks.layout", "recommend")]


def _aliases(client: MlflowClient, model: str) -> dict[str, str]:
    try:
        return dict(client.get_registered_model(model).aliases)
    except Exception:  # noqa: BLE001 - not registered yet
        return {}


def test_killed_in_each_step_then_rerun(tmp_path, emb_cache):
    """SIGKILL in the middle of each step in turn (its output written into staging, not yet swapped in; for
    register, right after the version is registered); every rerun resumes: the steps before are cached, the
    killed one completes. After each kill no step folder is half-written and no champion alias points at an
    unfinished version; the last run promotes the pair."""
    sets = shop_params(tmp_path, emb_cache)
    data = tmp_path / "data"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    for step, module, folder in STEPS:
        inject = KILL_AFTER_REGISTER if step == "register" else KILL_IN_STAGING
        killed = _run(tmp_path, sets, inject, module)
        assert killed.returncode == -signal.SIGKILL, (step, killed.stdout[-2000:] + killed.stderr[-2000:])
        if folder is not None:  # the half-written output never replaced the step's folder
            assert not (data / folder / "shop").exists(), step
        assert "champion" not in _aliases(client, CB) and "champion" not in _aliases(client, REC), step
        for model in (CB, REC):
            for version in _aliases(client, model).values():  # only a gated codebook may wait as challenger
                assert client.get_model_version(model, version).tags.get("gate") == "passed", (step, model)
    again = _run(tmp_path, sets)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    leftovers = [str(p) for p in data.rglob(".*") if p.is_dir() and "-" in p.name]
    assert leftovers == [], leftovers
    summary = json.loads((data / "runs" / "shop.json").read_text())
    assert summary["codebook"]["promoted"] and summary["recommender"]["promoted"]
    assert [s for s in ("ingest", "validate", "embed", "quantize", "diagnose") if summary["steps"][s] != "Cached"] == []
    for model in (CB, REC):
        aliases = _aliases(client, model)
        assert set(aliases) == {"champion"}, (model, aliases)
        assert client.get_model_version(model, aliases["champion"]).tags["gate"] == "passed"


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


def test_prefect_server_too_slow_to_start_is_one_clear_error(tmp_path, emb_cache):
    """No PREFECT_API_URL: the run starts Prefect's temporary server; when it does not answer in time (here 1 s for a
    first start with a new database) the user gets the fixes, not a traceback, and no step has run."""
    sets = shop_params(tmp_path, emb_cache)
    code = "from semid.cli import app\napp()\n"
    args = [sys.executable, "-c", code, "run", "--config", str(tmp_path / "none.yaml")]
    for s in sets:
        args += ["--set", s]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "did not start within" in out.stdout and "PREFECT_API_URL" in out.stdout, out.stdout[-3000:]
    assert "Traceback" not in out.stdout + out.stderr, (out.stdout + out.stderr)[-3000:]
    assert not (tmp_path / "data" / "raw").exists()


def test_the_cli_gives_prefect_time_for_a_first_start(monkeypatch):
    from semid.flows.engine import EPHEMERAL_TIMEOUT, quiet_prefect

    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    quiet_prefect()
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == EPHEMERAL_TIMEOUT
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "7")  # the user's value wins
    quiet_prefect()
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "7"


@pytest.mark.parametrize(("override", "says"), [({"data.min_user_interactions": 1000}, "Validation of 'shop' failed"),
                                                ({"gate.max_recon_ratio": 1e-9}, "gate failed")])
def test_an_error_inside_the_flow_is_one_message_without_a_traceback(tmp_path, emb_cache, override, says):
    """A user's error raised inside a task (bad data) or a failed gate: the CLI prints it once; Prefect's console
    does not repeat it with the task's and the flow's tracebacks (stderr included)."""
    out = _run(tmp_path, shop_params(tmp_path, emb_cache, **override))
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert says in out.stdout, out.stdout[-3000:]
    assert "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]
