"""Validate step: parse the raw snapshot, check it with Great Expectations, write the canonical processed dataset.

Parsing yields two tables keyed by *source* ids (strings): interactions(user_id, item_id, timestamp) and
items(item_id, text, raw fields...); canonical integer ids are assigned after validation. On failure the raw
batch, the GX result JSON and a report go to data/quarantine/NAME/<UTC time>/ and nothing under data/processed/
is touched. On success data/processed/NAME/ is replaced atomically with
interactions.parquet, items.parquet, id maps, stats.json and the GX data docs (HTML).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from semid.tasks import layout, validate_sql
from semid.tasks.config import Config, LocalSource
from semid.tasks.datasets import LOCAL_FORMATS, get_spec
from semid.tasks.errors import PipelineError
from semid.tasks.fsutil import staged_dir

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
    "expect_table_row_count_to_be_between": "the table has no rows: check the export or the query (an empty "
    "snapshot never replaces the processed data)",
}
FIXES_BY_COLUMN = {  # where the fix depends on the column, not only on the expectation
    ("expect_column_values_to_not_be_null", "timestamp"): "fill in or drop the events that have no timestamp",
}

logging.getLogger("great_expectations").setLevel(logging.ERROR)


@dataclass
class RawTables:
    interactions: pd.DataFrame  # user_id:str, item_id:str, timestamp:number (+ extra columns)
    items: pd.DataFrame  # item_id:str, text:str (+ raw fields)
    users: pd.DataFrame | None = None  # user_id:str + raw user features


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


def _timestamps(ts: pd.Series, col: str) -> pd.Series:
    """Numbers as they are, else dates/times as epoch seconds; a value that is neither is named (missing stays
    missing, for the not-null check)."""
    if pd.api.types.is_numeric_dtype(ts):
        return ts
    if pd.api.types.is_datetime64_any_dtype(ts):  # a date/time column (parquet TIMESTAMP): epoch seconds, not ns
        utc = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts
        return (utc - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    present = ts.notna() & (ts.astype("string").str.strip() != "")
    numbers = pd.to_numeric(ts, errors="coerce")
    dates = pd.to_datetime(ts.where(present & numbers.isna()), errors="coerce", utc=True, format="mixed")
    fix = validate_sql.TS_FIX
    bad = present & numbers.isna() & dates.isna()
    if bad.any():
        examples = ", ".join(repr(v) for v in ts[bad].astype(str).unique()[:5])
        raise PipelineError(f"timestamp column '{col}' has {int(bad.sum())} value(s) that are neither numbers nor "
                            f"dates, e.g. {examples}.", fix)
    if numbers[present].notna().all():
        return numbers
    if dates[present].notna().all():
        return (dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    raise PipelineError(f"timestamp column '{col}' mixes numbers and dates.", fix)


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
    validate_sql.require_columns(local, list(inter.columns), list(items.columns))
    out_inter = pd.DataFrame({"user_id": inter[local.user_col], "item_id": inter[local.item_col]})
    if local.timestamp_col:
        out_inter["timestamp"] = _timestamps(inter[local.timestamp_col], local.timestamp_col)
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
    folder = layout.raw_dir(cfg, name)
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


# ----------------------------------------------------------------------------- Great Expectations


@dataclass
class ValidationOutcome:
    success: bool
    failures: list[dict[str, Any]]
    result_json: dict[str, Any]
    docs_dir: Path | None
    empty_texts: int | None = None  # duckdb engine: items with empty text, from the aggregate pass


def _suites(spec_has_text: bool, cfg: Config, item_ids: list[str]) -> dict[str, list[Any]]:
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)  # gx resets its loggers on import

    E = gx.expectations
    inter = [
        E.ExpectTableRowCountToBeBetween(min_value=1),
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
        E.ExpectTableRowCountToBeBetween(min_value=1),
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


def _checkpoints(tables: dict[str, tuple[pd.DataFrame, list[Any]]], docs_dir: Path | None) -> dict[str, Any]:
    """One GX checkpoint per table (its frame and expectations); data docs go to docs_dir when given. Returns the
    validation result of each table."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)  # gx resets its loggers on import
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        site = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
        ctx.add_data_docs_site("semid", site)
    source = ctx.data_sources.add_or_update_pandas("semid")
    out: dict[str, Any] = {}
    for table, (frame, expectations) in tables.items():
        suite = ctx.suites.add(gx.ExpectationSuite(name=table, expectations=expectations))
        batch_def = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=table, data=batch_def, suite=suite))
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name=f"semid-{table}",
                validation_definitions=[vd],
                result_format={"result_format": "COMPLETE", "partial_unexpected_count": 5},
            )
        )
        run = checkpoint.run(batch_parameters={"dataframe": frame})
        for vr in run.run_results.values():
            out[table] = vr
    if docs_dir is not None:  # once, from the stored results of all tables (an UpdateDataDocsAction per run builds 3x)
        ctx.build_data_docs(site_names=["semid"])
    return out


def _failed(results: dict[str, Any]) -> list[tuple[str, Any]]:
    """(table, expectation result) of every failed expectation."""
    return [(table, er) for table, vr in results.items() for er in vr.results if not er.success]


def _fix(expectation: str, column: Any) -> str:
    by_column = FIXES_BY_COLUMN.get((expectation, column)) if isinstance(column, str) else None
    return by_column or FIXES.get(expectation, "repair the source data")


def run_expectations(raw: RawTables, cfg: Config, has_text: bool, docs_dir: Path | None) -> ValidationOutcome:
    """Run one GX checkpoint over each of the three tables; data docs go to docs_dir when given."""
    frames = _frames(raw)
    item_ids = [str(i) for i in raw.items["item_id"].dropna().unique()] if "item_id" in raw.items else []
    suites = _suites(has_text, cfg, item_ids)
    results = _checkpoints({t: (frames[t], suites[t]) for t in suites}, docs_dir)
    failures: list[dict[str, Any]] = []
    for table, er in _failed(results):
        conf = er.expectation_config
        res = er.result or {}
        idx = (res.get("unexpected_index_list") or [])[:5]
        examples = frames[table].loc[idx].to_dict("records") if idx else []
        if not examples and res.get("partial_unexpected_list"):
            examples = res["partial_unexpected_list"][:5]
        if er.exception_info and er.exception_info.get("raised_exception"):
            examples = [er.exception_info.get("exception_message", "")]
        column = conf.kwargs.get("column") or conf.kwargs.get("column_list")
        failures.append({"table": table, "expectation": conf.type, "column": column,
                         "count": res.get("unexpected_count"), "observed": res.get("observed_value"),
                         "examples": examples, "fix": _fix(conf.type, column)})
    json_results = {t: vr.to_json_dict() for t, vr in results.items()}
    return ValidationOutcome(not failures, failures, json_results, docs_dir)


# (aggregate table, its column, bounds) -> the row-level check it stands for (table, expectation, column) and the
# aggregate column that counts the failing source rows (None: report the observed value, a row count)
AGGREGATE_CHECKS: list[tuple[str, str, dict[str, Any], tuple[str, str, Any], str | None]] = [
    ("interaction_totals", "rows", {"min_value": 1}, ("interactions", "expect_table_row_count_to_be_between", None),
     None),
    *(("interaction_batches", f"{c}_nulls", {"max_value": 0},
       ("interactions", "expect_column_values_to_not_be_null", c), f"{c}_nulls")
      for c in ("user_id", "item_id", "timestamp")),
    ("interaction_batches", "unknown_items", {"max_value": 0},
     ("interactions", "expect_column_values_to_be_in_set", "item_id"), "unknown_items"),
    ("interaction_totals", "duplicate_events", {"max_value": 0},
     ("interactions", "expect_compound_columns_to_be_unique", ["user_id", "item_id", "timestamp"]), "duplicate_events"),
    ("users_by_count", "n_interactions", {"min_value": "min_user_interactions"},
     ("users", "expect_column_values_to_be_between", "n_interactions"), "users"),
    ("item_totals", "rows", {"min_value": 1}, ("items", "expect_table_row_count_to_be_between", None), None),
    ("item_totals", "item_id_nulls", {"max_value": 0}, ("items", "expect_column_values_to_not_be_null", "item_id"),
     "item_id_nulls"),
    ("item_totals", "duplicate_ids", {"max_value": 0}, ("items", "expect_column_values_to_be_unique", "item_id"),
     "duplicate_ids"),
    ("item_totals", "text_coverage", {"min_value": "min_text_coverage"},
     ("items", "expect_column_value_lengths_to_be_between", "text"), "empty_texts"),
]


def run_aggregate_checks(src: validate_sql.Source, cfg: Config, has_text: bool,
                         docs_dir: Path | None) -> ValidationOutcome:
    """The duckdb engine's checks: GX on the small aggregate tables (per batch and in total), each failure reported
    as the row-level check it stands for, with source rows as examples (the pandas engine's messages)."""
    import great_expectations as gx

    minimum = cfg.data.min_user_interactions
    aggs = validate_sql.aggregates(src, minimum)
    limits = {"min_user_interactions": minimum, "min_text_coverage": cfg.data.min_text_coverage}
    checks = [c for c in AGGREGATE_CHECKS if has_text or c[1] != "text_coverage"]
    expectations: dict[str, list[Any]] = {t: [] for t in aggs}
    meaning: dict[tuple[str, str], tuple[tuple[str, str, Any], str | None]] = {}
    for table, column, bounds, reported, count_col in checks:
        kwargs = {k: limits.get(v, v) if isinstance(v, str) else v for k, v in bounds.items()}
        expectations[table].append(gx.expectations.ExpectColumnValuesToBeBetween(column=column, **kwargs))
        meaning[(table, column)] = (reported, count_col)
    results = _checkpoints({t: (aggs[t], expectations[t]) for t in aggs}, docs_dir)
    failures: list[dict[str, Any]] = []
    for table, er in _failed(results):
        column = er.expectation_config.kwargs["column"]
        (rtable, expectation, rcolumn), count_col = meaning[(table, column)]
        idx = (er.result or {}).get("unexpected_index_list") or []
        frame = aggs[table]
        count = int(frame.loc[idx, count_col].sum()) if count_col and idx else None
        observed = int(frame[column].sum()) if count_col is None else None
        if er.exception_info and er.exception_info.get("raised_exception"):
            found = [er.exception_info.get("exception_message", "")]
        else:
            key = (rtable, expectation, rcolumn if isinstance(rcolumn, str) else None)
            found = validate_sql.examples(src, key, minimum)
        failures.append({"table": rtable, "expectation": expectation, "column": rcolumn, "count": count,
                         "observed": observed, "examples": found, "fix": _fix(expectation, rcolumn)})
    json_results = {t: vr.to_json_dict() for t, vr in results.items()}
    empty = int(aggs["item_totals"]["empty_texts"].iloc[0])
    return ValidationOutcome(not failures, failures, json_results, docs_dir, empty)


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


TEXT_FIELDS = {"atomic": ["title", "genres"], "lcrec": ["title", "brand", "categories"], "sequence": ["text"]}


def _text_cols(cfg: Config, fmt: str) -> list[str]:
    return cfg.data.local.text_cols if fmt == "local" and cfg.data.local is not None else TEXT_FIELDS.get(fmt, [])


def text_column_report(filled: dict[str, int], n_items: int, cfg: Config) -> dict[str, Any]:
    """Coverage of each column the item text is made of (`filled`: items with a non-blank value), and a warning for
    each one empty for more items than data.min_text_coverage allows (the joined text can look fine while one of
    its parts is mostly missing)."""
    coverage, warnings = {}, []
    for col, n in filled.items():
        coverage[col] = n / n_items if n_items else 0.0
        if coverage[col] < cfg.data.min_text_coverage:
            warnings.append(f"text column '{col}' is empty for {1 - coverage[col]:.1%} of the items "
                            f"({n_items - n} of {n_items}); data.min_text_coverage is "
                            f"{cfg.data.min_text_coverage:.0%}")
    return {"text_column_coverage": coverage, "warnings": warnings}


def _filled(raw: RawTables, cols: list[str]) -> dict[str, int]:
    items = raw.items
    return {c: int((items[c].astype("string").fillna("").str.strip().str.len() > 0).sum()) for c in cols if c in items}


def _parse_failed(cfg: Config, name: str, err: PipelineError) -> PipelineError:
    qdir = layout.quarantine(cfg, name, {"success": False, "parse_error": str(err)}, str(err))
    return PipelineError(f"{err.problem} (raw batch quarantined in {qdir}; data/processed/{name} was not changed)",
                         err.fix)


def _reject(cfg: Config, name: str, outcome: ValidationOutcome) -> PipelineError:
    report = {"success": False, "failures": outcome.failures, "results": outcome.result_json}
    stamp_dir = layout.quarantine(cfg, name, report, "")
    msg = _describe(outcome.failures, name, stamp_dir)
    (stamp_dir / "report.txt").write_text(msg + "\n")
    return PipelineError(msg)


def _duckdb_source(con: Any, name: str, cfg: Config, fmt: str) -> validate_sql.Source:
    """Parquet snapshots of a local source are read in place; everything else is parsed by pandas first."""
    folder = layout.raw_dir(cfg, name)
    if fmt == "local" and cfg.data.local is not None:
        files = {what: ([folder / f"{what}.parquet"] if (folder / f"{what}.parquet").exists()
                        else sorted((folder / what).glob("*")) if (folder / what).is_dir() else [])
                 for what in ("items", "interactions")}
        if all(files.values()) and all(p.suffix.lower() == ".parquet" for f in files.values() for p in f):
            return validate_sql.parquet_source(con, files["interactions"], files["items"], cfg.data.local)
    raw = parse(name, cfg)
    return validate_sql.frame_source(con, raw.interactions, raw.items, _text_cols(cfg, fmt), raw.users)


def _out_of_memory(cfg: Config, exc: Exception) -> PipelineError:
    return PipelineError(f"DuckDB ran out of memory or temporary disk space: {str(exc).splitlines()[0]}",
                         f"raise data.duckdb_memory_limit (now {cfg.data.duckdb_memory_limit}) or free disk space "
                         f"under {layout.root(cfg) / 'tmp'}, where DuckDB spills beyond the limit.")


def _validate_duckdb(name: str, cfg: Config, fmt: str, has_text: bool) -> dict[str, Any]:
    """validate() out of core: DuckDB reads the snapshot and writes the processed tables; GX checks aggregates."""
    tmp_root = layout.root(cfg) / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with staged_dir(layout.processed_dir(cfg, name)) as staging, \
            tempfile.TemporaryDirectory(prefix="duckdb-", dir=tmp_root) as tmp:
        con = validate_sql.connect(cfg.data.duckdb_memory_limit, cfg.data.duckdb_threads, Path(tmp))
        try:
            try:
                src = _duckdb_source(con, name, cfg, fmt)
                outcome = run_aggregate_checks(src, cfg, has_text, staging / "data_docs")
            except PipelineError as err:
                raise _parse_failed(cfg, name, err) from None
            except duckdb.OutOfMemoryException as exc:  # not the data's fault: nothing quarantined
                raise _out_of_memory(cfg, exc) from None
            except (duckdb.IOException, duckdb.InvalidInputException) as exc:  # unreadable files; others are bugs
                err = PipelineError(f"DuckDB could not read the snapshot of '{name}': {str(exc).splitlines()[0]}; "
                                    "a file looks truncated or corrupt.",
                                    "repair or re-export the file at its source and fetch again.")
                raise _parse_failed(cfg, name, err) from None
            if not outcome.success:
                raise _reject(cfg, name, outcome)
            try:
                counts = validate_sql.write_canonical(src, staging, outcome.empty_texts)
            except duckdb.OutOfMemoryException as exc:
                raise _out_of_memory(cfg, exc) from None
            report = text_column_report(validate_sql.text_filled(src), counts["items"], cfg)
        finally:
            con.close()
        stats = {"dataset": name, **counts, "raw_sha256": layout.raw_hash(cfg, name), **report}
        (staging / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        (staging / "gx_result.json").write_text(json.dumps(outcome.result_json, indent=2, default=str))
    return stats


def validate(name: str, cfg: Config) -> dict[str, Any]:
    """Parse + validate data/raw/NAME; write data/processed/NAME on success. Returns stats."""
    spec = get_spec(name, cfg)
    if cfg.data.engine == "duckdb":
        return _validate_duckdb(name, cfg, spec.format, spec.has_text)
    try:
        raw = parse(name, cfg)
    except PipelineError as err:
        raise _parse_failed(cfg, name, err) from None
    with staged_dir(layout.processed_dir(cfg, name)) as staging:
        outcome = run_expectations(raw, cfg, spec.has_text, staging / "data_docs")
        if not outcome.success:
            raise _reject(cfg, name, outcome)
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
            "raw_sha256": layout.raw_hash(cfg, name),
            **text_column_report(_filled(raw, _text_cols(cfg, spec.format)), len(raw.items), cfg),
        }
        (staging / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        (staging / "gx_result.json").write_text(json.dumps(outcome.result_json, indent=2, default=str))
    return stats
