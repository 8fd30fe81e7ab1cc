"""The validate step's out-of-core engine (data.engine = duckdb): SQL over the snapshot in DuckDB, memory-bounded.

A `Source` is two DuckDB views in the raw tables' shape (user_id, item_id: VARCHAR source ids; timestamp: number;
`_ord`: the row's place in the source order; `_batch`: the file it came from): parquet snapshots are read in place
(`parquet_source`, nothing loaded into Python), anything else is parsed by pandas first and registered
(`frame_source`). From it this module computes the small aggregate tables Great Expectations checks (per batch:
null ids and timestamps, events whose item is not in the catalogue as an anti-join; in total: repeated events,
users per interaction count, item duplicates and text coverage), fetches a few example rows of a failed check,
and writes the canonical tables with the pandas engine's ids and order (`write_canonical`). DuckDB spills to
`temp_dir` beyond `memory_limit`; nothing here holds a table of interactions in Python memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from semid.tasks.config import LocalSource
from semid.tasks.errors import PipelineError

ROW_GROUP = 1 << 20  # rows per parquet row group of the written tables
TS_FIX = ("repair those events at the source (epoch seconds or ISO 8601 dates), or set data.local.timestamp_col "
          "to null to use the file order.")


def connect(memory_limit: str, threads: int | None, temp_dir: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB bounded to `memory_limit`, spilling to `temp_dir`, keeping insertion order."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"memory_limit": memory_limit, "threads": threads or os.cpu_count() or 1,
                                 "temp_directory": str(temp_dir), "preserve_insertion_order": True})
    return con


@dataclass
class Source:
    con: duckdb.DuckDBPyConnection
    inter_extras: list[str] = field(default_factory=list)  # interaction columns kept beside the three ids
    item_extras: list[str] = field(default_factory=list)  # item columns kept beside item_id and text
    text_cols: list[str] = field(default_factory=list)  # the item columns the text is made of (coverage report)
    user_order: str = "_ord"  # users are numbered by their first row under this key (the pandas engine's order)
    users: pd.DataFrame | None = None  # raw user features (small; ml-100k only)


def q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# ----------------------------------------------------------------------------- sources


def require_columns(local: LocalSource, inter_cols: list[str], item_cols: list[str]) -> None:
    """The columns data.local maps must exist in each table (both engines' check and message)."""
    needed_inter = [local.user_col, local.item_col] + ([local.timestamp_col] if local.timestamp_col else [])
    for table, found, cols in (("interactions", inter_cols, needed_inter),
                               ("items", item_cols, [local.item_col, *local.text_cols])):
        missing = [c for c in cols if c not in found]
        if missing:
            raise PipelineError(
                f"missing column(s) {missing} in the {table} table (found {found}).",
                "add the column(s) to the source, or fix the column mapping under data.local in params.yaml.",
            )


def frame_source(con: duckdb.DuckDBPyConnection, interactions: pd.DataFrame, items: pd.DataFrame,
                 text_cols: list[str], users: pd.DataFrame | None = None) -> Source:
    """Register parsed raw tables (source order = row order; users numbered by first appearance)."""
    inter = interactions.reset_index(drop=True)
    con.register("raw_inter_df", inter.assign(_ord=range(len(inter))))
    con.register("raw_items_df", items.reset_index(drop=True).assign(_ord=range(len(items))))
    inter_extras = [c for c in inter.columns if c not in ("user_id", "item_id", "timestamp")]
    item_extras = [c for c in items.columns if c not in ("item_id", "text")]
    extra = "".join(f", {q(c)}" for c in inter_extras)
    con.execute(f"CREATE VIEW inter AS SELECT user_id, item_id, timestamp{extra}, _ord, 'frame' AS _batch "
                "FROM raw_inter_df")
    con.execute("CREATE VIEW items AS SELECT * FROM raw_items_df")
    return Source(con, inter_extras, item_extras, text_cols, "_ord", users)


def _columns(con: duckdb.DuckDBPyConnection, files: list[Path]) -> dict[str, str]:
    rel = con.sql(f"SELECT * FROM read_parquet({_files(files)}, union_by_name = true) LIMIT 0")
    return dict(zip(rel.columns, [str(t) for t in rel.types], strict=True))


def _files(files: list[Path]) -> str:
    return "[" + ", ".join(_lit(str(f)) for f in files) + "]"


def _file_index(files: list[Path]) -> str:
    """A (path, idx) table of the files in their sorted order: a row's source order is (file idx, row number)."""
    rows = ", ".join(f"({_lit(str(f))}, {i})" for i, f in enumerate(files))
    return f"(SELECT * FROM (VALUES {rows}) AS f(path, idx))"


def _id_expr(con: duckdb.DuckDBPyConnection, files: list[Path], col: str, kind: str) -> str:
    """Source ids as VARCHAR like the pandas engine: whole floats lose their '.0', missing stays missing."""
    if kind in ("FLOAT", "DOUBLE") or kind.startswith("DECIMAL"):
        whole = con.execute(f"SELECT bool_and({q(col)} = round({q(col)})) FROM read_parquet({_files(files)}, "
                        "union_by_name = true)").fetchone()[0]
        if whole is not False:
            return f"CAST(CAST({q(col)} AS BIGINT) AS VARCHAR)"
    return f"CAST({q(col)} AS VARCHAR)"


def _ts_expr(con: duckdb.DuckDBPyConnection, files: list[Path], col: str, kind: str) -> str:
    """Numbers as they are; dates/times as epoch seconds; text holding either is converted, anything else is an
    error naming the values (the pandas engine's rule)."""
    c = q(col)
    if kind.startswith(("TIMESTAMP", "DATE")):
        return f"CAST(floor(epoch(CAST({c} AS TIMESTAMPTZ))) AS BIGINT)"
    if kind != "VARCHAR":
        return c
    src = f"read_parquet({_files(files)}, union_by_name = true)"
    present = f"{c} IS NOT NULL AND trim({c}) <> ''"
    bad_n, ints, nums, dates, examples = con.execute(
        f"SELECT count(*) FILTER (TRY_CAST({c} AS DOUBLE) IS NULL AND TRY_CAST({c} AS TIMESTAMPTZ) IS NULL), "
        f"bool_and(TRY_CAST({c} AS BIGINT) IS NOT NULL), count(*) FILTER (TRY_CAST({c} AS DOUBLE) IS NOT NULL), "
        f"count(*) FILTER (TRY_CAST({c} AS DOUBLE) IS NULL AND TRY_CAST({c} AS TIMESTAMPTZ) IS NOT NULL), "
        f"list(DISTINCT {c}) FILTER (TRY_CAST({c} AS DOUBLE) IS NULL AND TRY_CAST({c} AS TIMESTAMPTZ) IS NULL)"
        f"[1:5] FROM {src} WHERE {present}").fetchone()
    if bad_n:
        shown = ", ".join(repr(v) for v in sorted(examples))
        raise PipelineError(f"timestamp column '{col}' has {bad_n} value(s) that are neither numbers nor dates, "
                            f"e.g. {shown}.", TS_FIX)
    if nums and dates:
        raise PipelineError(f"timestamp column '{col}' mixes numbers and dates.", TS_FIX)
    missing = f"CASE WHEN {present} THEN {c} END"
    if dates:
        return f"CAST(floor(epoch(CAST({missing} AS TIMESTAMPTZ))) AS BIGINT)"
    return f"CAST({missing} AS {'BIGINT' if ints is not False else 'DOUBLE'})"


def _scan(files: list[Path]) -> str:
    """The tail of a SELECT over parquet files read in place: each row's source order `_ord` (file index << 40 +
    row number in its file) and its file `_batch`, then the FROM clause (alias r for the file's columns)."""
    return ("(CAST(f.idx AS BIGINT) << 40) + r.file_row_number AS _ord, r.filename AS _batch "
            f"FROM read_parquet({_files(files)}, filename = true, file_row_number = true, union_by_name = true) r "
            f"JOIN {_file_index(files)} f ON r.filename = f.path")


def parquet_source(con: duckdb.DuckDBPyConnection, inter_files: list[Path], item_files: list[Path],
                   local: LocalSource) -> Source:
    """Views over the snapshot's parquet files, read in place. Source order = file order, then row order; the
    pandas engine sorts events by time first, so users are numbered by their first (timestamp, order)."""
    cols = {"interactions": _columns(con, inter_files), "items": _columns(con, item_files)}
    require_columns(local, list(cols["interactions"]), list(cols["items"]))
    ci = cols["interactions"]
    uid = _id_expr(con, inter_files, local.user_col, ci[local.user_col])
    iid = _id_expr(con, inter_files, local.item_col, ci[local.item_col])
    ts = _ts_expr(con, inter_files, local.timestamp_col, ci[local.timestamp_col]) if local.timestamp_col else None
    con.execute(
        f"CREATE VIEW inter_raw AS SELECT {uid} AS user_id, {iid} AS item_id"
        f"{f', {ts} AS timestamp' if ts else ''}, {_scan(inter_files)}")
    if ts:
        con.execute("CREATE VIEW inter AS SELECT * FROM inter_raw")
    else:  # the file order is the time
        con.execute("CREATE VIEW inter AS SELECT user_id, item_id, row_number() OVER (PARTITION BY user_id "
                    "ORDER BY _ord) - 1 AS timestamp, _ord, _batch FROM inter_raw")
    parts = ", ".join(f"CASE WHEN regexp_matches(CAST({q(c)} AS VARCHAR), '\\S') THEN CAST({q(c)} AS VARCHAR) END"
                      for c in local.text_cols)
    item_extras = [c for c in cols["items"] if c not in (local.item_col, "text")]
    keep = "".join(f", r.{q(c)}" for c in item_extras)
    item_id = _id_expr(con, item_files, local.item_col, cols["items"][local.item_col])
    con.execute(
        f"CREATE VIEW items AS SELECT {item_id} AS item_id, concat_ws(';', {parts}) AS text{keep}, "
        f"{_scan(item_files)}")
    user_order = "struct_pack(t := timestamp, o := _ord)" if ts else "_ord"
    return Source(con, [], item_extras, list(local.text_cols), user_order)


# ----------------------------------------------------------------------------- the aggregate tables


def aggregates(src: Source, min_user_interactions: int) -> dict[str, pd.DataFrame]:
    """The small tables Great Expectations checks (each row stands for many source rows)."""
    con = src.con
    con.execute("CREATE TEMP TABLE catalogue AS SELECT DISTINCT item_id FROM items WHERE item_id IS NOT NULL")
    batches = con.execute(
        "SELECT i._batch AS batch, count(*) AS rows, count(*) FILTER (i.user_id IS NULL) AS user_id_nulls, "
        "count(*) FILTER (i.item_id IS NULL) AS item_id_nulls, count(*) FILTER (i.timestamp IS NULL) AS "
        "timestamp_nulls, count(*) FILTER (i.item_id IS NOT NULL AND c.item_id IS NULL) AS unknown_items "
        "FROM inter i LEFT JOIN catalogue c ON i.item_id = c.item_id GROUP BY i._batch ORDER BY min(i._ord)").df()
    repeated = con.execute("SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM inter GROUP BY user_id, "
                           "item_id, timestamp HAVING count(*) > 1)").fetchone()[0]
    totals = pd.DataFrame({"rows": [int(batches["rows"].sum())], "duplicate_events": [int(repeated)]})
    users = con.execute("SELECT n AS n_interactions, count(*) AS users FROM (SELECT count(*) AS n FROM inter WHERE "
                    "user_id IS NOT NULL GROUP BY user_id) GROUP BY n ORDER BY n").df()
    rows, nulls, dup, empty = con.execute(
        "SELECT count(*), count(*) FILTER (item_id IS NULL), (SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n "
        "FROM items WHERE item_id IS NOT NULL GROUP BY item_id HAVING count(*) > 1)), count(*) FILTER "
        "(coalesce(length(text), 0) = 0) FROM items").fetchone()
    items = pd.DataFrame({"rows": [rows], "item_id_nulls": [nulls], "duplicate_ids": [int(dup)],
                          "empty_texts": [empty], "text_coverage": [(rows - empty) / rows if rows else 0.0]})
    return {"interaction_batches": batches.astype({c: "int64" for c in batches.columns if c != "batch"}),
            "interaction_totals": totals, "users_by_count": users.astype("int64"), "item_totals": items}


EXAMPLES = {  # (table, expectation, column) -> the source rows behind a failed aggregate check
    ("interactions", "expect_column_values_to_not_be_null", "user_id"): "SELECT * FROM inter WHERE user_id IS NULL",
    ("interactions", "expect_column_values_to_not_be_null", "item_id"): "SELECT * FROM inter WHERE item_id IS NULL",
    ("interactions", "expect_column_values_to_not_be_null", "timestamp"):
        "SELECT * FROM inter WHERE timestamp IS NULL",
    ("interactions", "expect_column_values_to_be_in_set", "item_id"):
        "SELECT * FROM inter i WHERE item_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM catalogue c WHERE "
        "c.item_id = i.item_id)",
    ("interactions", "expect_compound_columns_to_be_unique", None):
        "SELECT * FROM inter WHERE (user_id, item_id, timestamp) IN (SELECT (user_id, item_id, timestamp) FROM inter "
        "GROUP BY ALL HAVING count(*) > 1)",
    ("users", "expect_column_values_to_be_between", "n_interactions"):
        "SELECT user_id, count(*) AS n_interactions FROM inter WHERE user_id IS NOT NULL GROUP BY user_id "
        "HAVING count(*) < {min_user_interactions}",
    ("items", "expect_column_values_to_not_be_null", "item_id"): "SELECT * FROM items WHERE item_id IS NULL",
    ("items", "expect_column_values_to_be_unique", "item_id"):
        "SELECT * FROM items WHERE item_id IN (SELECT item_id FROM items GROUP BY item_id HAVING count(*) > 1)",
    ("items", "expect_column_value_lengths_to_be_between", "text"):
        "SELECT * FROM items WHERE coalesce(length(text), 0) = 0",
}


def examples(src: Source, key: tuple[str, str, str | None], min_user_interactions: int, n: int = 5) -> list[dict]:
    """Up to `n` source rows behind a failed check, in source order, without the bookkeeping columns."""
    sql = EXAMPLES.get(key)
    if sql is None:
        return []
    sql = sql.format(min_user_interactions=min_user_interactions)
    order = "min(_ord)" if key[0] == "users" else "_ord"
    rows = src.con.execute(f"{sql} ORDER BY {order} LIMIT {n}").df()
    rows = rows.drop(columns=[c for c in ("_ord", "_batch") if c in rows.columns])
    return rows.astype(object).where(rows.notna(), None).to_dict("records")


# ----------------------------------------------------------------------------- canonical tables


def text_filled(src: Source) -> dict[str, int]:
    """Items with a non-blank value in each text column (the coverage report)."""
    cols = [c for c in src.text_cols if c in src.con.sql("SELECT * FROM items LIMIT 0").columns]
    if not cols:
        return {}
    exprs = ", ".join(f"count(*) FILTER (regexp_matches(coalesce(CAST({q(c)} AS VARCHAR), ''), '\\S'))" for c in cols)
    return dict(zip(cols, (int(v) for v in src.con.execute(f"SELECT {exprs} FROM items").fetchone()), strict=True))


def _copy(con: duckdb.DuckDBPyConnection, sql: str, path: Path) -> int:
    """Write the query's rows to a parquet file; returns how many."""
    return con.execute(f"COPY ({sql}) TO {_lit(str(path))} (FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP})").fetchone()[0]


def write_canonical(src: Source, out: Path, empty_texts: int) -> dict[str, Any]:
    """items / item_map (catalogue order), user_map (first appearance), interactions sorted by (user, time, source
    order) with each event's position in its user's history: the pandas engine's tables, written by DuckDB.
    `empty_texts` (items with empty text) comes from `aggregates`, which already scanned the items."""
    con = src.con
    con.execute("CREATE TEMP TABLE item_map AS SELECT CAST(row_number() OVER (ORDER BY _ord) - 1 AS BIGINT) AS "
                "item_id, item_id AS source_id FROM items ORDER BY _ord")
    con.execute(f"CREATE TEMP TABLE user_map AS SELECT CAST(row_number() OVER (ORDER BY k) - 1 AS BIGINT) AS user_id, "
                f"user_id AS source_id FROM (SELECT user_id, min({src.user_order}) AS k FROM inter GROUP BY user_id) "
                "ORDER BY k")
    _copy(con, "SELECT * FROM item_map ORDER BY item_id", out / "item_map.parquet")
    _copy(con, "SELECT * FROM user_map ORDER BY user_id", out / "user_map.parquet")
    keep = "".join(f", i.{q(c)}" for c in src.item_extras)
    _copy(con, f"SELECT m.item_id, i.item_id AS source_id, coalesce(i.text, '') AS text{keep} FROM items i "
               "JOIN item_map m ON i.item_id = m.source_id ORDER BY m.item_id", out / "items.parquet")
    extra = "".join(f", i.{q(c)}" for c in src.inter_extras)
    n_inter = _copy(con, "SELECT u.user_id, m.item_id, i.timestamp, CAST(row_number() OVER (PARTITION BY "
                         f"u.user_id ORDER BY i.timestamp, i._ord) - 1 AS BIGINT) AS position{extra} FROM inter i "
                         "JOIN user_map u ON i.user_id = u.source_id JOIN item_map m ON i.item_id = m.source_id "
                         "ORDER BY u.user_id, i.timestamp, i._ord", out / "interactions.parquet")
    if src.users is not None:
        umap = con.execute("SELECT * FROM user_map").df()
        lookup = pd.Series(umap["user_id"].to_numpy(), index=umap["source_id"].astype(str))
        users = src.users.copy()
        users["user_id"] = users["user_id"].astype(str).map(lookup)
        users = users.dropna(subset=["user_id"]).astype({"user_id": "int64"}).sort_values("user_id")
        users.to_parquet(out / "users.parquet", index=False)
    n_users, n_items = (con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("user_map", "item_map"))
    return {"users": int(n_users), "items": int(n_items), "interactions": int(n_inter),
            "text_coverage": float((n_items - empty_texts) / n_items) if n_items else 0.0}
