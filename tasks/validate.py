"""Validate step: check raw tables with Great Expectations, then write the canonical processed dataset.

On failure the raw batch, the GX result JSON and a report go to data/quarantine/NAME/<UTC time>/ and
nothing under data/processed/ is touched. On success data/processed/NAME/ is replaced atomically with
interactions.parquet, items.parquet, id maps, stats.json and the GX data docs (HTML).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.config import Config
from tasks.errors import PipelineError
from tasks.fsutil import staged_dir
from tasks.ingest import RawTables, get_spec, parse, quarantine, snapshot_files

ID_TYPES = ["StringDtype"]  # ids are normalised to pandas' nullable string dtype by ingest.parse
NUM_TYPES = ["int64", "int32", "Int64", "Int32", "float64", "float32", "Float64", "uint32", "uint64"]

# what to do about each failed expectation, keyed by (table, expectation type)
FIXES = {
    "expect_column_to_exist": "add the column to the source or fix the column mapping under data.local",
    "expect_column_values_to_not_be_null": "drop or repair rows with missing ids at the source",
    "expect_column_values_to_be_unique": "deduplicate the item catalogue so each item id appears once",
    "expect_column_values_to_be_in_set": "add the missing items to the catalogue or drop their interactions",
    "expect_column_value_lengths_to_be_between": "fill in item text, or lower data.min_text_coverage",
    "expect_column_values_to_be_in_type_list": "store ids as strings/integers and timestamps as numbers",
    "expect_compound_columns_to_be_unique": "drop repeated (user, item, timestamp) rows at the source",
    "expect_column_values_to_be_between": "drop users with too few interactions or lower "
    "data.min_user_interactions; for order errors sort each user's events by time",
}

logging.getLogger("great_expectations").setLevel(logging.ERROR)


@dataclass
class ValidationOutcome:
    success: bool
    failures: list[dict[str, Any]]
    result_json: dict[str, Any]
    docs_dir: Path | None


def _suites(spec_has_text: bool, cfg: Config, item_ids: list[str]) -> dict[str, list[Any]]:
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)  # gx resets its loggers on import

    E = gx.expectations
    inter = [
        *(E.ExpectColumnToExist(column=c) for c in ("user_id", "item_id", "timestamp")),
        E.ExpectColumnValuesToNotBeNull(column="user_id"),
        E.ExpectColumnValuesToNotBeNull(column="item_id"),
        E.ExpectColumnValuesToNotBeNull(column="timestamp"),
        E.ExpectColumnValuesToBeInTypeList(column="user_id", type_list=ID_TYPES),
        E.ExpectColumnValuesToBeInTypeList(column="item_id", type_list=ID_TYPES),
        E.ExpectColumnValuesToBeInTypeList(column="timestamp", type_list=NUM_TYPES),
        E.ExpectColumnValuesToBeInSet(column="item_id", value_set=item_ids),
        E.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id", "timestamp"]),
        E.ExpectColumnValuesToBeBetween(column="order_step", min_value=0),
    ]
    items = [
        E.ExpectColumnToExist(column="item_id"),
        E.ExpectColumnToExist(column="text"),
        E.ExpectColumnValuesToNotBeNull(column="item_id"),
        E.ExpectColumnValuesToBeUnique(column="item_id"),
        E.ExpectColumnValuesToBeInTypeList(column="item_id", type_list=ID_TYPES),
    ]
    if spec_has_text:
        items.append(
            E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1, mostly=cfg.data.min_text_coverage)
        )
    users = [E.ExpectColumnValuesToBeBetween(column="n_interactions", min_value=cfg.data.min_user_interactions)]
    return {"interactions": inter, "items": items, "users": users}


def _frames(raw: RawTables) -> dict[str, pd.DataFrame]:
    inter = raw.interactions.copy()
    ts = pd.to_numeric(inter["timestamp"], errors="coerce") if "timestamp" in inter else None
    if ts is not None and "user_id" in inter:
        inter["order_step"] = ts.groupby(inter["user_id"], sort=False, dropna=False).diff().fillna(0)
    else:
        inter["order_step"] = 0.0
    users = (
        inter.groupby("user_id", sort=False, dropna=True).size().rename("n_interactions").reset_index()
        if "user_id" in inter
        else pd.DataFrame({"user_id": [], "n_interactions": []})
    )
    return {"interactions": inter, "items": raw.items, "users": users}


def run_expectations(raw: RawTables, cfg: Config, has_text: bool, docs_dir: Path | None) -> ValidationOutcome:
    """Run one GX checkpoint over the three tables; data docs go to docs_dir when given."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)  # gx resets its loggers on import
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions = []
    if docs_dir is not None:
        site = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
        ctx.add_data_docs_site("semid", site)
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["semid"]))
    frames = _frames(raw)
    item_ids = [str(i) for i in raw.items["item_id"].dropna().unique()] if "item_id" in raw.items else []
    source = ctx.data_sources.add_or_update_pandas("semid")
    failures: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    for table, expectations in _suites(has_text, cfg, item_ids).items():
        suite = ctx.suites.add(gx.ExpectationSuite(name=table, expectations=expectations))
        batch_def = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=table, data=batch_def, suite=suite))
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name=f"semid-{table}",
                validation_definitions=[vd],
                actions=actions,
                result_format={"result_format": "COMPLETE", "partial_unexpected_count": 5},
            )
        )
        run = checkpoint.run(batch_parameters={"dataframe": frames[table]})
        for vr in run.run_results.values():
            results[table] = vr.to_json_dict()
            for er in vr.results:
                if er.success:
                    continue
                conf = er.expectation_config
                res = er.result or {}
                idx = (res.get("unexpected_index_list") or [])[:5]
                examples = frames[table].loc[idx].to_dict("records") if idx else []
                if not examples and res.get("partial_unexpected_list"):
                    examples = res["partial_unexpected_list"][:5]
                if er.exception_info and er.exception_info.get("raised_exception"):
                    examples = [er.exception_info.get("exception_message", "")]
                failures.append(
                    {
                        "table": table,
                        "expectation": conf.type,
                        "column": conf.kwargs.get("column") or conf.kwargs.get("column_list"),
                        "count": res.get("unexpected_count"),
                        "observed": res.get("observed_value"),
                        "examples": examples,
                        "fix": FIXES.get(conf.type, "repair the source data"),
                    }
                )
    return ValidationOutcome(not failures, failures, results, docs_dir)


def _describe(failures: list[dict[str, Any]], name: str, quarantine: Path) -> str:
    lines = [f"Validation of '{name}' failed: {len(failures)} expectation(s) not met."]
    for f in failures:
        what = f"{f['table']}.{f['column']}" if f["column"] else f["table"]
        count = f"{f['count']} rows" if f["count"] is not None else f"observed {f['observed']!r}"
        lines.append(f"  - {what}: {f['expectation']} ({count})")
        for ex in f["examples"]:
            lines.append(f"      e.g. {ex}")
        lines.append(f"      fix: {f['fix']}")
    lines.append(f"Raw batch and GX results quarantined in {quarantine}; data/processed/{name} was not changed.")
    return "\n".join(lines)


def canonicalize(raw: RawTables) -> dict[str, pd.DataFrame]:
    """Assign stable integer ids (catalogue order for items, first appearance for users) and sort."""
    items = raw.items.reset_index(drop=True).copy()
    item_map = pd.DataFrame({"item_id": range(len(items)), "source_id": items["item_id"].astype(str)})
    lookup = pd.Series(item_map["item_id"].to_numpy(), index=item_map["source_id"])
    users_src = pd.unique(raw.interactions["user_id"].astype(str))
    user_map = pd.DataFrame({"user_id": range(len(users_src)), "source_id": users_src})
    ulookup = pd.Series(user_map["user_id"].to_numpy(), index=user_map["source_id"])
    inter = raw.interactions.copy()
    inter["user_id"] = inter["user_id"].astype(str).map(ulookup).astype("int64")
    inter["item_id"] = inter["item_id"].astype(str).map(lookup).astype("int64")
    inter["timestamp"] = pd.to_numeric(inter["timestamp"])
    inter = inter.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    inter.insert(3, "position", inter.groupby("user_id").cumcount().astype("int64"))
    items = items.rename(columns={"item_id": "source_id"})
    items.insert(0, "item_id", range(len(items)))
    items["text"] = items["text"].fillna("").astype(str)
    out = {"interactions": inter, "items": items, "item_map": item_map, "user_map": user_map}
    if raw.users is not None:
        users = raw.users.copy()
        users["user_id"] = users["user_id"].astype(str).map(ulookup)
        out["users"] = users.dropna(subset=["user_id"]).astype({"user_id": "int64"}).sort_values("user_id")
    return out


def raw_hash(cfg: Config, name: str) -> str:
    """One sha256 over the raw snapshot's files (names + contents): the data version a run used."""
    import hashlib

    h = hashlib.sha256()
    for rel, sha in snapshot_files(cfg, name).items():
        h.update(rel.encode())
        h.update(sha.encode())
    return h.hexdigest()


def validate(name: str, cfg: Config) -> dict[str, Any]:
    """Parse + validate data/raw/NAME; write data/processed/NAME on success. Returns stats."""
    spec = get_spec(name, cfg)
    try:
        raw = parse(name, cfg)
    except PipelineError as err:
        qdir = quarantine(cfg, name, {"success": False, "parse_error": str(err)}, str(err))
        raise PipelineError(
            f"{err.problem} (raw batch quarantined in {qdir}; data/processed/{name} was not changed)", err.fix
        ) from None
    with staged_dir(Path(cfg.data.root) / "processed" / name) as staging:
        outcome = run_expectations(raw, cfg, spec.has_text, staging / "data_docs")
        if not outcome.success:
            report = {"success": False, "failures": outcome.failures, "results": outcome.result_json}
            stamp_dir = quarantine(cfg, name, report, "")
            msg = _describe(outcome.failures, name, stamp_dir)
            (stamp_dir / "report.txt").write_text(msg + "\n")
            raise PipelineError(msg)
        tables = canonicalize(raw)
        for tname, frame in tables.items():
            frame.to_parquet(staging / f"{tname}.parquet", index=False)
        inter = tables["interactions"]
        stats = {
            "dataset": name,
            "users": int(inter["user_id"].nunique()),
            "items": int(len(tables["items"])),
            "interactions": int(len(inter)),
            "text_coverage": float((tables["items"]["text"].str.len() > 0).mean()),
            "raw_sha256": raw_hash(cfg, name),
        }
        (staging / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        (staging / "gx_result.json").write_text(json.dumps(outcome.result_json, indent=2, default=str))
    return stats


def load_processed(cfg: Config, name: str) -> dict[str, pd.DataFrame]:
    folder = Path(cfg.data.root) / "processed" / name
    if not (folder / "items.parquet").exists():
        raise PipelineError(f"No processed data for '{name}' in {folder}.", f"run `semid data validate {name}`.")
    return {p.stem: pd.read_parquet(p) for p in folder.glob("*.parquet")}
