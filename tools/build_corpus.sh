#!/usr/bin/env bash
# Regenerate the predictor corpus: one contribution sweep per config, two at a time, one thread each (small
# convolutions scale badly across threads). configs/corpus/X.yaml -> corpus/X.json; the test-retest sweeps in
# configs/corpus/retest/X.yaml (X.yaml with another train_seed) -> corpus/retest/X.json (a second sweep: it measures
# the noise, and its mean with corpus/X.json is X's ground truth);
# any other subfolder's configs/corpus/F/X.yaml -> corpus/F/X.json only when named (superseded/: sweeps a protocol
# change replaced, kept as evidence; rate_study/: X swept at another rate, rate_study/retest/ its retests), outside
# the corpus.
# The append-only sweep stores live in corpus/sweeps/ (committed as rows finish). Resumable: rerun to finish killed sweeps; finished rows are never redone.
# Usage: tools/build_corpus.sh [CONFIG ...]   (default: every config, corpus first, then the retests)
# ZEST_EDGE=path/to/zest-edge runs another build (e.g. a frozen copy while the tree changes).
set -euo pipefail
cd "$(dirname "$0")/.."
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(configs/corpus/*.yaml configs/corpus/retest/*.yaml)
printf '%s\n' "${configs[@]}" | OMP_NUM_THREADS=1 ZEST_EDGE="${ZEST_EDGE:-.venv/bin/zest-edge}" xargs -P "${JOBS:-2}" -I{} sh -c '
  name=$(echo {} | sed "s#^.*configs/corpus/##; s#\.yaml\$##")
  mkdir -p "$(dirname corpus/$name)" "$(dirname corpus/sweeps/$name)" "$(dirname runs/sweeps/$name)"
  ${ZEST_EDGE:-.venv/bin/zest-edge} contrib --config {} --out corpus/sweeps/$name --corpus-out corpus/$name.json > runs/sweeps/$name.log 2>&1 \
    && echo "done $name" || { echo "FAILED $name (see runs/sweeps/$name.log)"; exit 1; }'
