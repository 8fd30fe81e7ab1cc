"""The retrain flow's deployment: serve it on a cron schedule against a running Prefect server."""

from __future__ import annotations

import os
from pathlib import Path

from semid.flows.engine import on_engine
from semid.flows.retrain import retrain
from semid.tasks.config import load_config
from semid.tasks.errors import PipelineError


def serve(cron: str, config: str = "params.yaml", overrides: list[str] | None = None,
          name: str = "semid-retrain-scheduled") -> None:
    """Serve a cron deployment of the retrain flow against the Prefect server at PREFECT_API_URL (blocks)."""
    if not os.environ.get("PREFECT_API_URL"):
        raise PipelineError("No Prefect server: PREFECT_API_URL is not set.",
                            "start one with `prefect server start --host 127.0.0.1` and export "
                            "PREFECT_API_URL=http://127.0.0.1:4200/api.")
    params = {"config": str(Path(config).resolve()), "overrides": list(overrides or [])}
    on_engine(retrain, load_config(config, overrides)).serve(name=name, cron=cron, parameters=params)
