"""Gate step: decide whether a registered candidate may replace its dataset's champion, and promote it. The gate
policy lives here: which checks, which metric, the incremental refit rule, the pair rule.

Every check fails closed: a NaN value, a missing trivial baseline, or a champion that lacks the compared metric
fails it with the reason (gate.allow_missing_baseline downgrades the last to a warning in the report).
- Codebook: K_eff/K and active-code share per level, pre-resolution duplicate rate, reconstruction MSE relative to
  predicting the catalogue mean; no regression against the champion on K_eff and duplicate rate; ID churn of
  the known items in incremental mode.
- Recommender: the validation NDCG@10 of the configured protocol beats the most-popular baseline by a relative
  margin, and does not drop below the champion's beyond a tolerance.
- Pair: a codebook that passes waits as the `challenger` while a recommender is trained on it; both champions
  move together, under the dataset's promotion lock and re-checked against the champions current there, or
  neither moves.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from semid.tasks import layout
from semid.tasks.config import Config, GateConfig
from semid.tasks.tracking import (
    CHALLENGER,
    Tracker,
    champion_of,
    client_for,
    load_champion,
    metric_key,
    model_name,
    move_champion,
    promotion_lock,
)

REGISTRY_WORDING = ("It was registered with tag gate=failed and no alias moved; fix the data or the "
                    "configuration (params.yaml) and run again.")


@dataclass
class Check:
    name: str
    value: float | None
    threshold: float | None
    champion: float | None
    passed: bool
    rule: str


@dataclass
class Baseline:
    """The champion a candidate is gated against: its version (None = no champion yet) and its run's metrics."""

    version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class GateReport:
    subject: str  # "codebook" | "recommender"
    checks: list[Check] = field(default_factory=list)
    against: str | None = None  # the champion version gated against

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
        return {"subject": self.subject, "passed": self.passed, "against": self.against, "reasons": self.reasons,
                "checks": [asdict(c) for c in self.checks]}

    def markdown(self) -> str:
        lines = [f"# Gate report: {self.subject} {'PASSED' if self.passed else 'FAILED'}", "",
                 f"Champion gated against: {self.against or 'none'}", "",
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

    def at_least(self, name: str, value: Any, floor: float, rule: str, champion: float | None = None) -> None:
        self._add(name, value, floor, champion, lambda v: v >= floor, rule)

    def at_most(self, name: str, value: Any, ceiling: float, rule: str, champion: float | None = None) -> None:
        self._add(name, value, ceiling, champion, lambda v: v <= ceiling, rule)

    def _add(self, name: str, value: Any, threshold: float, champion: float | None, ok, rule: str) -> None:
        if not _finite(value):
            self.checks.append(Check(name, None, threshold, champion, False, f"{rule}; the value is missing or NaN"))
        else:
            self.checks.append(Check(name, float(value), threshold, champion, bool(ok(float(value))), rule))


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _versus(rep: GateReport, g: GateConfig, baseline: Baseline, name: str, key: str, value: Any, limit, rule: str,
            lower_is_better: bool = False) -> None:
    """A no-regression check against the champion's metric `key`; a missing or NaN one fails (or warns)."""
    champ = baseline.metrics.get(key)
    if not _finite(champ):
        rep.checks.append(Check(name, value if _finite(value) else None, None, None, g.allow_missing_baseline,
                                f"champion v{baseline.version} has no '{key}' to compare against"
                                + ("; allowed by gate.allow_missing_baseline" if g.allow_missing_baseline else
                                   " (a changed metric or config?); set gate.allow_missing_baseline to accept")))
        return
    bound = limit(champ)
    (rep.at_most if lower_is_better else rep.at_least)(name, value, bound, rule, champ)


def gate_codebook(diag: dict[str, Any], g: GateConfig, baseline: Baseline | None = None,
                  churn: float | None = None) -> GateReport:
    """Checks on a diagnostics report (models.diagnostics). baseline None: thresholds only (`semid gate`, DVC,
    the refit rule); Baseline(): no champion yet; churn: the known items' ID churn of an extended codebook."""
    rep = GateReport("codebook", against=None if baseline is None else baseline.version)
    for lv in diag["levels"]:
        i = lv["level"]
        rep.at_least(f"k_eff_ratio_l{i}", lv["k_eff"] / lv["k"], g.min_k_eff_ratio, f">= {g.min_k_eff_ratio}")
        rep.at_least(f"active_share_l{i}", lv["active_share"], g.min_active_share, f">= {g.min_active_share}")
    dup = diag["ids"]["duplicate_rate"]
    rep.at_most("duplicate_rate", dup, g.max_duplicate_rate, f"<= {g.max_duplicate_rate}")
    base_mse = diag.get("recon_mse_baseline")
    ratio = diag["recon_mse"] / base_mse if _finite(base_mse) and base_mse > 0 else None
    rep.at_most("recon_ratio", ratio, g.max_recon_ratio,
                f"<= {g.max_recon_ratio} x the MSE of predicting the catalogue mean")
    if churn is not None:
        rep.at_most("id_churn", churn, g.max_id_churn, f"<= {g.max_id_churn} of the known items' IDs change")
    if baseline is None:
        return rep
    if baseline.version is None:
        rep.checks.append(Check("champion", None, None, None, True, "no champion yet: the first version"))
        return rep
    for lv in diag["levels"]:
        i = lv["level"]
        _versus(rep, g, baseline, f"k_eff_l{i}_vs_champion", f"l{i}_k_eff", lv["k_eff"],
                lambda c: c * (1 - g.k_eff_tolerance), f">= champion x (1 - {g.k_eff_tolerance})")
    _versus(rep, g, baseline, "duplicate_rate_vs_champion", "duplicate_rate", dup,
            lambda c: c + g.duplicate_tolerance, f"<= champion + {g.duplicate_tolerance}", lower_is_better=True)
    return rep


def recommender_metric(cfg: Config) -> str:
    """The gated recommender metric: validation NDCG@10 on the protocol early stopping used."""
    return f"valid_{'full_masked' if cfg.recommend.mask_history else 'full'}_ndcg@10"


def gate_recommender(metrics: dict[str, Any], key: str, g: GateConfig, baseline: Baseline | None = None) -> GateReport:
    """`key` must beat the most-popular baseline (`baseline_<key>` in metrics) by the configured relative margin and
    not drop below the champion's beyond the tolerance."""
    rep = GateReport("recommender", against=None if baseline is None else baseline.version)
    value, popular = metrics.get(key), metrics.get(f"baseline_{key}")
    floor = popular * (1 + g.min_lift_over_popularity) if _finite(popular) else None
    rep.at_least(f"{key}_vs_most_popular", value if floor is not None else None, floor if floor is not None else 0.0,
                 f">= most-popular ({_fmt(popular)}) x (1 + {g.min_lift_over_popularity})")
    if baseline is None:
        return rep
    if baseline.version is None:
        rep.checks.append(Check("champion", None, None, None, True, "no champion yet: the first version"))
        return rep
    _versus(rep, g, baseline, f"{key}_vs_champion", metric_key(key), value, lambda c: c - g.ndcg_tolerance,
            f">= champion - {g.ndcg_tolerance}")
    return rep


def refit_reason(diag: dict[str, Any], g: GateConfig) -> str | None:
    """Incremental mode: the codebook is refit when the grown catalogue fails the absolute thresholds."""
    absolute = gate_codebook(diag, g)
    return None if absolute.passed else "; ".join(absolute.reasons)


def id_churn(champion: pd.DataFrame, candidate: pd.DataFrame) -> tuple[float, int, int]:
    """Share of items (by source_id) present in both ID tables whose semantic ID changed; (churn, common, new)."""
    old = champion.set_index("source_id")["semantic_id"]
    new = candidate.set_index("source_id")["semantic_id"]
    common = old.index.intersection(new.index)
    changed = int((old.loc[common] != new.loc[common]).sum()) if len(common) else 0
    return (changed / len(common) if len(common) else 0.0), len(common), len(new.index.difference(old.index))


# ----------------------------------------------------------------------------- the step


def _record(cfg: Config, model: str, version: str, report: GateReport, run_id: str, tags: dict[str, str],
            parent: str, folder: Path) -> None:
    """Tag the version with the decision and the champion it was gated against; write and log the report."""
    client, _ = client_for(cfg)
    client.set_model_version_tag(model, version, "gate", "passed" if report.passed else "failed")
    client.set_model_version_tag(model, version, "gate_reasons", "; ".join(report.reasons)[:5000] or "-")
    client.set_model_version_tag(model, version, "champion_at_gate", report.against or "none")
    tracker = Tracker.attach(cfg, parent, tags)
    for path in report.write(folder):
        tracker.artifacts(run_id, path, "gate")


def _codebook_report(name: str, cfg: Config, client, diag: dict[str, Any], churn: float | None) -> GateReport:
    version, metrics = champion_of(client, model_name(cfg, "codebook", name))
    return gate_codebook(diag, cfg.gate, Baseline(version, metrics or {}), churn)


def gate_codebook_version(name: str, cfg: Config, registered: dict[str, str], diag: dict[str, Any],
                          extended: bool, tags: dict[str, str], parent: str) -> dict[str, Any]:
    """Gate the registered codebook against its dataset's champion. Passing, it becomes the `challenger` that a
    recommender is trained on (or, with no recommender to follow, the champion, under the promotion lock)."""
    model = model_name(cfg, "codebook", name)
    client, _ = client_for(cfg)
    champion = load_champion(cfg, model)
    candidate = pd.read_parquet(layout.semantic_dir(cfg, name) / "ids.parquet")
    churn, common, new = id_churn(champion.ids, candidate) if champion is not None else (None, 0, len(candidate))
    Tracker.attach(cfg, parent, tags).metrics(registered["run_id"], {
        "id_churn": churn if churn is not None else 0.0, "items_known": common, "items_new": new})
    checked_churn = churn if extended else None  # a refit reassigns IDs by design; the pair keeps them consistent
    alone = not cfg.flow.train_recommender
    with promotion_lock(cfg, name):
        report = _codebook_report(name, cfg, client, diag, checked_churn)
        before = report.against
        if report.passed:
            if alone:
                move_champion(client, model, registered["version"])
            else:
                client.set_registered_model_alias(model, CHALLENGER, registered["version"])
    _record(cfg, model, registered["version"], report, registered["run_id"], tags, parent,
            layout.semantic_dir(cfg, name))
    Tracker.attach(cfg, parent, tags).end(registered["run_id"])
    return {"version": registered["version"], "passed": report.passed, "promoted": report.passed and alone,
            "champion_before": before, "gate": report.to_dict(), "churn": churn, "checked_churn": checked_churn,
            "items_known": common, "items_new": new,
            "explanation": report.summary() if report.passed else f"{report.summary()} {REGISTRY_WORDING}"}


def promote_pair(name: str, cfg: Config, codebook: dict[str, Any], diag: dict[str, Any], registered: dict[str, str],
                 metrics: dict[str, Any], tags: dict[str, str], parent: str) -> dict[str, Any]:
    """Under the dataset's promotion lock: gate the recommender, and the codebook again, against the champions
    current *now*; both champions move together, or neither does. The challenger alias is cleared either way."""
    cb_model, rec_model = model_name(cfg, "codebook", name), model_name(cfg, "recommender", name)
    client, _ = client_for(cfg)
    key = recommender_metric(cfg)
    with promotion_lock(cfg, name):
        cb_report = _codebook_report(name, cfg, client, diag, codebook["checked_churn"])
        version, champ_metrics = champion_of(client, rec_model)
        rec_report = gate_recommender(metrics, key, cfg.gate, Baseline(version, champ_metrics or {}))
        both = cb_report.passed and rec_report.passed
        if both:
            move_champion(client, cb_model, codebook["version"])
            move_champion(client, rec_model, registered["version"])
        client.delete_registered_model_alias(cb_model, CHALLENGER)
    _record(cfg, rec_model, registered["version"], rec_report, registered["run_id"], tags, parent,
            layout.recommend_dir(cfg, name))
    if not cb_report.passed:  # the codebook champion changed while the recommender trained, and now it loses
        _record(cfg, cb_model, codebook["version"], cb_report, codebook.get("run_id", ""), tags, parent,
                layout.semantic_dir(cfg, name))
    elif not both:
        client.set_model_version_tag(cb_model, codebook["version"], "pair", "rejected: the recommender failed")
    Tracker.attach(cfg, parent, tags).end(registered["run_id"])
    failed = rec_report if not rec_report.passed else cb_report
    explanation = (rec_report.summary() + " The codebook and the recommender were promoted together." if both else
                   f"{failed.summary()} {REGISTRY_WORDING}")
    return {"version": registered["version"], "promoted": both, "codebook_promoted": both,
            "champion_before": rec_report.against, "codebook_champion_before": cb_report.against,
            "gate": rec_report.to_dict(), "codebook_gate": cb_report.to_dict(), "explanation": explanation}
