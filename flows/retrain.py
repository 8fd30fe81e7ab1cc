"""The retrain flow: ingest -> validate -> embed -> quantize -> diagnose -> register + gate the codebook ->
train the recommender on the promoted codebook -> register + gate the recommender.

Each step is a Prefect task over a step function in semid.tasks; data moves between them as small return values
(manifests, versions), never as DataFrames. The cached steps use the stage declaration's cache policy
(flows/stages.py): a rerun after a crash resumes after the last finished step, and an edit to a step's code,
config section, inputs or libraries runs it and everything downstream again. MLflow gets one parent run per flow
run and a nested run per step. A failed gate ends the flow Failed; nothing is promoted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.context import get_run_context
from prefect.results import get_result_store

from semid.flows.engine import check_runner
from semid.flows.stages import BY_TASK, StageCache, outputs_digest, stage_key, still_valid
from semid.tasks import layout
from semid.tasks.config import Config, load_config

CACHED = {"cache_policy": StageCache(), "persist_result": True}


class GateFailed(RuntimeError):
    """The candidate did not pass the quality gate; the message is the one-paragraph explanation."""


def _cfg(config_json: str) -> Config:
    """The step's config. Also gives the step every CPU for torch and faiss: torch starts each new thread with the
    count last set in any thread, so after the embed shards (flow.task_threads() each) the quantize and recommend
    steps ran on 1 of 2 cores (the default job's SASRec epoch: 2.75 s instead of 1.6 s). A shard task sets its own
    count after this."""
    from semid.tasks.embed import set_task_threads

    set_task_threads(os.cpu_count() or 1)
    return Config.model_validate_json(config_json)


def _recorded(task_name: str, cfg: Config, name: str, result: dict[str, Any]) -> dict[str, Any]:
    """A cached step's result carries the digest of what it wrote, so a later cache hit can be checked."""
    return {**result, "outputs": outputs_digest(BY_TASK[task_name], cfg, name)}


@task(name="ingest", retries=2, retry_delay_seconds=2, **CACHED)
def ingest_task(name: str, config_json: str) -> dict[str, Any]:
    """Fetch (network or mirror, checksum-verified) into data/raw/NAME, list it, record it with DVC."""
    from semid.tasks import ingest

    cfg = _cfg(config_json)
    ingest.fetch(name, cfg)
    dvc_hash = ingest.record_raw(cfg) if layout.root(cfg) == Path("data") else None
    return _recorded("ingest", cfg, name, {"raw_hash": layout.raw_hash(cfg, name), "dvc_hash": dvc_hash})


@task(name="validate", **CACHED)
def validate_task(name: str, config_json: str) -> dict[str, Any]:
    from semid.tasks.validate import validate

    cfg = _cfg(config_json)
    return _recorded("validate", cfg, name, validate(name, cfg))


@task(name="embed-shard", retries=1, retry_delay_seconds=2)
def embed_shard_task(name: str, config_json: str, shard: dict[str, Any]) -> dict[str, Any]:
    """One shard of items through the text cache into its shard file; returns its small manifest."""
    from semid.tasks.embed import embed_shard

    return embed_shard(name, _cfg(config_json), shard)


@task(name="embed", **CACHED)
def embed_task(name: str, config_json: str, shards: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Join the embedded shards into features/NAME (the cached step: a hit skips the shards too)."""
    from semid.tasks.embed import join

    cfg = _cfg(config_json)
    if shards is None:
        raise RuntimeError("embed ran without shards although its cached result was not reusable")
    return _recorded("embed", cfg, name, join(name, cfg, shards))


@task(name="quantize", **CACHED)
def quantize_task(name: str, config_json: str) -> dict[str, Any]:
    from semid.tasks.quantize import quantize

    cfg = _cfg(config_json)
    return _recorded("quantize", cfg, name, quantize(name, cfg))


@task(name="extend")
def extend_task(name: str, config_json: str, champion: Any) -> dict[str, Any]:
    from semid.tasks.quantize import extend

    return extend(name, _cfg(config_json), champion.quantizer, champion.ids)


@task(name="diagnose", **CACHED)
def diagnose_task(name: str, config_json: str) -> dict[str, Any]:
    from semid.tasks.diagnose import diagnose

    cfg = _cfg(config_json)
    return _recorded("diagnose", cfg, name, diagnose(name, cfg))


@task(name="register-codebook", retries=2, retry_delay_seconds=2, **CACHED)
def register_codebook_task(name: str, config_json: str, tags: dict[str, str], parent: str) -> dict[str, Any]:
    from semid.tasks.register import register_codebook

    cfg = _cfg(config_json)
    return _recorded("register-codebook", cfg, name, register_codebook(name, cfg, tags, parent))


@task(name="gate-codebook", retries=2, retry_delay_seconds=2, **CACHED)
def gate_codebook_task(name: str, config_json: str, registered: dict[str, Any], diag: dict[str, Any],
                       extended: bool, tags: dict[str, str], parent: str) -> dict[str, Any]:
    from semid.tasks.gate import gate_codebook_version

    cfg = _cfg(config_json)
    out = gate_codebook_version(name, cfg, registered, diag, extended, tags, parent)
    return _recorded("gate-codebook", cfg, name, {**out, "run_id": registered["run_id"]})


@task(name="recommend")
def recommend_task(name: str, config_json: str, codebook: str) -> dict[str, Any]:
    from semid.tasks.recommend import recommend

    return recommend(name, _cfg(config_json), codebook=Path(codebook))


@task(name="register-recommender", retries=2, retry_delay_seconds=2)
def register_recommender_task(name: str, config_json: str, metrics: dict[str, Any], codebook: str,
                              tags: dict[str, str], parent: str) -> dict[str, Any]:
    from semid.tasks.register import register_recommender

    return register_recommender(name, _cfg(config_json), metrics, Path(codebook), tags, parent)


@task(name="promote-pair", retries=2, retry_delay_seconds=2)
def promote_pair_task(name: str, config_json: str, codebook: dict[str, Any], diag: dict[str, Any],
                      registered: dict[str, Any], metrics: dict[str, Any], tags: dict[str, str],
                      parent: str) -> dict[str, Any]:
    from semid.tasks.gate import promote_pair

    return promote_pair(name, _cfg(config_json), codebook, diag, registered, metrics, tags, parent)


def embed_plan(name: str, cfg: Config) -> list[dict[str, Any]]:
    from semid.tasks.embed import plan

    return plan(name, cfg)


class Steps:
    """Runs the flow's tasks and records, per step, its final state (Completed / Cached) and its seconds; logs a
    nested MLflow run per step (config section, numbers, files, state) once the parent run exists."""

    def __init__(self, cfg: Config):
        self.cfg, self.name, self.states, self.seconds, self.tracker = cfg, cfg.data.dataset, {}, {}, None

    def __call__(self, task_fn, **kwargs: Any) -> Any:
        start = time.perf_counter()
        fresh = self.stale(task_fn, **kwargs) if task_fn.name in BY_TASK else None
        return self._run(task_fn, fresh, start, **kwargs)

    def _run(self, task_fn, fresh: bool | None, start: float, **kwargs: Any) -> Any:
        """Run the task (a cached step refreshes its cache entry when `fresh`); record its state and seconds."""
        runner = task_fn.with_options(refresh_cache=fresh) if fresh is not None else task_fn
        state = runner(name=self.name, config_json=self.cfg.model_dump_json(), **kwargs, return_state=True)
        result = state.result()
        self.states[task_fn.name], self.seconds[task_fn.name] = state.name, time.perf_counter() - start
        return result

    def stale(self, task_fn, **kwargs: Any) -> bool:
        """Must a cached step run? True unless its cached result exists and its outputs are still on disk."""
        stage = BY_TASK[task_fn.name]
        key = stage_key(stage, self.cfg, self.name, {k: v for k, v in kwargs.items() if k not in
                                                     StageCache().run_specific})
        return key is None or not self._cached_and_valid(task_fn, stage, key)

    def sharded(self, join_fn, shard_fn, plan: Any) -> Any:
        """A sharded step: unless the join's cached result is reusable, map shard_fn over the plan's shards on
        the flow's task runner (each returns a small manifest), then run the join over those manifests."""
        start = time.perf_counter()
        fresh = self.stale(join_fn, shards=None)  # once: its key hashes the step's input files
        shards = None
        if fresh:
            config_json = self.cfg.model_dump_json()
            futures = shard_fn.map(name=unmapped(self.name), config_json=unmapped(config_json),
                                   shard=plan(self.name, self.cfg))
            shards = [f.result() for f in futures]
        return self._run(join_fn, fresh, start, shards=shards)

    def _cached_and_valid(self, task_fn, stage, key: str) -> bool:
        store = get_result_store().update_for_task(task_fn)
        try:
            return store.exists(key) and still_valid(stage, self.cfg, self.name, store.read(key).result)
        except Exception:  # noqa: BLE001 - an unreadable cache entry is a miss
            return False

    def log(self, step: str, section: str | None, metrics: dict[str, Any], files: tuple[Path, ...] = ()) -> None:
        params = self.cfg.model_dump(mode="json")[section] if section else None
        self.tracker.log_step(step, params, {**metrics, "seconds": self.seconds.get(step, float("nan"))},
                              self.states.get(step, "Completed"), files)

    def fail(self, explanation: str) -> GateFailed:
        self.tracker.client.set_tag(self.tracker.parent, "gate", "failed")
        return GateFailed(explanation)


@flow(name="semid-retrain")
def retrain(config: str = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Run the whole pipeline once on the configured dataset; fails (state Failed) when a gate fails."""
    from semid.models.diagnostics import flat_metrics
    from semid.tasks.fsutil import git_sha
    from semid.tasks.gate import refit_reason
    from semid.tasks.tracking import Tracker, load_champion, model_name

    cfg = load_config(config, overrides)
    check_runner(cfg)
    name, run = cfg.data.dataset, Steps(cfg)
    tags = {"git_sha": git_sha(), "config_hash": cfg.digest(),
            "prefect_flow_run_id": str(get_run_context().flow_run.id), "dataset": name, "mode": cfg.flow.mode}
    snap = run(ingest_task.with_options(retries=cfg.flow.retries))
    tags["data_hash"] = snap["dvc_hash"] or snap["raw_hash"]
    run.tracker = tracker = Tracker(cfg, f"retrain-{name}", tags)
    summary: dict[str, Any] = {"dataset": name, "mode": cfg.flow.mode}
    try:
        run.log("ingest", "data", {})
        run(validate_task)
        run.log("validate", "data", layout.load_stats(cfg, name))
        manifest = run.sharded(embed_task, embed_shard_task, embed_plan)
        run.log("embed", "embed", {k: manifest.get(k) for k in ("items", "dim", "encoded", "cached")})
        tracker.log_inputs(cfg, layout.processed_dir(cfg, name) / "data_docs", layout.root(cfg) / "config.json")
        champion = (load_champion(cfg, model_name(cfg, "codebook", name), dataset=name)
                    if cfg.flow.mode == "incremental" else None)
        refit = None
        if champion is not None:  # incremental: keep the champion's IDs, refit only if the thresholds fail
            run.log("extend", "quantizer", run(extend_task, champion=champion))
            diag = run(diagnose_task)
            refit = refit_reason(diag, cfg.gate)
            if refit:
                get_run_logger().info("incremental codebook crosses the thresholds (%s): refitting", refit)
        if champion is None or refit:
            run.log("quantize", "quantizer", run(quantize_task))
            diag = run(diagnose_task)
        sem = layout.semantic_dir(cfg, name)
        run.log("diagnose", "diagnose", flat_metrics(diag),
                (sem / "diagnostics.json", sem / "code_usage.png", sem / "k_eff.png"))
        registered = run(register_codebook_task, tags=tags, parent=tracker.parent)
        codebook = run(gate_codebook_task, registered=registered, diag=diag,
                       extended=champion is not None and not refit, tags=tags, parent=tracker.parent)
        summary.update({"steps": run.states, "codebook": {**codebook, "refit_reason": refit}, "diagnostics": diag,
                        "mlflow_run_id": tracker.parent, "recommender": None})
        if not codebook["passed"]:
            raise run.fail(codebook["explanation"])
        if cfg.flow.train_recommender:  # the codebook waits as the challenger; the pair moves together or not
            rec = run(recommend_task, codebook=str(sem))
            run.log("recommend", "recommend", rec["metrics"], (layout.recommend_dir(cfg, name) / "history.json",))
            registered = run(register_recommender_task, metrics=rec["metrics"], codebook=str(sem), tags=tags,
                             parent=tracker.parent)
            pair = run(promote_pair_task, codebook=codebook, diag=diag, registered=registered,
                       metrics=rec["metrics"], tags=tags, parent=tracker.parent)
            summary["recommender"] = {**pair, "metrics": rec["metrics"]}
            summary["codebook"].update(promoted=pair["codebook_promoted"], gate=pair["codebook_gate"],
                                       champion_before=pair["codebook_champion_before"])
            if not pair["promoted"]:
                raise run.fail(pair["explanation"])
        tracker.client.set_tag(tracker.parent, "gate", "passed")
        summary["seconds"] = dict(run.seconds)
        layout.write_run_summary(cfg, summary)
        tracker.end(tracker.parent, True)
        return summary
    except GateFailed as err:  # the steps that ran, their seconds and numbers, and why nothing was promoted
        layout.write_run_summary(cfg, {**summary, "steps": run.states, "seconds": dict(run.seconds),
                                       "gate_failed": str(err)})
        tracker.end(tracker.parent, False)
        raise
    except BaseException:
        tracker.end(tracker.parent, False)
        raise


DATA_STEPS = (ingest_task, validate_task, embed_task, quantize_task, diagnose_task)


@flow(name="semid-prepare")
def prepare(config: str = "params.yaml", overrides: list[str] | None = None, until: str = "diagnose") -> dict:
    """The data steps only, ingest -> validate -> embed -> quantize -> diagnose, up to `until`, cached exactly as in
    the retrain flow: every output that is up to date is reused. Benchmarks call it before reading a dataset."""
    cfg = load_config(config, overrides)
    names = [t.name for t in DATA_STEPS]
    if until not in names:
        from semid.tasks.errors import PipelineError

        raise PipelineError(f"Unknown step '{until}'.", f"use one of {', '.join(names)}.")
    check_runner(cfg)
    run = Steps(cfg)
    for step in DATA_STEPS[: names.index(until) + 1]:
        if step is embed_task:
            run.sharded(embed_task, embed_shard_task, embed_plan)
        else:
            run(step.with_options(retries=cfg.flow.retries) if step is ingest_task else step)
    return {"dataset": cfg.data.dataset, "steps": run.states, "seconds": run.seconds}
