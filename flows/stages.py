"""The pipeline graph, declared once: each stage's step module, data inputs, config sections, outputs.

From this declaration follow
- `dvc.yaml` (`render_dvc_yaml`; `semid stages --write-dvc-yaml` writes it, a test checks the committed file),
  whose code deps are every project source file the stage's step imports, transitively;
- the retrain flow's cache: `StageCache`, a Prefect cache policy whose key covers the stage's input files, its
  config sections, the source of every project module its step imports (transitively, including the models the
  registry names), the versions of the libraries that decide its output, and the task's other inputs;
- one notion of "up to date" for the flow: a cached result is reused only while the outputs it recorded are
  still the ones on disk (`still_valid`); otherwise the task runs again and its cache entry is refreshed.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from semid.tasks import layout
from semid.tasks.config import Config
from semid.tasks.fsutil import files_sha

PACKAGE = Path(__file__).resolve().parents[1]  # the folder holding flows/, tasks/, models/ (the repo root)


@dataclass(frozen=True)
class Stage:
    """One pipeline stage. Paths are relative to data.root with `{name}` for the dataset."""

    name: str  # the DVC stage name
    step: str  # its module in semid.tasks (its code dependency, with everything it imports)
    task: str | None = None  # the flow's Prefect task name (None = the flow does not run this stage as a task)
    cmd: str | None = None  # the `semid` command DVC runs (None = flow only: registry stages)
    deps: tuple[str, ...] = ()
    params: tuple[str, ...] = ()  # config sections
    outs: tuple[str, ...] = ()  # DVC-cached outputs
    records: tuple[str, ...] = ()  # outputs DVC does not cache (small JSON)
    metrics: tuple[str, ...] = ()
    plots: tuple[tuple[str, dict[str, str]], ...] = ()
    untracked: tuple[str, ...] = ()  # outputs the flow checks but DVC tracks elsewhere (data.dvc)
    libs: tuple[str, ...] = ()  # distributions whose version decides the output
    package_data: tuple[str, ...] = ()  # non-Python files of the step (relative to the package)

    def written(self) -> tuple[str, ...]:
        return (*self.untracked, *self.outs, *self.records, *self.metrics, *(p for p, _ in self.plots))


TORCH = ("torch", "numpy", "scipy")
STAGES: tuple[Stage, ...] = (
    Stage("ingest", "ingest", task="ingest", cmd="semid data fetch {name} --no-record", params=("data",),
          untracked=("raw/{name}",), records=("snapshots/{name}.json",), package_data=("tasks/datasets.yaml",)),
    Stage("validate", "validate", task="validate", cmd="semid data validate {name}", deps=("snapshots/{name}.json",),
          params=("data",), outs=("processed/{name}",), libs=("pandas", "pyarrow", "great-expectations")),
    Stage("embed", "embed", task="embed", cmd="semid embed {name}", deps=("processed/{name}/items.parquet",),
          params=("embed",), outs=("features/{name}",),
          libs=("torch", "transformers", "sentence-transformers", "onnxruntime", "onnx", "onnxscript")),
    Stage("quantize", "quantize", task="quantize", cmd="semid quantize {name}",
          deps=("features/{name}/embeddings.npy", "processed/{name}/interactions.parquet"), params=("quantizer",),
          outs=("semantic/{name}/quantizer", "semantic/{name}/codes.npy", "semantic/{name}/ids.parquet"),
          records=("semantic/{name}/quantize.json",), libs=TORCH),
    Stage("diagnose", "diagnose", task="diagnose", cmd="semid diagnose {name}",
          deps=("semantic/{name}/quantizer", "semantic/{name}/ids.parquet", "semantic/{name}/codes.npy",
                "features/{name}/embeddings.npy"),
          params=("diagnose",), records=("semantic/{name}/diagnostics.json", "semantic/{name}/metrics.json"),
          metrics=("semantic/{name}/summary.json",),
          plots=(("semantic/{name}/code_usage.png", {}), ("semantic/{name}/k_eff.png", {})), libs=TORCH),
    Stage("register-codebook", "register", task="register-codebook",
          deps=("semantic/{name}/quantizer", "semantic/{name}/ids.parquet", "semantic/{name}/metrics.json"),
          params=("embed", "mlflow"), libs=("mlflow",)),
    Stage("gate", "gate", task="gate-codebook", cmd="semid gate {name}",
          deps=("semantic/{name}/diagnostics.json", "semantic/{name}/ids.parquet"), params=("gate", "mlflow"),
          records=("semantic/{name}/gate_codebook.json",)),
    Stage("train", "recommend", cmd="semid train {name}",
          deps=("processed/{name}/interactions.parquet", "processed/{name}/items.parquet", "semantic/{name}/quantizer",
                "semantic/{name}/ids.parquet", "semantic/{name}/gate_codebook.json"),
          params=("recommend",), outs=("recommend/{name}/model.safetensors", "recommend/{name}/recommender.json"),
          records=("recommend/{name}/metrics.json",), metrics=("recommend/{name}/summary.json",),
          plots=(("recommend/{name}/history.json", {"x": "epoch", "y": "valid_ndcg@10"}),), libs=TORCH),
)
BY_TASK = {s.task: s for s in STAGES if s.task}


# ----------------------------------------------------------------------------- code dependencies


def _module_file(module: str) -> Path | None:
    """The source file of a semid module (semid.models.rqvae -> <package>/models/rqvae.py), None if none."""
    parts = module.split(".")[1:]
    if not parts or module.split(".")[0] != "semid":
        return None
    base = PACKAGE.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path) -> set[str]:
    """semid modules a file imports anywhere (function-level imports included), and the models it builds by
    name: a call get_model("quantizer", ...) depends on every quantizer the registry names."""
    from semid.models.registry import KINDS

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "get_model" and node.args
              and isinstance(node.args[0], ast.Constant) and node.args[0].value in KINDS):
            found.update(f"semid.models.{t.split(':')[0]}" for t in KINDS[node.args[0].value].values())
    return {m for m in found if m.startswith("semid.") and _module_file(m)}


@cache
def code_modules(step: str) -> tuple[str, ...]:
    """Every project module the step imports, transitively, with the models it builds by name."""
    seen: set[str] = set()
    todo = [f"semid.tasks.{step}"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_imports(_module_file(module)) - seen)
    return tuple(sorted(m for m in seen if _module_file(m).name != "__init__.py"))


def code_files(stage: Stage) -> list[str]:
    """The stage's code dependencies as paths relative to the package root (models/rqvae.py, ...)."""
    files = [str(_module_file(m).relative_to(PACKAGE)) for m in code_modules(stage.step)]
    return sorted(files + list(stage.package_data))


# ----------------------------------------------------------------------------- keys and validity


def _paths(cfg: Config, name: str, rel: tuple[str, ...]) -> list[Path]:
    return [layout.root(cfg) / p.format(name=name) for p in rel]


def _identity(stage: Stage, cfg: Config, name: str) -> str | None:
    """What else names the stage's input: the pinned source (ingest), the tracking store (registry stages)."""
    if stage.name == "ingest":
        if cfg.data.local is not None and cfg.data.local.items is None:
            return None  # SQL source: re-read every run
        if cfg.data.local is None:
            from semid.tasks.datasets import get_spec

            return repr(get_spec(name, cfg))
        return files_sha(layout.local_inputs(cfg) or [])
    if "mlflow" in stage.params:
        from semid.tasks.tracking import tracking_uri

        return tracking_uri(cfg)
    return ""


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def stage_key(stage: Stage, cfg: Config, name: str, inputs: dict[str, Any] | None = None) -> str | None:
    """The stage's cache key (None = never cache)."""
    identity = _identity(stage, cfg, name)
    if identity is None:
        return None
    dump = cfg.model_dump(mode="json")
    blob = {"stage": stage.name, "dataset": name, "inputs": files_sha(_paths(cfg, name, stage.deps)),
            "params": {s: dump[s] for s in stage.params}, "identity": identity,
            "code": {f: hashlib.sha256((PACKAGE / f).read_bytes()).hexdigest() for f in code_files(stage)},
            "libs": {d: _version(d) for d in stage.libs}, "task_inputs": inputs or {}}
    digest = hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return f"semid-{stage.name}-{name}-{digest}"


def outputs_digest(stage: Stage, cfg: Config, name: str) -> str:
    return files_sha(_paths(cfg, name, stage.written()))


def still_valid(stage: Stage, cfg: Config, name: str, result: dict[str, Any]) -> bool:
    """May a cached result be reused? Its outputs must still be on disk as it wrote them; a registered version
    must still be in the registry (and, for the gate, carry its recorded decision)."""
    if any(not p.exists() for p in _paths(cfg, name, stage.written())):
        return False
    if result.get("outputs") != outputs_digest(stage, cfg, name):
        return False
    if "mlflow" in stage.params and "version" in result:
        from semid.tasks.tracking import client_for, model_name

        client, _ = client_for(cfg)
        try:
            mv = client.get_model_version(model_name(cfg, "codebook", name), result["version"])
        except Exception:  # noqa: BLE001 - any lookup failure means: run again
            return False
        if stage.task == "gate-codebook" and mv.tags.get("gate") != ("passed" if result["passed"] else "failed"):
            return False
    return True


@dataclass
class StageCache(CachePolicy):
    """Prefect cache policy for a pipeline stage task: `stage_key` of the task's stage, over its config JSON and
    dataset name, plus its other inputs except the run-specific ones (parent run id, tags, the shard manifests of a
    sharded step: they follow from the stage's inputs)."""

    run_specific: tuple[str, ...] = field(default=("config_json", "name", "tags", "parent", "shards"))

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        cfg = Config.model_validate_json(inputs["config_json"])
        rest = {k: v for k, v in inputs.items() if k not in self.run_specific}
        return stage_key(BY_TASK[task_ctx.task.name], cfg, inputs["name"], rest)


# ----------------------------------------------------------------------------- dvc.yaml


def render_dvc_yaml() -> str:
    """dvc.yaml for the stages that have a command: the same inputs, params and outputs as the flow uses."""
    import yaml

    def data(rel: str) -> str:
        return "data/" + rel.format(name="${data.dataset}")

    stages: dict[str, Any] = {}
    for s in STAGES:
        if s.cmd is None:
            continue
        body: dict[str, Any] = {"cmd": s.cmd.format(name="${data.dataset}"),
                                "deps": [*(data(d) for d in s.deps), *code_files(s)], "params": list(s.params)}
        outs = [data(o) for o in s.outs] + [{data(o): {"cache": False}} for o in s.records]
        if outs:
            body["outs"] = outs
        if s.metrics:
            body["metrics"] = [{data(m): {"cache": False}} for m in s.metrics]
        if s.plots:
            body["plots"] = [{data(p): {"cache": False, **opts}} for p, opts in s.plots]
        stages[s.name] = body
    header = ("# Generated from flows/stages.py by `semid stages --write-dvc-yaml`; edit the declaration, not this "
              "file.\n# Run with the project's venv active (`. .venv/bin/activate`), and SEMID_DATA_MIRROR set where "
              "the public\n# sources are not reachable. Code deps are the sources each step imports.\n")
    return header + yaml.safe_dump({"vars": ["params.yaml"], "stages": stages}, sort_keys=False, width=120)
