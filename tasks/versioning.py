"""Record raw snapshots with DVC: data.dvc tracks data/raw, pushed to a local default remote.

data.dvc is a *frozen* data-source stage so `dvc repro` on a fresh clone (no cache, no remote) runs the
pipeline stages instead of failing on the missing snapshot; `semid data fetch` re-commits it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tasks.config import Config
from tasks.errors import PipelineError
from tasks.ingest import user_cache_dir

REMOTE_NAME = "semid-local"


def _dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(
            f"`dvc {' '.join(args)}` failed: {(proc.stderr or proc.stdout).strip()}",
            "run `dvc doctor` to check the DVC setup, or fetch with --no-record to skip DVC.",
        )
    return proc


def remote_path(cfg: Config) -> Path:
    return Path(cfg.data.dvc_remote) if cfg.data.dvc_remote else user_cache_dir() / "dvc-remote"


def ensure_remote(cfg: Config, repo: Path) -> None:
    """A default remote in .dvc/config.local (machine-specific, not committed) so push/pull work offline."""
    path = remote_path(cfg)
    path.mkdir(parents=True, exist_ok=True)
    _dvc("remote", "add", "--local", "--force", "--default", REMOTE_NAME, str(path.resolve()), cwd=repo)


def data_hash(repo: Path = Path(".")) -> str | None:
    """The md5 DVC recorded for data/raw in data.dvc (None when nothing is recorded)."""
    dvc_file = repo / "data.dvc"
    if not dvc_file.exists():
        return None
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
    return outs[0].get("md5") if outs else None


def record_raw(cfg: Config, repo: Path = Path(".")) -> str | None:
    """Commit data/raw into data.dvc and push it to the local remote. No-op outside a DVC repo."""
    if not (repo / ".dvc").is_dir() or Path(cfg.data.root) != Path("data") or os.environ.get("SEMID_NO_DVC"):
        return None
    dvc_file = repo / "data.dvc"
    if not dvc_file.exists():
        dvc_file.write_text(yaml.safe_dump({"outs": [{"path": "data/raw"}], "frozen": True}, sort_keys=False))
    _dvc("commit", "--force", "--quiet", "data.dvc", cwd=repo)
    ensure_remote(cfg, repo)
    _dvc("push", "--quiet", "data.dvc", cwd=repo)
    return data_hash(repo)
