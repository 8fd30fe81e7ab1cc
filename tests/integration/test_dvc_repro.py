"""`dvc repro` on a fresh copy of the project (small local slice): runs, a second run is a no-op, an edit to
models/ code reruns the stages that import it; metrics, params diff and experiments work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO, tiny_tables


def _sh(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def dvc_project(tmp_path: Path):
    """A git copy of the project (no tests/benchmarks) on a tiny local dataset with fast settings."""
    work = tmp_path / "proj"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in files.split():
        if rel.startswith(("tests/", "benchmarks/")):
            continue
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, work / rel)
    items, inter = tiny_tables()
    src = tmp_path / "src"
    src.mkdir()
    items.to_parquet(src / "items.parquet")
    inter.to_parquet(src / "events.parquet")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["dataset"] = "shop"
    params["data"]["local"] = {"items": str(src / "items.parquet"), "interactions": str(src / "events.parquet"),
                               "user_col": "customer", "item_col": "sku", "timestamp_col": "ts",
                               "text_cols": ["title", "brand"]}
    params["quantizer"].update({"method": "rqkmeans", "levels": 2, "codebook_size": 4,
                                "distances": ["cosine", "euclidean"], "kmeans_iters": 5})
    params["embed"]["cache_dir"] = str(tmp_path / "emb-cache")
    params["gate"].update({"min_k_eff_ratio": 0.0, "min_active_share": 0.0, "max_duplicate_rate": 0.9,
                           "max_recon_ratio": 10.0, "min_lift_over_popularity": -1.0})
    params["recommend"].update({"epochs": 2, "patience": 1, "layers": 1, "negatives": 2})
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "SEMID_NO_DVC"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.invalid"],
                ["git", "config", "user.name", "ci"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        _sh(cmd, work, env)
    return work, env, _sh


def test_dvc_repro_twice_is_noop(tmp_path):
    work, env, _ = dvc_project(tmp_path)
    first = _sh(["dvc", "repro"], work, env)
    for stage in ("ingest", "validate", "embed", "quantize", "diagnose", "gate", "train"):
        assert f"Running stage '{stage}'" in first
    assert (work / "data" / "processed" / "shop" / "interactions.parquet").exists()
    second = _sh(["dvc", "repro"], work, env)
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in second
    # an edit to models/ code reruns exactly the stages whose step imports it (dvc.yaml's code deps) ...
    diagnostics = work / "models" / "diagnostics.py"
    diagnostics.write_text(diagnostics.read_text() + "\n# an edit to the diagnostics code\n")
    out = _sh(["dvc", "repro"], work, env)
    assert "Running stage 'diagnose'" in out
    assert not any(f"Running stage '{s}'" in out for s in ("ingest", "validate", "embed", "quantize")), out
    # ... and an edit to the quantizer code reruns quantize and every stage that loads a quantizer
    quantizer = work / "models" / "quantizer.py"
    quantizer.write_text(quantizer.read_text().replace("seed=seed + level)", "seed=seed + level + 1)"))
    out = _sh(["dvc", "repro"], work, env)
    for stage in ("quantize", "diagnose", "train"):
        assert f"Running stage '{stage}'" in out, out
    assert not any(f"Running stage '{s}'" in out for s in ("ingest", "validate", "embed")), out
    metrics = _sh(["dvc", "metrics", "show"], work, env)  # the headline numbers, one readable table
    for key in ("K_eff_l0", "K_eff_l1", "dup_rate", "R@10", "N@10", "N@10_unmasked"):
        assert key in metrics, metrics
    assert max(len(line) for line in metrics.splitlines()) <= 120, metrics
    plots = _sh(["dvc", "plots", "show", "--json"], work, env)
    assert "history.json" in plots and "k_eff.png" in plots
    params_diff = _sh(["dvc", "params", "diff", "--all"], work, env)
    assert "quantizer.levels" in params_diff
    exp = _sh(["dvc", "exp", "run", "--set-param", "recommend.epochs=1"], work, env)
    assert "Running stage 'train'" in exp and "Running stage 'quantize'" not in exp
