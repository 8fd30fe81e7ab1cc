"""Where and when a benchmark record was measured (CPU model, command, git sha), with the standard library only:
the reference runs' own venvs (RecBole, RecTools) import it too."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys


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
    and git sha (12 characters, marked -dirty): semid.tasks.fsutil.git_sha, loaded from this checkout as `tasks.fsutil`
    because the reference venvs lack semid (the module is standard library only)."""
    from tasks.fsutil import git_sha

    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": shlex.join(["python", script, *sys.argv[1:]]),
            "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, {cpu_model()}",
            "git": git_sha(12)}
