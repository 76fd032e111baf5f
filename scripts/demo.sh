#!/usr/bin/env bash
# Set everything up, then run the main job on the bundled demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== verirepair check models/demo_advisory.onnx properties/demo_far_is_coc.vnnlib"
verirepair check models/demo_advisory.onnx properties/demo_far_is_coc.vnnlib --timeout 60 || true
echo "== verirepair check models/demo_advisory.onnx properties/demo_near_turn.vnnlib"
verirepair check models/demo_advisory.onnx properties/demo_near_turn.vnnlib --timeout 60
