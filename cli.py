"""The `semid` command line (semid.cli): one typer app over the pipeline steps, the retrain flow and its schedule."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from semid.models.registry import RANKERS, RECOMMENDERS
from semid.tasks import layout
from semid.tasks.config import Config, ConfigError, load_config
from semid.tasks.errors import PipelineError


def _console() -> Console:
    """Rich console. Outside a terminal (a pipe, `| tee`, a CI log) rich would assume 80 columns and cut table
    cells to `l…`; there it gets a width that fits every table (COLUMNS still wins when set)."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=OFFLINE_WIDTH)


OFFLINE_WIDTH = 200
console = _console()
app = typer.Typer(
    help="Retraining pipeline for semantic-ID recommenders.", no_args_is_help=True, pretty_exceptions_show_locals=False
)
data_app = typer.Typer(help="Fetch, list and validate datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="params.yaml to read.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override one key, e.g. --set quantizer.levels=4.")
]
TrainedOpt = Annotated[str, typer.Option("--model", help="the model trained with `semid train --model`")]
UntilOpt = Annotated[str, typer.Option(help="last step: ingest | validate | embed | quantize | diagnose")]


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print user-fixable errors as one clear message (no traceback) and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (PipelineError, ConfigError, RuntimeError) as err:
            from semid.flows.engine import server_error

            # a RuntimeError is one only if it is Prefect's server start-up timeout; others keep their traceback
            clear = err if isinstance(err, PipelineError | ConfigError) else server_error(err)
            if clear is None:
                raise
            console.print(f"[bold red]error:[/] {clear}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _cfg(config: Path, sets: list[str] | None, dataset: str | None = None) -> Config:
    cfg = load_config(config, sets)
    if dataset is not None and dataset != cfg.data.dataset and cfg.data.local is not None:
        cfg.data.local = None  # the local section belongs to the configured dataset only
    return cfg


@data_app.command("fetch")
@friendly
def data_fetch(
    name: str,
    config: ConfigOpt = Path("params.yaml"),
    set_: SetOpt = None,
    record: Annotated[bool, typer.Option(help="Record the snapshot with DVC (data.dvc).")] = True,
) -> None:
    """Snapshot dataset NAME into data/raw/NAME (checksum-verified) and record it with DVC."""
    from semid.tasks import ingest

    cfg = _cfg(config, set_, name)
    with console.status(f"fetching {name}"):
        dest = ingest.fetch(name, cfg)
    console.print(f"[green]fetched[/] {name} -> {dest}")
    if record:
        digest = ingest.record_raw(cfg)
        if digest:
            console.print(f"recorded data/raw with DVC ({digest})")


@data_app.command("validate")
@friendly
def data_validate(name: str, config: ConfigOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Validate data/raw/NAME with Great Expectations and write data/processed/NAME."""
    from semid.tasks import validate

    cfg = _cfg(config, set_, name)
    with console.status(f"validating {name}"):
        stats = validate.validate(name, cfg)
    table = Table(title=f"{name}: validated")
    for key in ("users", "items", "interactions", "text_coverage"):
        table.add_column(key, justify="right")
    counts = (f"{stats[k]:,}" for k in ("users", "items", "interactions"))
    table.add_row(*counts, f"{stats['text_coverage']:.1%}")
    console.print(table)
    for warning in stats.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    console.print(f"processed data and GX data docs: {layout.processed_dir(cfg, name)}")


@data_app.command("ingest")
@friendly
def data_ingest(name: str, config: ConfigOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Fetch (without DVC recording) then validate NAME: the `ingest` + `validate` steps in one go."""
    data_fetch(name, config, set_, record=False)
    data_validate(name, config, set_)


@data_app.command("list")
@friendly
def data_list(config: ConfigOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Table of known datasets: users, items, interactions, text, fetched?"""
    from semid.tasks.datasets import get_spec, registry

    cfg = _cfg(config, set_)
    names = list(registry())
    if cfg.data.local is not None and cfg.data.dataset not in names:
        names.append(cfg.data.dataset)
    table = Table(title="datasets")
    for col in ("name", "users", "items", "interactions", "text", "fetched?"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for name in names:
        spec = get_spec(name, cfg)
        stats = layout.load_stats(cfg, name)
        fetched = layout.raw_dir(cfg, name).exists()
        table.add_row(
            name,
            *(f"{stats[k]:,}" if k in stats else "-" for k in ("users", "items", "interactions")),
            "yes" if spec.has_text else "no",
            "yes" if fetched else "no",
        )
    console.print(table)


@app.command("embed")
@friendly
def embed(name: str, config: ConfigOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Embed item texts of NAME (cached by text hash) into data/features/NAME/."""
    from semid.tasks import embed as step

    manifest = step.embed(name, _cfg(config, set_, name), progress=True)
    console.print(
        f"[green]embedded[/] {manifest['items']:,} items with {manifest['model']} on {manifest['backend']} "
        f"(dim {manifest['dim']}): "
        f"{manifest['encoded']:,} encoded, {manifest['cached']:,} from cache, {manifest['seconds']:.1f} s"
    )


@app.command("quantize")
@friendly
def quantize(
    name: str,
    method: Annotated[str | None, typer.Option(help="rqvae | rqkmeans | drq (default: quantizer.method)")] = None,
    config: ConfigOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Fit the quantizer on NAME's embeddings and write unique semantic IDs to data/semantic/NAME/."""
    from semid.tasks import quantize as step

    sets = list(set_ or []) + ([f"quantizer.method={method}"] if method else [])
    cfg = _cfg(config, sets, name)
    with console.status(f"fitting {cfg.quantizer.method} ({cfg.quantizer.levels} x {cfg.quantizer.codebook_size})"):
        out = step.quantize(name, cfg)
    console.print(
        f"[green]quantized[/] {out['items']:,} items with {out['method']} in {out['fit_seconds']:.1f} s; "
        f"duplicate rate before resolution {out['pre_duplicate_rate']:.2%}, after {out['final_duplicate_rate']:.2%} "
        f"({out['collision']['mode']}, {out['collision']['moved']} moved)"
    )


@app.command("diagnose")
@friendly
def diagnose(name: str, config: ConfigOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Codebook diagnostics for NAME: usage, O_pi, K_eff per level, ID uniqueness (table + JSON + PNGs)."""
    from semid.tasks import diagnose as step

    cfg = _cfg(config, set_, name)
    with console.status("diagnosing"):
        diag = step.diagnose(name, cfg)
    print_diagnostics(diag)


@app.command("gate")
@friendly
def gate(name: str, config: ConfigOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Check NAME's codebook diagnostics against the gate thresholds (params.yaml `gate:`); exit 1 if it fails.

    The retrain flow also compares against the registered champion; this command checks the thresholds only."""
    import json

    from semid.tasks.gate import gate_codebook

    cfg = _cfg(config, set_, name)
    path = layout.semantic_dir(cfg, name) / "diagnostics.json"
    if not path.exists():
        raise PipelineError(f"No diagnostics for '{name}' at {path}.", f"run `semid diagnose {name}` first.")
    report = gate_codebook(json.loads(path.read_text()), cfg.gate)
    report.write(layout.semantic_dir(cfg, name))
    table = Table(title=f"{name}: codebook gate")
    for col in ("check", "value", "rule", "result"):
        table.add_column(col)
    for c in report.checks:
        table.add_row(c.name, "-" if c.value is None else f"{c.value:.4g}", c.rule,
                      "[green]pass[/]" if c.passed else "[red]FAIL[/]")
    console.print(table)
    if not report.passed:
        raise PipelineError(report.summary(),
                            "loosen the thresholds in params.yaml `gate:` or change the quantizer settings.")
    console.print("[green]gate passed[/]")


def print_diagnostics(diag: dict[str, Any]) -> None:
    table = Table(title=f"{diag.get('dataset', '')} {diag['method']} codebook diagnostics")
    for col in ("lvl", "dist", "active", "ppl", "gini", "1/Σπ²", "K_eff", "K_eff/K", "K_gauss", "σ", "MSE"):
        table.add_column(col, justify="right", no_wrap=True)
    for lv in diag["levels"]:
        table.add_row(str(lv["level"]), lv["distance"][:3], f"{lv['active_share']:.0%}", f"{lv['perplexity']:.0f}",
                      f"{lv['gini']:.2f}", f"{lv['inverse_simpson']:.0f}", f"{lv['k_eff']:.0f}",
                      f"{lv['k_eff'] / lv['k']:.0%}", f"{lv['k_eff_gaussian']:.1f}", f"{lv['sigma']:.2g}",
                      f"{lv.get('recon_mse', float('nan')):.1e}")
    console.print(table)
    ids = diag["ids"]
    final = diag.get("final_ids") or {}
    console.print(
        f"IDs before resolution: unique coverage {ids['unique_coverage']:.2%}, duplicate rate "
        f"{ids['duplicate_rate']:.2%}, max items per ID {ids['max_items_per_id']}; final IDs duplicate rate "
        f"{final.get('duplicate_rate', float('nan')):.2%}; reconstruction MSE {diag['recon_mse']:.4g}"
    )


@app.command("train")
@friendly
def train(
    name: str,
    model: Annotated[str, typer.Option(help=f"a recommender ({', '.join(RECOMMENDERS)}) or a ranker "
                                            f"({', '.join(RANKERS)})")] = "sasrec",
    item_repr: Annotated[str | None, typer.Option(help="Recommender item vector: id | semantic | unified")] = None,
    joint: Annotated[bool | None, typer.Option("--joint/--no-joint", help="Train the RQ-VAE inside it.")] = None,
    config: ConfigOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Train a model on NAME: a sequential recommender on the semantic IDs, or a multi-task ranker."""
    sets = list(set_ or [])
    if model in RECOMMENDERS:
        sets += [f"recommend.model={model}"] + ([f"recommend.item_repr={item_repr}"] if item_repr else [])
        sets += [f"recommend.joint={str(joint).lower()}"] if joint is not None else []
        cfg = _cfg(config, sets, name)
        from semid.tasks.recommend import recommend

        with _epoch_progress(f"{model} ({cfg.recommend.item_repr})", cfg.recommend.epochs) as on_epoch:
            out = recommend(name, cfg, on_epoch=on_epoch)
        print_rec_metrics(out["results"], f"{name} {model} ({out['item_repr']}{', joint' if out['joint'] else ''})")
        console.print(f"best epoch {out['metrics']['best_epoch']} of {out['metrics']['epochs']}, "
                      f"{out['metrics']['seconds_per_epoch']:.1f} s/epoch; saved to "
                      f"{layout.recommend_dir(cfg, name)}/")
    elif model in RANKERS:
        cfg = _cfg(config, sets + [f"ranker.model={model}"], name)
        from semid.tasks.rank import rank

        with console.status(f"training {model} on {name}"):
            out = rank(name, cfg)
        print_rank_metrics(name, [out])
    else:
        raise PipelineError(f"Unknown model '{model}'.",
                            f"use --model with one of {', '.join([*RECOMMENDERS, *RANKERS])}.")


@app.command("evaluate")
@friendly
def evaluate(
    name: str,
    model: TrainedOpt = "sasrec",
    config: ConfigOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Re-evaluate the trained model of NAME on the test split and print the metrics table."""
    cfg = _cfg(config, set_, name)
    if model in RECOMMENDERS:
        from semid.tasks.recommend import reevaluate

        out = reevaluate(name, cfg)
        print_rec_metrics(out["results"], f"{name} {out['model']} ({out['item_repr']})")
    elif model in RANKERS:
        from semid.tasks.rank import reevaluate_ranker

        print_rank_metrics(name, [reevaluate_ranker(name, model, cfg)])
    else:
        raise PipelineError(f"Unknown model '{model}'.",
                            f"use --model with one of {', '.join([*RECOMMENDERS, *RANKERS])}.")


def _epoch_progress(label: str, total: int):
    """Context manager yielding an on_epoch callback that drives a rich progress bar."""
    import contextlib

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    @contextlib.contextmanager
    def bar():
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                      TimeElapsedColumn(), console=console, transient=True) as progress:
            task = progress.add_task(label, total=total, info="")

            def on_epoch(row: dict) -> None:
                metric = next((f"{k[6:]} {v:.4f}" for k, v in row.items() if k.startswith("valid_")), "")
                progress.update(task, advance=1, info=f"epoch {row['epoch']}: loss {row['loss']:.3f}, valid {metric}")

            yield on_epoch

    return bar()


def print_rec_metrics(results: dict[str, dict], title: str) -> None:
    table = Table(title=title)
    for col in ("split", "protocol", "R@1", "R@5", "R@10", "R@20", "N@5", "N@10", "N@20", "MRR"):
        table.add_column(col, justify="right", no_wrap=True)
    for split, protos in results.items():
        for proto, m in protos.items():
            label = {"full": "full (unmasked)", "full_masked": "full (history masked)", "sampled99": "1 + 99 sampled"}
            table.add_row(split, label.get(proto, proto), *(f"{m[k]:.4f}" for k in (
                "recall@1", "recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr")))
    console.print(table)


def print_rank_metrics(name: str, outs: list[dict]) -> None:
    table = Table(title=f"{name}: multi-task ranker, test AUC")
    tasks = outs[0]["tasks"]
    for col in ("model", *(f"AUC {t}" for t in tasks), "epochs", "s/epoch"):
        table.add_column(col, justify="right")
    for out in outs:
        m = out["metrics"]
        aucs = (m.get(f"test_auc_{t}") for t in tasks)
        table.add_row(out["model"], *("-" if a is None else f"{a:.4f}" for a in aucs), str(m["epochs"]),
                      f"{m['seconds_per_epoch']:.1f}")
    console.print(table)


@app.command("run")
@friendly
def run(
    config: ConfigOpt = Path("params.yaml"),
    set_: SetOpt = None,
    mode: Annotated[str | None, typer.Option(help="retrain | incremental (default: flow.mode)")] = None,
) -> None:
    """Run the retrain flow once, in-process, on the configured dataset (default ml-100k)."""
    _quiet_libraries()
    sets = list(set_ or []) + ([f"flow.mode={mode}"] if mode else [])
    cfg = _cfg(config, sets)
    from semid.flows.engine import console_reports_once, on_engine
    from semid.flows.retrain import GateFailed, retrain

    console_reports_once(PipelineError, GateFailed)

    console.print(f"[bold]semid retrain[/] on {cfg.data.dataset} ({cfg.flow.mode} mode)")
    try:
        summary = on_engine(retrain, cfg)(config=str(config), overrides=sets)
    except GateFailed as err:
        console.print(f"[bold red]gate failed:[/] {err}", highlight=False, soft_wrap=True)
        _mlflow_hint(cfg)
        raise typer.Exit(1) from None
    print_run_summary(summary)
    _mlflow_hint(cfg)


def _quiet_libraries() -> None:
    import logging

    from semid.flows.engine import quiet_prefect

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    quiet_prefect()
    for name in ("mlflow", "alembic", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _mlflow_hint(cfg: Config) -> None:
    from semid.tasks.tracking import tracking_uri

    console.print(f"look at it: [cyan]mlflow ui --backend-store-uri {tracking_uri(cfg)}[/]")


def print_run_summary(summary: dict[str, Any]) -> None:
    cb = summary["codebook"]
    secs = summary.get("seconds", {})
    steps = ", ".join(f"{k} {v.lower()}" + (f" {secs[k]:.0f}s" if k in secs else "")
                      for k, v in summary["steps"].items())
    console.print(f"steps: {steps}")
    print_diagnostics(summary["diagnostics"])
    verdict = "[green]passed[/]" if cb["gate"]["passed"] else "[red]failed[/]"
    console.print(f"codebook gate {verdict}: {cb['explanation']}")
    if cb.get("churn") is not None:
        console.print(f"ID churn vs champion {cb['churn']:.2%} ({cb['items_known']:,} known items, "
                      f"{cb['items_new']:,} new)")
    console.print(f"semid-codebook version {cb['version']}: "
                  f"{'champion' if cb['promoted'] else 'not promoted'} (champion before: {cb['champion_before']})")
    rec = summary.get("recommender")
    if rec:
        m = rec["metrics"]
        console.print(
            f"recommender test: Recall@10 {m['test_full_masked_recall@10']:.4f}, NDCG@10 "
            f"{m['test_full_masked_ndcg@10']:.4f} (full ranking, history masked); unmasked Recall@10 "
            f"{m['test_full_recall@10']:.4f}, NDCG@10 {m['test_full_ndcg@10']:.4f}")
        console.print(f"semid-recommender version {rec['version']}: "
                      f"{'champion' if rec['promoted'] else 'not promoted'} (champion before: "
                      f"{rec['champion_before']}); gate: {rec['explanation']}")


@app.command("prepare")
@friendly
def prepare(
    names: Annotated[list[str], typer.Argument(help="One or more datasets.")],
    config: ConfigOpt = Path("params.yaml"),
    set_: SetOpt = None,
    until: UntilOpt = "diagnose",
) -> None:
    """Run the data steps for each dataset up to --until, reusing every output that is up to date (the flow's
    cache): what a benchmark or a notebook needs before it reads data/."""
    _quiet_libraries()
    from semid.flows.engine import console_reports_once, on_engine
    from semid.flows.retrain import prepare as prepare_flow

    console_reports_once(PipelineError)

    for name in names:
        sets = list(set_ or []) + [f"data.dataset={name}"]
        cfg = _cfg(config, sets)  # fail early on a bad config
        out = on_engine(prepare_flow, cfg)(config=str(config), overrides=sets, until=until)
        console.print(f"{name}: " + ", ".join(f"{k} {v.lower()} {out['seconds'][k]:.0f}s"
                                              for k, v in out["steps"].items()))


@app.command("serve")
@friendly
def serve(
    name: str,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (--host to change).")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(help="Scoring server worker processes.")] = 1,
    config: ConfigOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Serve NAME's champion recommender with MLflow's scoring server: GET /ping, and POST /invocations with
    dataframe_records, each a history (a list of item ids, oldest first) and optionally k and mask_history."""
    _quiet_libraries()
    cfg = _cfg(config, set_, name)
    from semid.tasks.tracking import CHAMPION, champion_version, client_for, model_name, tracking_uri

    model = model_name(cfg, "recommender", name)
    client, _ = client_for(cfg)
    if champion_version(client, model) is None:
        raise PipelineError(f"{model} has no champion in {tracking_uri(cfg)}.",
                            f"run `semid run --set data.dataset={name}` to train and promote one.")
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    args = [mlflow_bin, "models", "serve", "-m", f"models:/{model}@{CHAMPION}", "--env-manager", "local",
            "--host", host, "--port", str(port), "--workers", str(workers)]
    console.print(f"serving {model}@{CHAMPION} on http://{host}:{port} (/ping, /invocations)")
    sys.stdout.flush()
    bin_dir = str(Path(sys.executable).parent)  # mlflow starts `uvicorn` from PATH: this environment's
    os.execve(mlflow_bin, args, {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(cfg),
                                 "MLFLOW_REGISTRY_URI": tracking_uri(cfg),
                                 "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"})


@app.command("schedule")
@friendly
def schedule(
    cron: Annotated[str, typer.Option(help="Cron schedule, e.g. '0 3 * * 1' (Mondays 03:00).")] = "0 3 * * 1",
    name: Annotated[str, typer.Option(help="Deployment name.")] = "semid-retrain-scheduled",
    config: ConfigOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Serve a cron deployment of the retrain flow against the Prefect server at PREFECT_API_URL (blocks)."""
    _quiet_libraries()
    _cfg(config, set_)  # fail early on a bad config
    from semid.flows.schedule import serve

    console.print(f"serving deployment 'semid-retrain/{name}' on cron '{cron}' (Ctrl-C to stop)")
    serve(cron, str(config), list(set_ or []), name)


@app.command("stages")
@friendly
def stages(
    write_dvc_yaml: Annotated[bool, typer.Option("--write-dvc-yaml", help="Write dvc.yaml from the declaration.")]
    = False,
) -> None:
    """The pipeline graph (flows/stages.py): each stage's inputs, config sections, outputs and code files."""
    from semid.flows.stages import PACKAGE, STAGES, code_files, render_dvc_yaml

    if write_dvc_yaml:
        (PACKAGE / "dvc.yaml").write_text(render_dvc_yaml())
        console.print(f"wrote {PACKAGE / 'dvc.yaml'}")
        return
    table = Table(title="pipeline stages")
    for col in ("stage", "flow task", "inputs", "config", "outputs", "code files"):
        table.add_column(col)
    for s in STAGES:
        table.add_row(s.name, s.task or "-", "\n".join(s.deps) or "-", ", ".join(s.params),
                      "\n".join(s.written()) or "-", str(len(code_files(s))))
    console.print(table)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
