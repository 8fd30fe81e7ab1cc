"""The structure the project promises: one semid namespace, steps that never import each other, a shallow
tasks/ import graph, one place for defaults, dvc.yaml derived from the stage declaration, registered models that
ship only serving code."""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from semid.flows.stages import STAGES, _imports, _module_file, render_dvc_yaml
from semid.tasks.config import Config
from tests.conftest import REPO

TASKS = sorted(f"semid.tasks.{p.stem}" for p in (REPO / "tasks").glob("*.py") if p.stem != "__init__")
STEPS = {f"semid.tasks.{s.step}" for s in STAGES} | {"semid.tasks.rank"}


def _task_imports(module: str) -> set[str]:
    return {m for m in _imports(_module_file(module)) if m in TASKS}


@cache
def _height(module: str) -> int:
    """Levels of the tasks/ import graph below and including `module` (a module importing nothing = 1)."""
    return 1 + max((_height(m) for m in _task_imports(module)), default=0)


def test_steps_never_import_sibling_steps():
    offenders = {s: sorted(_task_imports(s) & STEPS) for s in STEPS if _task_imports(s) & STEPS}
    assert offenders == {}


def test_tasks_import_graph_is_at_most_three_levels_deep():
    deepest = max(TASKS, key=_height)
    assert _height(deepest) <= 3, f"{deepest} sits on an import chain {_height(deepest)} levels deep"


def test_steps_imports_are_detected():  # the check above would pass vacuously if imports were missed
    assert "semid.tasks.layout" in _task_imports("semid.tasks.quantize")
    assert _height("semid.tasks.quantize") == 3


def test_installed_namespace_is_semid_only(tmp_path):
    """`import semid.models` works outside the repo; `import models`, `tasks`, `flows` do not."""
    code = ("import importlib, sys\nimport semid.models.quantizer, semid.tasks.layout, semid.flows.retrain, semid.cli\n"
            "for name in ('models', 'tasks', 'flows'):\n"
            "    try:\n        importlib.import_module(name)\n    except ModuleNotFoundError:\n        continue\n"
            "    sys.exit(f'{name} is importable')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_params_yaml_repeats_every_default(monkeypatch):
    """Defaults live in the typed config; params.yaml sets every key to the same value."""
    monkeypatch.delenv("SEMID_DATA_MIRROR", raising=False)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    defaults = Config().model_dump(mode="json")

    def keys(tree: dict, prefix: str = "") -> set[str]:
        return {k2 for k, v in tree.items() for k2 in (keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v
                                                          else {f"{prefix}{k}"})}

    assert keys(raw) == keys(defaults)
    assert Config.model_validate(raw).model_dump(mode="json") == defaults


def test_dvc_yaml_is_rendered_from_the_stage_declaration():
    assert (REPO / "dvc.yaml").read_text() == render_dvc_yaml(), "run `semid stages --write-dvc-yaml`"


def test_stage_code_deps_follow_the_imports():
    quantize = next(s for s in STAGES if s.name == "quantize")
    from semid.flows.stages import code_files

    files = code_files(quantize)
    assert {"tasks/quantize.py", "models/rqvae.py", "models/kmeans.py", "models/collisions.py"} <= set(files)
    assert not any(f in files for f in ("tasks/validate.py", "models/sasrec.py", "models/dtn.py"))


def test_registered_models_ship_only_models_and_serving(tmp_path):
    from semid.tasks.tracking import serving_code

    pkg = serving_code(tmp_path)
    files = sorted(str(p.relative_to(tmp_path)) for p in pkg.rglob("*.py"))
    assert "semid/tasks/serving.py" in files and "semid/models/sasrec.py" in files
    assert {f for f in files if not f.startswith("semid/models/")} == {"semid/tasks/__init__.py",
                                                                       "semid/tasks/serving.py"}
    assert {m for m in _imports(REPO / "tasks" / "serving.py") if not m.startswith("semid.models")} == set()


def test_models_are_chosen_by_name():
    from semid.models.registry import get_model
    from semid.models.seqrec import SequentialRecommender

    assert issubclass(get_model("recommender", "sasrec"), SequentialRecommender)
    with pytest.raises(ValueError, match="unknown recommender 'gru4rec'"):
        get_model("recommender", "gru4rec")
    from semid.tasks.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="recommend.model"):
        load_config(None, ["recommend.model=gru4rec"])
    assert Path(sys.modules["semid.models.registry"].__file__).parent == REPO / "models"
