"""`semid serve` on a dataset's champion: MLflow's scoring server in its own process, a real HTTP client."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port, server_process, shop_params

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_semid_serve_answers_over_http(tmp_path, emb_cache):
    from semid.flows.retrain import retrain

    sets = shop_params(tmp_path, emb_cache)
    retrain(config=str(tmp_path / "none.yaml"), overrides=sets)
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "semid"), "serve", "shop", "--port", str(port),
           "--config", str(tmp_path / "none.yaml")]
    for s in sets:
        cmd += ["--set", s]
    url = f"http://127.0.0.1:{port}"
    with server_process(cmd, tmp_path / "serve.log", f"{url}/ping", cwd=tmp_path):
        rows = [{"history": ["i1", "i2", "i3"], "k": 4}, {"history": ["i5", "nope"], "k": 2},
                {"history": [], "k": 3}, {"history": ["i1", "i2", "i3"], "k": 40, "mask_history": False}]
        r = httpx.post(f"{url}/invocations", json={"dataframe_records": rows}, timeout=30)
        assert r.status_code == 200, r.text
        out = r.json()["predictions"]
        assert [len(p["recommendations"]) for p in out] == [4, 2, 3, 40]
        assert not {"i1", "i2", "i3"} & set(out[0]["recommendations"]) and "i5" not in out[1]["recommendations"]
        assert out[1]["unknown"] == ["nope"] and out[0]["unknown"] == []
        assert [p["fallback"] for p in out] == ["", "", "most_popular", ""]
        assert {"i1", "i2", "i3"} <= set(out[3]["recommendations"])
        bad = httpx.post(f"{url}/invocations", json={"dataframe_records": [{"k": 3}]}, timeout=30)
        assert bad.status_code >= 400 and "history" in bad.text


def test_serve_without_a_champion_names_the_fix(tmp_path):
    from typer.testing import CliRunner

    from semid.cli import app

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = CliRunner().invoke(app, ["serve", "ml-100k", "--set", f"mlflow.tracking_uri={uri}"])
    assert res.exit_code == 1 and "has no champion" in res.output and "semid run" in res.output
