#!/usr/bin/env bash
# The demo: no dataset and no GPU needed. Sets up .venv if missing, writes a synthetic NYUD-format dataset,
# trains configs/demo_nyud.yml (tiny Swin, random init, 50 iterations on the CPU), runs inference and prints
# the metric table, then predicts on two of the synthetic images as on one's own photos (maps and a panel per
# image). Everything goes to ${MTL_DEMO_DIR:-/tmp/mtl_demo}.
#
#   bash scripts/demo.sh          # MTMamba on synthetic NYUD (above)
#   bash scripts/demo.sh ddd17    # MambaSeg on synthetic DDD17: the released formats, frames extracted by
#                                 # scripts/prepare_ddd17.py, configs/demo_ddd17.yml (tiny VMamba encoders, random init,
#                                 # 24 iterations on the CPU), then the mIoU / accuracy table of the test split
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-nyud}" in
  nyud | ddd17) ;;
  *) echo "usage: bash scripts/demo.sh [nyud | ddd17]" >&2; exit 2 ;;
esac
source scripts/venv.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
demo="${MTL_DEMO_DIR:-/tmp/mtl_demo}"
opts=("db_root=$demo/data" "out_dir=$demo/runs")
if [ "${1:-nyud}" = ddd17 ]; then
  .venv/bin/python scripts/make_synthetic_dataset.py --dataset ddd17 --out "$demo/data" --frames 6 --force
  .venv/bin/python scripts/prepare_ddd17.py "$demo/data/DDD17"
  .venv/bin/python main.py --run_mode train --config_exp configs/demo_ddd17.yml --no_resume --opts "${opts[@]}"
  exec .venv/bin/python main.py --run_mode infer --config_exp configs/demo_ddd17.yml \
    --trained_model "$demo/runs/demo_ddd17/checkpoints/last.pth" --opts "${opts[@]}"
fi
.venv/bin/python scripts/make_synthetic_dataset.py --dataset nyud --out "$demo/data" --n-train 16 --n-val 4 --force
.venv/bin/python main.py --run_mode train --config_exp configs/demo_nyud.yml --no_resume --opts "${opts[@]}"
.venv/bin/python main.py --run_mode infer --config_exp configs/demo_nyud.yml \
  --trained_model "$demo/runs/demo_nyud/checkpoints/last.pth" --opts "${opts[@]}"
.venv/bin/python main.py --run_mode predict --config_exp configs/demo_nyud.yml \
  --trained_model "$demo/runs/demo_nyud/checkpoints/last.pth" --out "$demo/predict" \
  --inputs "$demo/data/NYUDv2/images/0001.png" "$demo/data/NYUDv2/images/0002.png" --opts "${opts[@]}"
echo "panels (input | semseg | depth | normals | boundaries): $demo/predict/panels/0001.png, $demo/predict/panels/0002.png"
echo "maps per task under $demo/predict/<task>/, class colours in $demo/predict/legend_semseg.png"
