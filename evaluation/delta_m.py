"""Δm, the mean relative multi-task gain against single-task baselines (EVALUATION.md §8, MODELS.md §0.4).

    Δm = (1/T) · Σ_t (−1)^{l_t} · (M_t − B_t) / B_t × 100 %,   l_t = 1 when lower is better.

Baselines come from versioned YAML files in ``evaluation/baselines/`` that record provenance and units; no
baseline exists for PASCAL-Context and Cityscapes (no single-task row is published for them), and the table says
so instead of printing a number; it says so too for a single-task run (DDD17, DSEC), where Δm does not apply. A
value computed with the validation edge proxy (fast 19-threshold odsF, or without the edge term) is a *Δm proxy*
and is labelled as such everywhere; it is never a paper-comparable Δm.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import yaml

__all__ = ["MetricSpec", "Baseline", "DeltaM", "DELTA_M_SPECS", "DEFAULT_BASELINES", "load_baseline",
           "default_baseline", "delta_m", "truncate_2dp", "format_delta_m"]

logger = logging.getLogger(__name__)

BASELINE_DIR = Path(__file__).resolve().parent / "baselines"


@dataclass(frozen=True)
class MetricSpec:
    """One task's term: which metric, its direction and the canonical unit both sides are converted to."""
    task: str
    metric: str
    higher_is_better: bool
    unit: str


# §8: exactly one metric per task. Percent metrics are normalised to percent before the maths.
DELTA_M_SPECS: dict[str, tuple[MetricSpec, ...]] = {
    "NYUD": (MetricSpec("semseg", "mIoU", True, "percent"), MetricSpec("depth", "rmse", False, "m"),
             MetricSpec("normals", "mErr", False, "deg"), MetricSpec("edge", "odsF", True, "percent")),
    "PASCALContext": (MetricSpec("semseg", "mIoU", True, "percent"), MetricSpec("human_parts", "mIoU", True, "percent"),
                      MetricSpec("sal", "maxF", True, "percent"), MetricSpec("normals", "mErr", False, "deg"),
                      MetricSpec("edge", "odsF", True, "percent")),
}

# Baseline file per dataset; None = no published single-task row (§8). DDD17 and DSEC have one task, semseg
# (MAMBASEG.md §6), where Δm does not apply.
DEFAULT_BASELINES: dict[str, str | None] = {"NYUD": "nyud_mtmamba_table2.yaml", "PASCALContext": None,
                                            "Cityscapes": None, "DDD17": None, "DSEC": None}

_TO_CANONICAL: dict[tuple[str, str], float] = {("fraction", "percent"): 100.0, ("percent", "percent"): 1.0,
                                                ("m", "m"): 1.0, ("deg", "deg"): 1.0}


def _convert(value: float, unit: str, canonical: str, what: str) -> float:
    try:
        return value * _TO_CANONICAL[(unit, canonical)]
    except KeyError:
        raise ValueError(f"{what}: unit {unit!r} cannot be converted to {canonical!r}") from None


@dataclass(frozen=True)
class Baseline:
    """Single-task reference values in canonical units, with where they came from."""
    dataset: str
    values: dict[str, float]  # task -> value in the spec's canonical unit
    provenance: str
    source: str


def load_baseline(path: str | Path) -> Baseline:
    """Read a baseline YAML (keys: version, dataset, provenance, metrics.<task>.{metric,value,unit})."""
    path = Path(path)
    with open(path) as f:
        data = yaml.safe_load(f)
    for key in ("version", "dataset", "provenance", "metrics"):
        if key not in data:
            raise ValueError(f"baseline file {path}: missing key {key!r}")
    dataset = data["dataset"]
    if dataset not in DELTA_M_SPECS:
        raise ValueError(f"baseline file {path}: dataset {dataset!r} not in {sorted(DELTA_M_SPECS)}")
    values = {}
    for spec in DELTA_M_SPECS[dataset]:
        entry = data["metrics"].get(spec.task)
        if entry is None:
            raise ValueError(f"baseline file {path}: no entry for task {spec.task!r}")
        if entry["metric"] != spec.metric:
            raise ValueError(f"baseline file {path}: task {spec.task!r} uses {entry['metric']!r}, Δm needs "
                             f"{spec.metric!r}")
        values[spec.task] = _convert(float(entry["value"]), entry["unit"], spec.unit, f"baseline {path}")
    return Baseline(dataset, values, str(data["provenance"]).strip(), f"{path.name} (version {data['version']})")


def default_baseline(dataset: str) -> Baseline | None:
    """The configured baseline for ``dataset``, or None where none exists (PASCAL-Context, Cityscapes)."""
    if dataset not in DEFAULT_BASELINES:
        raise ValueError(f"dataset {dataset!r} not in {sorted(DEFAULT_BASELINES)}")
    name = DEFAULT_BASELINES[dataset]
    return None if name is None else load_baseline(BASELINE_DIR / name)


@dataclass(frozen=True)
class DeltaM:
    """Result of :func:`delta_m`: value and per-task terms in percent, plus how it was obtained."""
    value: float
    terms: dict[str, float]
    proxy: bool
    baseline_source: str
    excluded: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        return "Δm proxy (validation, not comparable to papers)" if self.proxy else "Δm"


def delta_m(results: Mapping[str, Mapping[str, float]], baseline: Baseline,
            spec: tuple[MetricSpec, ...] | None = None, *, units: Mapping[str, str] | None = None,
            proxy: bool = False) -> DeltaM:
    """Pure Δm (§8).

    Args:
        results: ``{task: {metric: value}}``, e.g. the meters' ``compute()`` outputs per task.
        baseline: single-task reference (:func:`load_baseline` / :func:`default_baseline`).
        spec: metric list; defaults to ``DELTA_M_SPECS[baseline.dataset]``.
        units: ``{task: unit}`` for results not in the spec's canonical unit (e.g. ``{"edge": "fraction"}`` for a
            SEISM odsF of 0.787).
        proxy: True for the validation proxy (fast/19-threshold edge term). Then a missing task is dropped and
            the mean runs over the remaining tasks (§8 option b); otherwise every task is required.
    """
    spec = DELTA_M_SPECS[baseline.dataset] if spec is None else spec
    units = dict(units or {})
    terms: dict[str, float] = {}
    excluded = []
    for s in spec:
        if s.task not in results or s.metric not in results[s.task]:
            if proxy:
                excluded.append(s.task)
                continue
            raise KeyError(f"delta_m: results lack {s.task}.{s.metric}; pass proxy=True to average over the rest")
        value = _convert(float(results[s.task][s.metric]), units.get(s.task, s.unit), s.unit, f"{s.task}.{s.metric}")
        if s.unit == "percent" and 0 < value <= 1.0:  # §8: the MTMamba PASCAL unit bug mixes fractions and %
            logger.warning("delta_m: %s.%s = %.4f looks like a fraction but is treated as percent; pass "
                           "units={%r: 'fraction'} if it is one", s.task, s.metric, value, s.task)
        ref = baseline.values[s.task]
        sign = 1.0 if s.higher_is_better else -1.0
        terms[s.task] = sign * (value - ref) / ref * 100.0
    if not terms:
        raise ValueError("delta_m: no task left to average")
    return DeltaM(sum(terms.values()) / len(terms), terms, proxy, baseline.source, tuple(excluded))


def truncate_2dp(x: float) -> float:
    """MTMamba's display rule (§8): truncate toward zero to two decimals (−1.8772 → −1.87, +2.3819 → +2.38)."""
    return math.trunc(round(x * 100.0, 6)) / 100.0


def format_delta_m(dataset: str, results: Mapping[str, Mapping[str, float]] | None = None, *,
                   baseline: Baseline | None = None, units: Mapping[str, str] | None = None,
                   proxy: bool = False) -> str:
    """One human-readable line for logs and tables; says so when no baseline is configured for ``dataset``, and
    that Δm does not apply when ``results`` hold a single task."""
    baseline = default_baseline(dataset) if baseline is None else baseline
    if baseline is None:
        if results is not None and len(results) == 1:
            return "Δm: n/a (one task; Δm compares a multi-task model with single-task ones)"
        return "Δm: n/a (no published single-task baseline)"
    name = "Δm proxy (validation)" if proxy else "Δm"
    if results is None:
        raise ValueError("format_delta_m: results are required when a baseline exists")
    d = delta_m(results, baseline, units=units, proxy=proxy)
    bad = [t for t, v in d.terms.items() if not math.isfinite(v)]
    if bad:
        return f"{name}: n/a (non-finite metric for {', '.join(bad)})"
    terms = ", ".join(f"{t} {v:+.2f}%" for t, v in d.terms.items())
    extra = f"; without {', '.join(d.excluded)}" if d.excluded else ""
    return (f"{d.label}: {d.value:+.4f}% (paper display {truncate_2dp(d.value):+.2f}) [{terms}{extra}] "
            f"vs {baseline.source}: {baseline.provenance}")
