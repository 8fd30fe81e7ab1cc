"""The engine the flow's mapped shard tasks run on, chosen by config: `flow.task_runner` local (Prefect's
ThreadPoolTaskRunner in the flow's process) or dask (prefect-dask's DaskTaskRunner: a LocalCluster of
`flow.workers` single-threaded worker processes started for the run, or the existing scheduler at
`flow.dask_address`). Only `.submit()` / `.map()` go through it; the unsharded steps run in the flow's process.
"""

from __future__ import annotations

from typing import Any

from semid.tasks.config import Config
from semid.tasks.errors import PipelineError


def task_runner(cfg: Config) -> Any:
    """The Prefect task runner for cfg.flow."""
    f = cfg.flow
    if f.task_runner == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=f.workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise PipelineError("flow.task_runner is dask but prefect-dask is not installed.",
                            "pip install -e . (it is a dependency), or set flow.task_runner=local.") from None
    if f.dask_address:
        check_scheduler(f.dask_address)
        return DaskTaskRunner(address=f.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": f.workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


def check_scheduler(address: str, timeout: float = 10) -> None:
    """Fail with one message, before the flow starts, when no Dask scheduler answers at `address`."""
    from distributed import Client

    try:
        Client(address, timeout=timeout, set_as_default=False).close()
    except OSError as err:
        raise PipelineError(f"No Dask scheduler answers at flow.dask_address={address} ({err}).",
                            "start one (`dask scheduler` and `dask worker ADDRESS`), fix the address, or clear "
                            "flow.dask_address to let the run start a LocalCluster.") from None



def on_engine(flow_obj: Any, cfg: Config) -> Any:
    """The flow with cfg's task runner: how the CLI, the schedule and the benchmarks call a flow."""
    return flow_obj.with_options(task_runner=task_runner(cfg))


class _Reported:
    """A logging filter: drops records carrying one of `types` (errors the CLI reports itself, in one message)."""

    def __init__(self, types: tuple[type[BaseException], ...]):
        self.types = types

    def filter(self, record: Any) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], self.types))


def console_reports_once(*types: type[BaseException]) -> None:
    """Keep Prefect's console from repeating, with a traceback, an error of `types` that the CLI prints as one message
    (a PipelineError, a failed gate): Prefect logs it from the task and again from the flow. Only the console
    handlers are filtered; the Prefect API (the UI's run logs) still gets the full record. Call after prefect is
    imported (its logging is set up on import)."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    for name in (None, "prefect", "prefect.flow_runs", "prefect.task_runs"):  # None: root, where Prefect's
        for handler in logging.getLogger(name).handlers:                       # logging.yml puts its console
            if isinstance(handler, PrefectConsoleHandler) and not any(isinstance(f, _Reported) and f.types == types
                                                                      for f in handler.filters):
                handler.addFilter(_Reported(types))


EPHEMERAL_TIMEOUT = "120"  # s; Prefect's 20 s default timed out on the first run on a fresh 2-core machine


def quiet_prefect() -> None:
    """Defaults for the Prefect a flow run starts when no PREFECT_API_URL is set (a temporary local server): no
    analytics, warnings only, and time for its first start, which creates and migrates its database (> 20 s on a
    fresh 2-core machine). Call before prefect is imported; variables the user set win."""
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_TIMEOUT)


def server_error(err: BaseException) -> PipelineError | None:
    """Prefect's temporary server did not start in time: the one message naming the fixes (None: another error)."""
    if "ephemeral Prefect API server" not in str(err):
        return None
    return PipelineError("Prefect's temporary local server did not start within "
                         "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (its first start creates its database).",
                         "run the command again, raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (e.g. 300), or "
                         "start `prefect server start --host 127.0.0.1` and set "
                         "PREFECT_API_URL=http://127.0.0.1:4200/api.")


def check_runner(cfg: Config) -> None:
    """Inside a flow run: fail when the run's task runner is not the configured one (a flow called directly,
    not through `on_engine`, runs its shards on Prefect's default thread pool)."""
    from prefect.context import get_run_context

    runner = type(get_run_context().task_runner).__name__
    is_dask = runner == "DaskTaskRunner"
    if is_dask != (cfg.flow.task_runner == "dask"):
        raise PipelineError(f"flow.task_runner is {cfg.flow.task_runner} but this flow run's task runner is {runner}.",
                            "call the flow as semid.flows.engine.on_engine(flow, cfg)(...) (as `semid run` does), "
                            "or set flow.task_runner to match.")
