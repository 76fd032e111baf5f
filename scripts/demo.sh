#!/usr/bin/env bash
# Set everything up, then run the main job on the bundled demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== verirepair check models/demo_advisory.onnx properties/demo_far_is_coc.vnnlib"
verirepair check models/demo_advisory.onnx properties/demo_far_is_coc.vnnlib --timeout 60 || true
echo "== verirepair check models/demo_advisory.onnx properties/demo_near_turn.vnnlib"
verirepair check models/demo_advisory.onnx properties/demo_near_turn.vnnlib --timeout 60
echo "== verirepair repair models/demo_advisory.onnx properties/demo_far_is_coc.vnnlib --preserve properties/demo_near_turn.vnnlib -o /tmp/demo_repaired.onnx"
verirepair repair models/demo_advisory.onnx properties/demo_far_is_coc.vnnlib \
    --preserve properties/demo_near_turn.vnnlib -o /tmp/demo_repaired.onnx \
    --report /tmp/demo_repair_report.json
echo "== verirepair check /tmp/demo_repaired.onnx properties/demo_far_is_coc.vnnlib"
verirepair check /tmp/demo_repaired.onnx properties/demo_far_is_coc.vnnlib --timeout 120
echo "== verirepair check /tmp/demo_repaired.onnx properties/demo_near_turn.vnnlib"
verirepair check /tmp/demo_repaired.onnx properties/demo_near_turn.vnnlib --timeout 120
