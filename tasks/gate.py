"""Gate step: decide whether a candidate codebook (or recommender) may replace the champion.

Codebook checks: K_eff/K per level, pre-resolution duplicate rate, active-code share and reconstruction MSE
against fixed thresholds; no regression against the champion on K_eff and duplicate rate (with tolerance);
ID churn (share of items known to both whose semantic ID changed) below a maximum. Recommender check: no
drop of validation NDCG@10 below the champion's beyond a tolerance. The report is JSON + markdown either way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.config import GateConfig


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

    def explanation(self) -> str:
        if self.passed:
            return f"The {self.subject} passed all {len(self.checks)} gate checks."
        return (f"The candidate {self.subject} failed {len(self.reasons)} of {len(self.checks)} gate checks: "
                + "; ".join(self.reasons) + ". It was registered with tag gate=failed and the champion alias did "
                "not move; fix the data or the configuration (params.yaml) and run again.")

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
