#!/usr/bin/env bash
# The CPU training-step profile of MobileNetV2 (batch 32, 224 px): full vs ZEST@5 vs last-5 vs head-only, torch and ORT.
# Usage: tools/run_profile.sh [OUT] [extra zest-edge profile options...]
#   ZEST_RANKING=ranking.json tools/run_profile.sh   -> zest@5 from a ranking (`zest-edge rank ... --out ranking.json`)
#   otherwise the 5 mid-network layers below stand in (rows labelled sel@5).
# --threads 1: on a shared 2-core machine two torch threads stall behind other jobs (10-100x slower steps).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-reports/profile_cpu_mobilenet_v2}
shift || true
MID=features.8.conv.2,features.10.conv.0.0,features.11.conv.2,features.12.conv.1.0,features.13.conv.2
if [[ -n "${ZEST_RANKING:-}" ]]; then SELECT=(--ranking "$ZEST_RANKING"); else SELECT=(--layers "$MID"); fi
exec .venv/bin/zest-edge profile --model mobilenet_v2 --batch-size 32 --resolution 224 --top-k 5 "${SELECT[@]}" \
    --backends torch,ort --steps 10 --warmup 3 --threads "${THREADS:-1}" --out "$OUT" "$@"
