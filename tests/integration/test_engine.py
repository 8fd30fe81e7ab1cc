"""The scale-out engine: one shard plan gives the same bytes on the thread runner and on Dask (a LocalCluster the
flow starts, and real `dask scheduler` / `dask worker` processes on loopback), and a run survives a Dask worker
SIGKILLed during embedding with the same embeddings and IDs. Every run encodes into its own empty text cache, so
no run reads another's vectors."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import free_port

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

BIN = Path(sys.executable).parent
QUICK = ["quantizer.method=rqkmeans", "quantizer.kmeans_iters=20", "diagnose.mc_samples=8", "flow.workers=2",
         "flow.threads_per_task=1"]
OUTPUTS = ("features/{n}/embeddings.npy", "semantic/{n}/codes.npy", "semantic/{n}/ids.parquet",
           "semantic/{n}/diagnostics.json")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hashes(root: Path, name: str) -> dict[str, str]:
    return {rel: _sha(root / rel.format(n=name)) for rel in OUTPUTS}


def _sets(root: Path, name: str, extra: list[str]) -> list[str]:
    return [f"data.root={root / 'data'}", f"embed.cache_dir={root / 'cache'}", f"data.dataset={name}", *QUICK,
            *extra]


def _prepare(root: Path, name: str, extra: list[str]) -> dict[str, str]:
    """The data steps up to diagnose, on the configured engine, in this process."""
    from semid.flows.engine import on_engine
    from semid.flows.retrain import prepare
    from semid.tasks.config import load_config

    sets = _sets(root, name, extra)
    out = on_engine(prepare, load_config(root / "none.yaml", sets))(config=str(root / "none.yaml"), overrides=sets)
    assert out["steps"]["embed"] == "Completed"
    return _hashes(root / "data", name)


class DaskCluster:
    """`dask scheduler` + `dask worker` processes (1 thread, no nanny: a killed worker stays dead) on 127.0.0.1."""

    def __init__(self, workers: int, logs: Path):
        self.address = f"tcp://127.0.0.1:{free_port()}"
        logs.mkdir(parents=True, exist_ok=True)
        self.scheduler = self._start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                                      self.address.rsplit(":", 1)[1], "--no-dashboard"], logs / "scheduler.log")
        self._wait(0)
        self.workers = [self._start([str(BIN / "dask"), "worker", self.address, "--nthreads", "1", "--no-nanny",
                                     "--no-dashboard"], logs / f"worker-{i}.log") for i in range(workers)]
        self._wait(workers)

    @staticmethod
    def _start(cmd: list[str], log: Path) -> subprocess.Popen:
        # its own session: close() then reaches what the process started, e.g. the temporary Prefect server of a
        # worker that was SIGKILLed (which would otherwise outlive the test)
        return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ},
                                start_new_session=True)

    def _wait(self, n: int, timeout: float = 120) -> None:
        from distributed import Client

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with Client(self.address, timeout=5, set_as_default=False) as client:
                    if n:
                        client.wait_for_workers(n, timeout=max(1, deadline - time.time()))
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"dask cluster at {self.address} did not get {n} workers")

    def close(self) -> None:
        """SIGTERM to each process's session, then SIGKILL to whatever is left in it (the temporary Prefect server
        of a worker that was SIGKILLed has no parent left to stop it)."""
        procs = [*self.workers, self.scheduler]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = DaskCluster(2, tmp_path_factory.mktemp("dask-logs"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def ml100k_local(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """ml-100k on the thread runner, 17 shards of 100 items: the reference bytes."""
    root = tmp_path_factory.mktemp("ml100k-local")
    return root, _prepare(root, "ml-100k", ["embed.shard_size=100", "flow.task_runner=local"])


def test_flow_called_without_its_configured_runner_fails(tmp_path):
    from semid.flows.retrain import prepare
    from semid.tasks.errors import PipelineError

    with pytest.raises(PipelineError, match="flow.task_runner is dask but this flow run's task runner is "
                                            "ThreadPoolTaskRunner"):
        prepare(config=str(tmp_path / "none.yaml"), overrides=[f"data.root={tmp_path}", "flow.task_runner=dask"])
    assert not any(tmp_path.iterdir())  # no step ran


def test_local_cluster_gives_the_thread_runners_bytes(tmp_path, ml100k_local):
    _, expected = ml100k_local
    got = _prepare(tmp_path, "ml-100k", ["embed.shard_size=100", "flow.task_runner=dask"])
    assert got == expected


def test_dask_cluster_gives_the_thread_runners_bytes_on_a_scientific_slice(tmp_path, shared_mirror, cluster):
    extra = [f"data.mirror={shared_mirror}", "embed.max_items=300", "embed.shard_size=100",
             "quantizer.codebook_size=32"]
    local = _prepare(tmp_path / "local", "amazon-scientific", [*extra, "flow.task_runner=local"])
    dask = _prepare(tmp_path / "dask", "amazon-scientific",
                    [*extra, "flow.task_runner=dask", f"flow.dask_address={cluster.address}"])
    assert dask == local


def test_run_survives_a_worker_killed_during_embedding(tmp_path, ml100k_local):
    """`semid prepare` against a real scheduler with two workers; once the first shard files are written, one
    worker is SIGKILLed; the run completes on the other with the thread runner's embeddings and IDs."""
    _, expected = ml100k_local
    cluster = DaskCluster(2, tmp_path / "logs")
    try:
        sets = _sets(tmp_path, "ml-100k", ["embed.shard_size=100", "flow.task_runner=dask",
                                           f"flow.dask_address={cluster.address}"])
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}  # its own (ephemeral) Prefect server
        env.pop("PREFECT_API_URL", None)
        run = subprocess.Popen([str(BIN / "semid"), "prepare", "ml-100k", *(a for s in sets for a in ("--set", s))],
                               cwd=tmp_path, env=env, stdout=(tmp_path / "run.log").open("w"),
                               stderr=subprocess.STDOUT)
        shards = tmp_path / "data" / "shards" / "embed" / "ml-100k"
        deadline = time.time() + 300
        while len(list(shards.rglob("shard-*.npy"))) < 1 and run.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        done_before_kill = len(list(shards.rglob("shard-*.npy")))
        assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        cluster.workers[0].send_signal(signal.SIGKILL)
        assert cluster.workers[0].wait(timeout=10) == -signal.SIGKILL
        assert 1 <= done_before_kill < 17 and not (tmp_path / "data" / "features" / "ml-100k").exists()
        assert run.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        cluster.close()
    assert _hashes(tmp_path / "data", "ml-100k") == expected
