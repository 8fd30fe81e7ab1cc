"""Integration fixtures: one Prefect test harness per session (temporary PREFECT_HOME), a tiny shop dataset."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import local_params, tiny_tables


@pytest.fixture(scope="session")
def prefect_harness():
    home = tempfile.mkdtemp(prefix="prefect-home-")
    os.environ["PREFECT_HOME"] = home
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield home


@pytest.fixture(scope="session")
def emb_cache(tmp_path_factory) -> Path:
    """One embedding cache for the session: each tiny catalogue is encoded once."""
    return tmp_path_factory.mktemp("emb-cache")


def shop_params(root: Path, emb_cache: Path, n_users: int = 30, n_items: int = 40, **extra: object) -> list[str]:
    """A small local dataset + a fast quantizer/recommender, loose absolute gates, MLflow under root."""
    items, inter = tiny_tables(n_users=n_users, n_items=n_items, per_user=6)
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    items.to_parquet(src / "items.parquet")
    inter.to_parquet(src / "events.parquet")
    defaults = {
        "embed.cache_dir": str(emb_cache),
        "quantizer.method": "rqkmeans", "quantizer.levels": 2, "quantizer.codebook_size": 8,
        "quantizer.distances": "[cosine, euclidean]", "quantizer.kmeans_iters": 10,
        "diagnose.mc_samples": 8,
        "gate.min_k_eff_ratio": 0.0, "gate.min_active_share": 0.0, "gate.max_duplicate_rate": 0.5,
        "gate.max_recon_ratio": 10.0, "gate.min_lift_over_popularity": -1.0,
        "recommend.epochs": 2, "recommend.patience": 1, "recommend.layers": 1, "recommend.negatives": 5,
        "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
    }
    defaults.update(extra)
    return local_params(root / "data", str(src / "items.parquet"), str(src / "events.parquet"), **defaults)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL 15 cluster on a free loopback port (trust auth); yields its base URL. Runs the
    server as the `postgres` user when the tests run as root (PostgreSQL refuses root)."""
    import shutil
    import subprocess

    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    as_user: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
        as_user = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="semid-pg-", dir="/tmp"))
    os.chmod(base, 0o755)
    data = base / "data"
    if as_user:
        shutil.chown(base, "postgres")
    port = free_port()

    def run(*cmd: str) -> None:
        proc = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"

    run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    run("pg_ctl", "-D", str(data), "-l", str(base / "server.log"), "-w", "-o",
        f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off", "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, "pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True,
                       timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def server_process(args: list[str], log: Path, health: str, timeout: float = 120, **popen):
    """A server started in its own session, logging to `log`; yields once `health` answers 200, and is stopped
    (SIGTERM, then SIGKILL) however the block ends. Fails with the log's tail if it dies or never answers."""
    import subprocess
    import time

    import httpx

    out = open(log, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                if httpx.get(health, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"{args[0]} did not answer {health}:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield proc
    finally:
        stop(proc)
        out.close()


def stop(proc) -> None:
    """SIGTERM to the process's session, SIGKILL after 30 s."""
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
