#!/usr/bin/env python
"""Collect the metrics.json of an ablation table's runs into a markdown table beside the paper's numbers.

    python scripts/collect_table.py --table table2 [--opts out_dir=runs ...]

Rows are the files ``configs/ablations/<table>*.yml`` (``--table`` is a name prefix); each run folder is
``out_dir/version_name`` of that config with the same ``--opts`` as the runs. The single-task configs of
Table 2 (one task each) are merged into the one "Single-task" row, as in the paper. Missing runs or metrics
print as "—".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils.config import load_config  # noqa: E402

COLUMNS = (("semseg", "mIoU"), ("depth", "rmse"), ("normals", "mErr"), ("edge", "odsF"))
# MTMamba (ECCV 2024) Tables 2-6, NYUD, Swin-L: mIoU / RMSE / mErr / odsF / Δm (MODELS.md §5.1)
PAPER: dict[str, tuple[float, ...]] = {
    "table2_single_task": (54.32, 0.5166, 19.21, 77.30, 0.00),
    "table2_multitask_2xswin": (53.72, 0.5239, 19.97, 76.50, -1.87),
    "table2_stm1": (54.61, 0.5059, 19.00, 77.40, 0.95),
    "table2_stm2": (54.66, 0.4984, 18.81, 78.20, 1.84),
    "table2_stm3": (54.75, 0.5054, 18.81, 78.20, 1.55),
    "table2_mtmamba": (55.82, 0.5066, 18.63, 78.70, 2.38),
    "table3_mfe_wmsa": (54.57, 0.5109, 19.95, 76.60, -0.79),
    "table4_gate_wmsa": (55.01, 0.4990, 18.73, 78.20, 2.08),
    "table5_g0_shared_only": (55.37, 0.5087, 18.76, 78.30, 1.77),
    "table5_g1_task_only": (54.50, 0.4981, 18.83, 78.20, 1.76),
    "table5_adaptive": (55.82, 0.5066, 18.63, 78.70, 2.38),
    "table6_swin_tiny": (49.25, 0.5299, 19.74, 76.90),
    "table6_swin_small": (51.93, 0.5246, 19.45, 77.80),
    "table6_swin_base": (53.62, 0.5126, 19.28, 77.70),
    "table6_swin_large": (55.82, 0.5066, 18.63, 78.70),
}


def row_name(config: Path) -> str:
    """The paper row of a config: Table 2's single-task files form one row."""
    return "table2_single_task" if config.stem.startswith("table2_single_task_") else config.stem


def collect(table: str, opts: list[str]) -> str:
    configs = sorted((REPO / "configs" / "ablations").glob(f"{table}*.yml"))
    if not configs:
        raise SystemExit(f"no configs/ablations/{table}*.yml; tables: table2 ... table6")
    ours: dict[str, dict[str, dict]] = {}
    for config in configs:
        cfg = load_config(config, opts)
        path = Path(cfg.out_dir) / cfg.version_name / "metrics.json"
        results = json.loads(path.read_text())["results"] if path.is_file() else {}
        ours.setdefault(row_name(config), {}).update(results)
    lines = ["| row | mIoU ↑ | RMSE ↓ | mErr ↓ | odsF ↑ | paper mIoU / RMSE / mErr / odsF / Δm |",
             "|---|---|---|---|---|---|"]
    for row, results in ours.items():
        cells = [f"{results[t][m]:.4g}" if m in results.get(t, {}) else "—" for t, m in COLUMNS]
        paper = " / ".join(f"{v:g}" for v in PAPER.get(row, ())) or "—"
        lines.append(f"| {row} | {' | '.join(cells)} | {paper} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True, help="table2 | table3 | table4 | table5 | table6")
    parser.add_argument("--opts", nargs="*", default=[], help="the --opts the runs used (out_dir, ...)")
    args = parser.parse_args(argv)
    text = collect(args.table, args.opts)
    print(text)
    return text


if __name__ == "__main__":
    main()
