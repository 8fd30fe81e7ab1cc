"""A fetch records data/raw in data.dvc and pushes it to the local remote; `dvc pull` restores it offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from semid.cli import app
from tests.conftest import local_params, tiny_tables


def _dvc(*args: str, cwd: Path) -> str:
    dvc = str(Path(sys.executable).parent / "dvc")
    proc = subprocess.run([dvc, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_fetch_records_snapshot_and_pull_restores_it(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc("init", "-q", cwd=repo)
    items, inter = tiny_tables()
    src = tmp_path / "src"
    src.mkdir()
    items.to_parquet(src / "items.parquet")
    inter.to_parquet(src / "events.parquet")
    monkeypatch.chdir(repo)
    monkeypatch.delenv("SEMID_NO_DVC", raising=False)
    sets = local_params(Path("data"), str(src / "items.parquet"), str(src / "events.parquet"))
    sets = [s for pair in zip(["--set"] * len(sets), sets, strict=True) for s in pair]
    remote = tmp_path / "remote"
    res = CliRunner().invoke(app, ["data", "fetch", "shop", "--config", "none.yaml", *sets,
                                   "--set", f"data.dvc_remote={remote}"])
    assert res.exit_code == 0, res.output
    stage = yaml.safe_load((repo / "data.dvc").read_text())
    assert stage["frozen"] is True and stage["outs"][0]["path"] == "data/raw"
    md5 = stage["outs"][0]["md5"]
    assert md5.endswith(".dir") and any(remote.rglob("*"))
    # lose the workspace copy and the local cache: pull brings the exact snapshot back
    before = sorted(p.name for p in (repo / "data" / "raw" / "shop").rglob("*") if p.is_file())
    shutil.rmtree(repo / "data" / "raw")
    shutil.rmtree(repo / ".dvc" / "cache")
    _dvc("pull", "-q", "data.dvc", cwd=repo)
    after = sorted(p.name for p in (repo / "data" / "raw" / "shop").rglob("*") if p.is_file())
    assert before == after and len(after) == 2
    assert os.environ.get("SEMID_NO_DVC") is None
