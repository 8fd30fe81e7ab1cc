"""`semid schedule` against a real `prefect server` on a free loopback port: the cron deployment exists, a run
triggered through the REST API completes, and everything is shut down."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port, server_process, shop_params, stop


def _wait(predicate, timeout: float, what: str, proc_logs: list[Path]):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    logs = "\n".join(p.read_text()[-3000:] for p in proc_logs if p.exists())
    pytest.fail(f"timed out waiting for {what}\n{logs}")


def test_cron_deployment_runs_on_a_real_server(tmp_path, emb_cache):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    bin_dir = Path(sys.executable).parent
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    serve_out = open(serve_log, "w")  # noqa: SIM115 - closed in finally
    with server_process([str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                        server_log, f"{api}/health", env=env) as server:
        sets = shop_params(tmp_path, emb_cache, **{"recommend.epochs": 1})
        cmd = [str(bin_dir / "semid"), "schedule", "--cron", "0 3 * * 1", "--config", str(tmp_path / "none.yaml")]
        for s in sets:
            cmd += ["--set", s]
        serve = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=serve_out, stderr=subprocess.STDOUT,
                                 start_new_session=True)

        try:
            def deployment():
                r = httpx.post(f"{api}/deployments/filter", json={}, timeout=10)
                found = [d for d in r.json() if d["name"] == "semid-retrain-scheduled"]
                return found[0] if found else None

            dep = _wait(deployment, 120, "the deployment", [serve_log, server_log])
            crons = [s["schedule"].get("cron") for s in dep.get("schedules", [])]
            assert "0 3 * * 1" in crons
            def created():  # the served deployment can still be settling: retry until a run is created
                r = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={}, timeout=10)
                return r.json() if r.status_code in (200, 201) and "id" in r.json() else None

            run = _wait(created, 60, "a flow run of the deployment", [serve_log, server_log])

            def finished():
                state = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=10).json()["state"]
                return state if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None
            state = _wait(finished, 300, "the flow run", [serve_log, server_log])
            assert state["type"] == "COMPLETED", f"{state}\n{serve_log.read_text()[-3000:]}"
        finally:
            stop(serve)
            serve_out.close()
    assert server.poll() is not None
