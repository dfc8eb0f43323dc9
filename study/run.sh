#!/usr/bin/env bash
# The distillation study (docs/STUDY.md), through the project's own labelling, training and
# evaluation. `make study` runs it in full: the task experiments (lambda_sweep, context_distillation,
# multi_level) rewrite docs/study/*.md and their plots, the language-model ones (kl_direction,
# fidelity) write their tables, JSON and plots under $OUT/<script> for docs/study/*.md;
# `make study-quick` (QUICK=1) runs every arm of every experiment end to end on a few examples
# and writes only under $OUT (default runs/study-quick): it checks the machinery, not the findings.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "${QUICK:-0}" = 1 ]; then mode=(--quick); OUT=${OUT:-runs/study-quick}
else mode=(); OUT=${OUT:-runs/study}; fi
mkdir -p "$OUT"
# training runs shared by experiments within this invocation (study/fidelity.py: train_shared);
# a fresh directory each time, so that a rerun after a code change never reuses an older run
export KD_STUDY_RUNS="$OUT/shared-runs"
rm -rf "$KD_STUDY_RUNS"
lscpu | grep -E "Model name|^CPU\(s\)" > "$OUT/machine.txt" || true
echo "== experiment 1: KL arithmetic (unit test)"
"$PY" -m pytest -q tests/student_train/test_kl_arithmetic.py
# Experiments 2-6, in the order of docs/STUDY.md.
for script in lambda_sweep kl_direction context_distillation multi_level fidelity; do
  [ -f "study/$script.py" ] || { echo "== $script: not present, skipped"; continue; }
  echo "== $script ${mode[*]:-}"
  start=$(date +%s)
  "$PY" "study/$script.py" "${mode[@]}" --out "$OUT/$script"
  echo "== $script done in $(( $(date +%s) - start )) s"
done
