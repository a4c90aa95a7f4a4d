#!/usr/bin/env bash
# Regenerate the predictor corpus: one contribution sweep per config in configs/corpus/, two at a time, one
# thread each (small convolutions scale badly across threads). Resumable: rerun to finish a killed sweep.
# Usage: tools/build_corpus.sh [CONFIG ...]   (default: every configs/corpus/*.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(configs/corpus/*.yaml)
mkdir -p corpus runs/sweeps
printf '%s\n' "${configs[@]}" | OMP_NUM_THREADS=1 xargs -P "${JOBS:-2}" -I{} sh -c '
  name=$(basename {} .yaml)
  .venv/bin/zest-edge contrib --config {} --out runs/sweeps/$name --corpus-out corpus/$name.json > runs/sweeps/$name.log 2>&1 \
    && echo "done $name" || { echo "FAILED $name (see runs/sweeps/$name.log)"; exit 1; }'
