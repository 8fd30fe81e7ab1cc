"""Gate step: decide whether a registered candidate (codebook or recommender) may replace the champion, and
promote it if so. The gate policy lives here: which checks, which metric, the incremental refit rule.

Codebook checks: K_eff/K per level, pre-resolution duplicate rate, active-code share and reconstruction MSE
against fixed thresholds; no regression against the champion on K_eff and duplicate rate (with tolerance);
ID churn (share of items known to both whose semantic ID changed) below a maximum. Recommender check: the
validation NDCG@10 of the configured protocol (history masked or not), above a floor and not below the
champion's beyond a tolerance. The check and the alias move run under the promotion lock; the report is
JSON + markdown either way and is logged into the candidate's run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from semid.tasks import layout
from semid.tasks.config import Config, GateConfig
from semid.tasks.tracking import Tracker, load_champion, metric_key, promote

REGISTRY_WORDING = ("It was registered with tag gate=failed and the champion alias did not move; fix the data or "
                    "the configuration (params.yaml) and run again.")


@dataclass
class Check:
    name: str
    value: float | None
    threshold: float | None
    champion: float | None
    passed: bool
    rule: str


@dataclass
class GateReport:
    subject: str  # "codebook" | "recommender"
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        return [f"{c.name} = {_fmt(c.value)} ({c.rule})" for c in self.checks if not c.passed]

    def summary(self) -> str:
        """One sentence: passed, or which checks failed and by how much."""
        if self.passed:
            return f"The {self.subject} passed all {len(self.checks)} gate checks."
        return (f"The candidate {self.subject} failed {len(self.reasons)} of {len(self.checks)} gate checks: "
                + "; ".join(self.reasons) + ".")

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "passed": self.passed, "reasons": self.reasons,
                "checks": [asdict(c) for c in self.checks]}

    def markdown(self) -> str:
        lines = [f"# Gate report: {self.subject} {'PASSED' if self.passed else 'FAILED'}", "",
                 "| check | value | threshold | champion | rule | result |", "|---|---|---|---|---|---|"]
        for c in self.checks:
            lines.append(f"| {c.name} | {_fmt(c.value)} | {_fmt(c.threshold)} | {_fmt(c.champion)} | {c.rule} | "
                         f"{'pass' if c.passed else '**FAIL**'} |")
        return "\n".join(lines) + "\n"

    def write(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"gate_{self.subject}.json", folder / f"gate_{self.subject}.md"]
        paths[0].write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        paths[1].write_text(self.markdown())
        return paths


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def id_churn(champion: pd.DataFrame, candidate: pd.DataFrame) -> tuple[float, int, int]:
    """Share of items (by source_id) present in both ID tables whose semantic ID changed; (churn, common, new)."""
    old = champion.set_index("source_id")["semantic_id"]
    new = candidate.set_index("source_id")["semantic_id"]
    common = old.index.intersection(new.index)
    changed = int((old.loc[common] != new.loc[common]).sum()) if len(common) else 0
    return (changed / len(common) if len(common) else 0.0), len(common), len(new.index.difference(old.index))


def gate_codebook(diag: dict[str, Any], g: GateConfig, champion: dict[str, float] | None = None,
                  churn: float | None = None) -> GateReport:
    """Checks on a diagnostics dict (tasks.diagnose); `champion` = the champion's flat metrics, if any."""
    rep = GateReport("codebook")
    for lv in diag["levels"]:
        i, ratio = lv["level"], lv["k_eff"] / lv["k"]
        rep.checks.append(Check(f"k_eff_ratio_l{i}", ratio, g.min_k_eff_ratio, None, ratio >= g.min_k_eff_ratio,
                                f">= {g.min_k_eff_ratio}"))
        rep.checks.append(Check(f"active_share_l{i}", lv["active_share"], g.min_active_share, None,
                                lv["active_share"] >= g.min_active_share, f">= {g.min_active_share}"))
        if champion and f"l{i}_k_eff" in champion:
            floor = champion[f"l{i}_k_eff"] * (1 - g.k_eff_tolerance)
            rep.checks.append(Check(f"k_eff_l{i}_vs_champion", lv["k_eff"], floor, champion[f"l{i}_k_eff"],
                                    lv["k_eff"] >= floor, f">= champion x (1 - {g.k_eff_tolerance})"))
    dup = diag["ids"]["duplicate_rate"]
    rep.checks.append(Check("duplicate_rate", dup, g.max_duplicate_rate, None, dup <= g.max_duplicate_rate,
                            f"<= {g.max_duplicate_rate}"))
    if champion and "duplicate_rate" in champion:
        ceiling = champion["duplicate_rate"] + g.duplicate_tolerance
        rep.checks.append(Check("duplicate_rate_vs_champion", dup, ceiling, champion["duplicate_rate"],
                                dup <= ceiling, f"<= champion + {g.duplicate_tolerance}"))
    mse = diag["recon_mse"]
    rep.checks.append(Check("recon_mse", mse, g.max_recon_mse, None, mse <= g.max_recon_mse, f"<= {g.max_recon_mse}"))
    if churn is not None:
        rep.checks.append(Check("id_churn", churn, g.max_id_churn, None, churn <= g.max_id_churn,
                                f"<= {g.max_id_churn}"))
    return rep


def gate_recommender(valid_ndcg: float, g: GateConfig, champion_ndcg: float | None = None) -> GateReport:
    rep = GateReport("recommender")
    rep.checks.append(Check("valid_ndcg@10", valid_ndcg, g.min_valid_ndcg, None, valid_ndcg >= g.min_valid_ndcg,
                            f">= {g.min_valid_ndcg}"))
    if champion_ndcg is not None:
        floor = champion_ndcg - g.ndcg_tolerance
        rep.checks.append(Check("valid_ndcg@10_vs_champion", valid_ndcg, floor, champion_ndcg, valid_ndcg >= floor,
                                f">= champion - {g.ndcg_tolerance}"))
    return rep


# ----------------------------------------------------------------------------- policy


def refit_reason(diag: dict[str, Any], g: GateConfig) -> str | None:
    """Incremental mode: the codebook is refit when the grown catalogue fails the absolute thresholds."""
    absolute = gate_codebook(diag, g)
    return None if absolute.passed else "; ".join(absolute.reasons)


def recommender_metric(cfg: Config) -> str:
    """The gated recommender metric: validation NDCG@10 on the protocol early stopping used."""
    return f"valid_{'full_masked' if cfg.recommend.mask_history else 'full'}_ndcg@10"


# ----------------------------------------------------------------------------- the step


def _decide(cfg: Config, model_name: str, version: str, run_id: str, tags: dict[str, str], parent: str,
            folder: Path, decide) -> dict[str, Any]:
    """Under the promotion lock: gate against the champion, tag the version, move the aliases if it passed;
    write and log the report, close the candidate's run."""
    promoted, report, before = promote(cfg, model_name, version, decide)
    tracker = Tracker.attach(cfg, parent, tags)
    for path in report.write(folder):
        tracker.artifacts(run_id, path, "gate")
    tracker.end(run_id)
    explanation = report.summary() if report.passed else f"{report.summary()} {REGISTRY_WORDING}"
    return {"version": version, "promoted": promoted, "champion_before": before, "gate": report.to_dict(),
            "explanation": explanation}


def gate_codebook_version(name: str, cfg: Config, registered: dict[str, str], diag: dict[str, Any],
                          tags: dict[str, str], parent: str) -> dict[str, Any]:
    """Gate the registered codebook version against the champion (with ID churn) and promote it if it passes."""
    champion = load_champion(cfg, cfg.mlflow.codebook_model)
    candidate = pd.read_parquet(layout.semantic_dir(cfg, name) / "ids.parquet")
    churn, common, new = (id_churn(champion.ids, candidate) if champion is not None
                          else (None, 0, len(candidate)))
    Tracker.attach(cfg, parent, tags).metrics(registered["run_id"], {
        "id_churn": churn if churn is not None else 0.0, "items_known": common, "items_new": new})
    out = _decide(cfg, cfg.mlflow.codebook_model, registered["version"], registered["run_id"], tags, parent,
                  layout.semantic_dir(cfg, name), lambda champ: gate_codebook(diag, cfg.gate, champ, churn))
    return {**out, "churn": churn, "items_known": common, "items_new": new}


def gate_recommender_version(name: str, cfg: Config, registered: dict[str, str], metrics: dict[str, Any],
                             tags: dict[str, str], parent: str) -> dict[str, Any]:
    """Gate the registered recommender version on the gated metric and promote it if it passes."""
    key = recommender_metric(cfg)
    return _decide(cfg, cfg.mlflow.recommender_model, registered["version"], registered["run_id"], tags, parent,
                   layout.recommend_dir(cfg, name),
                   lambda champ: gate_recommender(metrics[key], cfg.gate, (champ or {}).get(metric_key(key))))
