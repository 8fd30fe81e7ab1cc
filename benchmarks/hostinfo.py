"""Where and when a benchmark record was measured (CPU model, command, git sha), with the standard library only:
the reference runs' own venvs (RecBole, RecTools) import it too."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), so results from different CPU families are not averaged together."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def provenance(script: str) -> dict:
    """Date, command (`script` with this process's arguments), machine (with the CPU model, as every other record)
    and git sha, marked -dirty as semid.tasks.tracking.git_sha does; without semid, which the reference venvs lack."""
    here = Path(__file__).parent
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                           text=True).stdout.strip()
    sha = git.stdout.strip()[:12]
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": shlex.join(["python", script, *sys.argv[1:]]),
            "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, {cpu_model()}",
            "git": (sha + ("-dirty" if dirty else "")) if sha else "unknown"}
