#!/usr/bin/env bash
# Train and evaluate every row of one MTMamba ablation table, in sequence, then print the table beside the
# paper's numbers (scripts/collect_table.py).
#
#   bash scripts/run_ablations.sh table2 [--launcher "torchrun --nproc_per_node 8"] [--opts key=value ...]
#
# Rows are configs/ablations/<TABLE>*.yml: TABLE is a name prefix (table2, or table5_g for two rows of Table 5);
# Table 2's four single-task configs form its "Single-task" row.
# --opts go to every run (db_root, out_dir, max_iter, ...); a finished row resumes or re-evaluates only.
set -euo pipefail
cd "$(dirname "$0")/.."
table="${1:?usage: run_ablations.sh TABLE [--launcher CMD] [--opts key=value ...]}"; shift
launcher="${PYTHON:-python}"
opts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --launcher) launcher="$2"; shift 2 ;;
    --opts) shift; opts=("$@"); break ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
shopt -s nullglob
configs=(configs/ablations/"${table}"*.yml)
[ ${#configs[@]} -gt 0 ] || { echo "no configs/ablations/${table}*.yml" >&2; exit 2; }
for cfg in "${configs[@]}"; do
  echo "== ${cfg}"
  run_dir=$(${PYTHON:-python} -c 'import sys; from utils.config import load_config
c = load_config(sys.argv[1], sys.argv[2:]); print(f"{c.out_dir}/{c.version_name}")' "$cfg" "${opts[@]}")
  $launcher main.py --run_mode train --config_exp "$cfg" --opts "${opts[@]}"
  $launcher main.py --run_mode infer --config_exp "$cfg" --trained_model "$run_dir/checkpoints/last.pth" \
    --opts "${opts[@]}"
done
${PYTHON:-python} scripts/collect_table.py --table "$table" --opts "${opts[@]}"
