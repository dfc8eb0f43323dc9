#!/usr/bin/env bash
# The embedded demo: label the bundled datasets with the bundled teacher (Beam + vLLM), train a
# KD student and a CE-only student on the same data and steps, and compare them on held-out data.
set -euo pipefail
cd "$(dirname "$0")/.."
KD=.venv/bin/kd
OUT=${DEMO_OUT:-runs/demo}
STEPS=${DEMO_STEPS:-1000}
TOPK=${DEMO_TOPK:-8}
mkdir -p "$OUT"
for split in train heldout; do
  if [ ! -f "$OUT/labels/$split/manifest.json" ]; then
    $KD label --teacher demo/teacher --input "demo/data/${split}_raw.jsonl" \
      --simplified "demo/data/${split}_simplified.jsonl" --out "$OUT/labels/$split" \
      --top-k "$TOPK" --enforce-eager --summary-json "$OUT/label_${split}_summary.json"
  fi
done
common=(--labels "$OUT/labels/train" --student demo/student.json --steps "$STEPS"
        --batch-size 32 --seed 0)
$KD train "${common[@]}" --out "$OUT/student_kd" --lambda 0.2 --temperature 1.0
$KD train "${common[@]}" --out "$OUT/student_ce" --lambda 1.0
echo
echo "held-out comparison (demo/data/heldout_*), teacher = demo/teacher:"
$KD eval --labels "$OUT/labels/heldout" --student "teacher=demo/teacher" \
  --student "kd=$OUT/student_kd" --student "ce_only=$OUT/student_ce" --json "$OUT/eval.json"
