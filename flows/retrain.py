"""The retrain flow: ingest -> validate -> embed -> quantize -> diagnose -> gate -> register/promote codebook ->
train recommender on the promoted codebook -> gate -> register/promote recommender.

Each step is a Prefect task over the plain function in tasks/. The data steps are cached on the sha256 of their
input files + their config section + their own source file (never on DataFrames), so a rerun after a crash
resumes after the last finished step; a step whose outputs were deleted runs again (refresh_cache).
MLflow gets one parent run per flow run and a nested run per step. A failed gate ends the flow Failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.context import TaskRunContext, get_run_context

from tasks.config import Config, load_config
from tasks.ingest import sha256_file

ROOT = Path(__file__).resolve().parents[1]


class GateFailed(RuntimeError):
    """The candidate did not pass the quality gate; the message is the one-paragraph explanation."""


def files_sha(paths: list[Path]) -> str:
    """One sha256 over the files (recursively for folders), names + contents; missing paths hash as absent."""
    h = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
            h.update(sha256_file(f).encode() if f.exists() else b"<absent>")
    return h.hexdigest()


def _cfg(config_json: str) -> Config:
    return Config.model_validate_json(config_json)


def _data(cfg: Config, *parts: str) -> Path:
    return Path(cfg.data.root).joinpath(*parts)


def _local_inputs(cfg: Config) -> list[Path] | None:
    """The user's source files (globs expanded); None for SQL sources, which are re-read every run."""
    import glob

    local = cfg.data.local
    if local is None or local.items is None:
        return None
    return [Path(p) for pattern in (local.items, local.interactions) for p in sorted(glob.glob(pattern))]


# Per step: (input files, config sections, outputs that must exist for a cache hit, folder holding the stamp).
def step_io(step: str, cfg: Config, name: str) -> tuple[list[Path], list[str], list[Path], Path]:
    raw, proc = _data(cfg, "raw", name), _data(cfg, "processed", name)
    feat, sem = _data(cfg, "features", name), _data(cfg, "semantic", name)
    return {
        "ingest": (_local_inputs(cfg) or [], ["data"], [raw], _data(cfg, "snapshots")),
        "validate": ([raw], ["data"], [proc / "items.parquet", proc / "stats.json"], proc),
        "embed": ([proc / "items.parquet"], ["embed"], [feat / "embeddings.npy"], feat),
        "quantize": ([feat / "embeddings.npy", proc / "interactions.parquet"], ["quantizer"],
                     [sem / "ids.parquet", sem / "quantizer"], sem),
        "diagnose": ([sem / "quantizer", sem / "ids.parquet", feat / "embeddings.npy"], ["diagnose"],
                     [sem / "diagnostics.json"], sem),
        "register-codebook": ([sem / "quantizer", sem / "ids.parquet", sem / "diagnostics.json"],
                              ["gate", "mlflow", "embed"], [], sem),
    }[step]


def compute_key(step: str, cfg: Config, name: str) -> str | None:
    """Input file hashes + the step's config sections + its source code. None = never cache (SQL sources)."""
    if step == "ingest" and cfg.data.local is not None and cfg.data.local.items is None:
        return None
    inputs, sections, _, _ = step_io(step, cfg, name)
    dump = cfg.model_dump(mode="json")
    blob = json.dumps({s: dump[s] for s in sections}, sort_keys=True).encode()
    source = {"register-codebook": "register", "ingest": "ingest"}.get(step, step)
    blob += (ROOT / "tasks" / f"{source}.py").read_bytes() + name.encode()
    if step == "ingest" and cfg.data.local is None:
        from tasks.ingest import get_spec

        blob += repr(get_spec(name, cfg)).encode()  # pinned URLs + sha256s: the source's identity
    if step == "register-codebook":
        from tasks.register import tracking_uri

        blob += tracking_uri(cfg).encode()
    return f"semid-{step}-{name}-" + hashlib.sha256(files_sha(inputs).encode() + blob).hexdigest()[:32]


def step_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    return compute_key(context.task.name, _cfg(parameters["config_json"]), parameters["name"])


def _stamp(step: str, cfg: Config, name: str) -> Path:
    return step_io(step, cfg, name)[3] / f".semid-{step}-{name}.json"


def _still_valid(step: str, cfg: Config, name: str, key: str | None) -> bool:
    """A cached result may be reused only if this step's outputs on disk came from the same key."""
    stamp = _stamp(step, cfg, name)
    if key is None or not stamp.exists() or not all(p.exists() for p in step_io(step, cfg, name)[2]):
        return False
    recorded = json.loads(stamp.read_text())
    if recorded.get("key") != key:
        return False
    if step == "register-codebook":  # the registered version must still be in the registry
        from tasks.register import client_for

        client, _ = client_for(cfg)
        try:
            client.get_model_version(cfg.mlflow.codebook_model, recorded["version"])
        except Exception:  # noqa: BLE001 - any lookup failure means: register again
            return False
    return True


TIMINGS: dict[str, float] = {}  # seconds per step of the current flow run (for the summary)


def _run(task_fn, step: str, cfg: Config, name: str, *args: Any) -> tuple[Any, str]:
    """Call a cached step, refreshing its cache unless its outputs on disk match the key. (result, state name)."""
    start = time.perf_counter()
    key = compute_key(step, cfg, name)
    fresh = not _still_valid(step, cfg, name, key)
    state = task_fn.with_options(refresh_cache=fresh)(name, cfg.model_dump_json(), *args, return_state=True)
    result = state.result()
    if key is not None:
        stamp = _stamp(step, cfg, name)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"key": key, "version": (result or {}).get("version")}))
    TIMINGS[step] = time.perf_counter() - start
    return result, state.name


@task(name="ingest", retries=2, retry_delay_seconds=2, cache_key_fn=step_key, persist_result=True)
def ingest_task(name: str, config_json: str) -> dict[str, Any]:
    """Fetch (network or mirror, checksum-verified) unless the snapshot is already in place, then record it."""
    from tasks import ingest, versioning
    from tasks.validate import raw_hash

    cfg = _cfg(config_json)
    ingest.fetch(name, cfg)
    ingest.write_manifest(cfg, name)
    dvc_hash = versioning.record_raw(cfg) if Path(cfg.data.root) == Path("data") else None
    return {"raw_hash": raw_hash(cfg, name), "dvc_hash": dvc_hash}


@task(name="validate", cache_key_fn=step_key, persist_result=True)
def validate_task(name: str, config_json: str) -> dict[str, Any]:
    from tasks.validate import validate

    return validate(name, _cfg(config_json))


@task(name="embed", cache_key_fn=step_key, persist_result=True)
def embed_task(name: str, config_json: str) -> dict[str, Any]:
    from tasks.embed import embed

    return embed(name, _cfg(config_json))


@task(name="quantize", cache_key_fn=step_key, persist_result=True)
def quantize_task(name: str, config_json: str) -> dict[str, Any]:
    from tasks.quantize import quantize

    return quantize(name, _cfg(config_json))


@task(name="extend")
def extend_task(name: str, config_json: str, champion: Any) -> dict[str, Any]:
    from tasks.quantize import extend

    return extend(name, _cfg(config_json), champion.quantizer, champion.ids)


@task(name="diagnose", cache_key_fn=step_key, persist_result=True)
def diagnose_task(name: str, config_json: str) -> dict[str, Any]:
    from tasks.diagnose import diagnose

    return diagnose(name, _cfg(config_json))


@task(name="recommend")
def recommend_task(name: str, config_json: str, codebook: str) -> dict[str, Any]:
    from tasks.recommend import recommend

    return recommend(name, _cfg(config_json), codebook=Path(codebook))


@task(name="register-codebook", retries=2, retry_delay_seconds=2, cache_key_fn=step_key, persist_result=True)
def register_codebook_task(name: str, config_json: str, diag: dict[str, Any], tags: dict[str, str],
                           parent: str) -> dict[str, Any]:
    """Register the candidate codebook, run the gate against the champion (under the lock), maybe promote."""
    import pandas as pd

    from tasks.diagnose import flat_metrics
    from tasks.gate import gate_codebook, id_churn
    from tasks.register import CodebookModel, Tracker, load_champion, log_and_register, promote

    cfg = _cfg(config_json)
    sem = _data(cfg, "semantic", name)
    tracker = Tracker.attach(cfg, parent, tags)
    run_id = tracker.step("register-codebook", {"quantizer": cfg.quantizer.model_dump(mode="json"),
                                                "gate": cfg.gate.model_dump(mode="json")})
    metrics = flat_metrics(diag)
    candidate_ids = pd.read_parquet(sem / "ids.parquet")
    champion = load_champion(cfg, cfg.mlflow.codebook_model)
    churn, common, new = (id_churn(champion.ids, candidate_ids) if champion is not None
                          else (None, 0, len(candidate_ids)))
    metrics.update({"id_churn": churn if churn is not None else 0.0, "items_known": common, "items_new": new})
    tracker.metrics(run_id, metrics)
    for f in ("diagnostics.json", "metrics.json", "code_usage.png", "k_eff.png", "quantize.json"):
        tracker.artifacts(run_id, sem / f, "diagnostics")
    meta = sem / "codebook_meta.json"
    meta.write_text(json.dumps({"encoder": cfg.embed.model, "dataset": name}) + "\n")
    version = log_and_register(cfg, run_id, cfg.mlflow.codebook_model, CodebookModel(),
                               {"quantizer": str(sem / "quantizer"), "ids": str(sem / "ids.parquet"),
                                "meta": str(meta)},
                               {**tags, "encoder": cfg.embed.model, "dataset": name})
    promoted, report, before = promote(cfg, cfg.mlflow.codebook_model, version,
                                       lambda champ: gate_codebook(diag, cfg.gate, champ, churn))
    for path in report.write(sem):
        tracker.artifacts(run_id, path, "gate")
    tracker.end(run_id)
    return {"version": version, "promoted": promoted, "champion_before": before, "gate": report.to_dict(),
            "explanation": report.explanation(), "churn": churn, "items_known": common, "items_new": new}


@task(name="register-recommender", retries=2, retry_delay_seconds=2)
def register_recommender_task(name: str, config_json: str, rec: dict[str, Any], codebook: str,
                              tags: dict[str, str], parent: str) -> dict[str, Any]:
    from tasks.gate import gate_recommender
    from tasks.recommend import recommend_dir
    from tasks.register import RecommenderModel, Tracker, log_and_register, metric_key, promote

    cfg = _cfg(config_json)
    folder = recommend_dir(cfg, name)
    tracker = Tracker.attach(cfg, parent, tags)
    run_id = tracker.step("register-recommender", {"recommend": cfg.recommend.model_dump(mode="json")})
    tracker.metrics(run_id, rec["metrics"])
    tracker.artifacts(run_id, folder / "history.json", "training")
    tracker.artifacts(run_id, folder / "metrics.json", "training")
    artifacts = {"recommender": str(folder), "items": str(_data(cfg, "processed", name, "items.parquet"))}
    if cfg.recommend.item_repr != "id":
        artifacts["codebook"] = codebook
    version = log_and_register(cfg, run_id, cfg.mlflow.recommender_model, RecommenderModel(), artifacts,
                               {**tags, "dataset": name, "item_repr": cfg.recommend.item_repr})
    protocol = "full_masked" if cfg.recommend.mask_history else "full"
    key = metric_key(f"valid_{protocol}_ndcg@10")
    valid = rec["metrics"][f"valid_{protocol}_ndcg@10"]
    promoted, report, before = promote(cfg, cfg.mlflow.recommender_model, version,
                                       lambda champ: gate_recommender(valid, cfg.gate, (champ or {}).get(key)))
    for path in report.write(folder):
        tracker.artifacts(run_id, path, "gate")
    tracker.end(run_id)
    return {"version": version, "promoted": promoted, "champion_before": before, "gate": report.to_dict(),
            "explanation": report.explanation()}


@flow(name="semid-retrain")
def retrain(config: str = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Run the whole pipeline once on the configured dataset; fails (state Failed) when a gate fails."""
    from tasks.diagnose import flat_metrics
    from tasks.gate import gate_codebook
    from tasks.register import Tracker, git_sha, load_champion

    logger = get_run_logger()
    cfg = load_config(config, overrides)
    name, cj = cfg.data.dataset, cfg.model_dump_json()
    flow_run_id = str(get_run_context().flow_run.id)
    tags = {"git_sha": git_sha(), "config_hash": cfg.digest(), "prefect_flow_run_id": flow_run_id,
            "dataset": name, "mode": cfg.flow.mode}
    steps: dict[str, str] = {}
    TIMINGS.clear()
    snap, steps["ingest"] = _run(ingest_task.with_options(retries=cfg.flow.retries), "ingest", cfg, name)
    tags["data_hash"] = snap["dvc_hash"] or snap["raw_hash"]
    tracker = Tracker(cfg, f"retrain-{name}", tags)
    ok = False
    try:
        dump = cfg.model_dump(mode="json")

        def log_step(step: str, section: str | None, metrics: dict[str, Any], artifacts: tuple[Path, ...] = ()):
            """A nested MLflow run for one step: its config section, its numbers, its files, its cache state."""
            run_id = tracker.step(step, dump[section] if section else None)
            tracker.client.set_tag(run_id, "prefect_state", steps.get(step, "Completed"))
            tracker.metrics(run_id, {**metrics, "seconds": TIMINGS.get(step, float("nan"))})
            for path in artifacts:
                tracker.artifacts(run_id, path, "outputs")
            tracker.end(run_id)

        log_step("ingest", "data", {})
        _, steps["validate"] = _run(validate_task, "validate", cfg, name)
        log_step("validate", "data", _load_stats(cfg, name))
        manifest, steps["embed"] = _run(embed_task, "embed", cfg, name)
        log_step("embed", "embed", {k: manifest.get(k) for k in ("items", "dim", "encoded", "cached")})
        tracker.artifacts(tracker.parent, _data(cfg, "processed", name, "data_docs"), "gx_data_docs")
        (Path(cfg.data.root) / "config.json").write_text(cfg.model_dump_json(indent=2))
        tracker.artifacts(tracker.parent, Path(cfg.data.root) / "config.json", "config")
        refit_reason = None
        champion = load_champion(cfg, cfg.mlflow.codebook_model) if cfg.flow.mode == "incremental" else None
        if champion is not None:
            extended = extend_task(name, cj, champion)
            steps["extend"] = "Completed"
            log_step("extend", "quantizer", extended)
            diag, steps["diagnose"] = _run(diagnose_task, "diagnose", cfg, name)
            absolute = gate_codebook(diag, cfg.gate)
            if not absolute.passed:
                refit_reason = "; ".join(absolute.reasons)
                logger.info("incremental codebook crosses the thresholds (%s): refitting", refit_reason)
        if champion is None or refit_reason:
            fitted, steps["quantize"] = _run(quantize_task, "quantize", cfg, name)
            log_step("quantize", "quantizer", fitted)
            diag, steps["diagnose"] = _run(diagnose_task, "diagnose", cfg, name)
        sem = _data(cfg, "semantic", name)
        log_step("diagnose", "diagnose", flat_metrics(diag),
                 (sem / "diagnostics.json", sem / "code_usage.png", sem / "k_eff.png"))
        codebook, steps["register-codebook"] = _run(register_codebook_task, "register-codebook", cfg, name, diag,
                                                    tags, tracker.parent)
        codebook["refit_reason"] = refit_reason
        summary: dict[str, Any] = {"dataset": name, "mode": cfg.flow.mode, "steps": steps, "codebook": codebook,
                                   "diagnostics": diag, "mlflow_run_id": tracker.parent, "recommender": None}
        if not codebook["promoted"]:
            tracker.client.set_tag(tracker.parent, "gate", "failed")
            raise GateFailed(codebook["explanation"])
        if cfg.flow.train_recommender:
            start = time.perf_counter()
            rec = recommend_task(name, cj, str(sem))
            steps["recommend"] = "Completed"
            TIMINGS["recommend"] = time.perf_counter() - start
            log_step("recommend", "recommend", rec["metrics"], (_data(cfg, "recommend", name, "history.json"),))
            summary["recommender"] = register_recommender_task(name, cj, rec, str(sem), tags, tracker.parent)
            summary["recommender"]["metrics"] = rec["metrics"]
            if not summary["recommender"]["promoted"]:
                tracker.client.set_tag(tracker.parent, "gate", "failed")
                raise GateFailed(summary["recommender"]["explanation"])
        tracker.client.set_tag(tracker.parent, "gate", "passed")
        summary["seconds"] = dict(TIMINGS)
        _write_summary(cfg, summary)
        ok = True
        return summary
    finally:
        tracker.end(tracker.parent, ok)


def _load_stats(cfg: Config, name: str) -> dict[str, Any]:
    path = _data(cfg, "processed", name, "stats.json")
    return json.loads(path.read_text()) if path.exists() else {}


def _write_summary(cfg: Config, summary: dict[str, Any]) -> None:
    out = Path(cfg.data.root) / "runs" / f"{summary['dataset']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({k: v for k, v in summary.items() if k != "diagnostics"}, indent=2, default=str))


def serve(cron: str, config: str = "params.yaml", overrides: list[str] | None = None,
          name: str = "semid-retrain-scheduled") -> None:
    """Serve a cron deployment of the retrain flow against the Prefect server at PREFECT_API_URL (blocks)."""
    if not os.environ.get("PREFECT_API_URL"):
        from tasks.errors import PipelineError

        raise PipelineError("No Prefect server: PREFECT_API_URL is not set.",
                            "start one with `prefect server start --host 127.0.0.1` and export "
                            "PREFECT_API_URL=http://127.0.0.1:4200/api.")
    retrain.serve(name=name, cron=cron, parameters={"config": str(Path(config).resolve()),
                                                    "overrides": list(overrides or [])})
