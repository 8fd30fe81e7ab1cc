"""File helpers shared by the steps: all-or-nothing output folders, sha256 of files, the user cache folder, and the
checkout's git sha. Standard library only: the reference runs' venvs (RecBole, RecTools), which lack semid, load it
from the checkout too (benchmarks/hostinfo.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Yield an empty staging folder next to `target`; on success it replaces `target`, on error it is removed.
    Staging folders left by a killed process (SIGKILL skips the cleanup) are removed first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        old = target.parent / f".{target.name}-old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_dirs(folders: Iterable[Path], max_age: float) -> None:
    """Remove the folders among `folders` last modified over `max_age` seconds ago (leftovers of killed runs)."""
    for folder in folders:
        if folder.is_dir() and time.time() - folder.stat().st_mtime > max_age:
            shutil.rmtree(folder, ignore_errors=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def files_sha(paths: list[Path]) -> str:
    """One sha256 over the files (recursively for folders), names + contents; missing paths hash as absent."""
    h = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
            h.update(sha256_file(f).encode() if f.exists() else b"<absent>")
    return h.hexdigest()


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "semid"


REPO = Path(__file__).resolve().parents[1]  # the checkout: the folder holding models/, tasks/, flows/


def git_sha(length: int | None = None, cwd: Path = REPO) -> str:
    """The checked-out commit (its first `length` characters), plus "-dirty" when tracked files differ from it, so a
    shortened sha still says the code was uncommitted; "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip()[:length] + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
