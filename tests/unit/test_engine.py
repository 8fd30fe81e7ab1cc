"""The engine choice fails closed: an unreachable Dask scheduler, or a flow run whose task runner is not the
configured one, stop the run before any step with one message naming the fix."""

from __future__ import annotations

import os

import pytest

from semid.tasks.config import load_config
from semid.tasks.errors import PipelineError
from tests.integration.conftest import free_port


def test_unreachable_scheduler_is_one_clear_error():
    from semid.flows.engine import task_runner

    address = f"tcp://127.0.0.1:{free_port()}"
    cfg = load_config(None, ["flow.task_runner=dask", f"flow.dask_address={address}"])
    with pytest.raises(PipelineError, match=f"No Dask scheduler answers at flow.dask_address={address}"):
        task_runner(cfg)


def test_runner_follows_the_config():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from semid.flows.engine import task_runner

    local = task_runner(load_config(None, ["flow.workers=3"]))
    assert isinstance(local, ThreadPoolTaskRunner) and local._max_workers == 3
    dask = task_runner(load_config(None, ["flow.task_runner=dask", "flow.workers=2"]))
    assert isinstance(dask, DaskTaskRunner)
    assert dask.cluster_kwargs == {"n_workers": 2, "threads_per_worker": 1, "processes": True,
                                   "dashboard_address": None}


def test_threads_per_task_come_from_the_config():
    assert load_config(None, ["flow.threads_per_task=3"]).flow.task_threads() == 3
    assert load_config(None, ["flow.workers=64"]).flow.task_threads() == 1


def test_a_step_after_shard_tasks_gets_every_cpu_back():
    """torch starts each new thread with the thread count last set in any thread. After the embed shards (1 thread
    each on 2 cores) the default job's quantize and recommend tasks, each in a new thread, ran on 1 core."""
    import threading

    import torch

    from semid.flows.retrain import _cfg
    from semid.tasks.config import Config

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: a step cannot get more threads than a shard")
    before, seen = torch.get_num_threads(), {}

    def in_new_thread(fn) -> None:
        t = threading.Thread(target=fn)
        t.start()
        t.join()

    try:
        in_new_thread(lambda: torch.set_num_threads(1))  # what an embed shard task does
        in_new_thread(lambda: seen.update(without=torch.get_num_threads()))
        in_new_thread(lambda: (_cfg(Config().model_dump_json()), seen.update(step=torch.get_num_threads())))
    finally:
        torch.set_num_threads(before)
    assert seen == {"without": 1, "step": os.cpu_count()}
