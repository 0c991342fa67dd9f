#!/usr/bin/env bash
# CI for the model preparation pipeline (scripts/prepare_model.py, needs TensorFlow):
#   1. a venv .venv-tools with '.[tools,test]' (TensorFlow, tf-keras, tfmot, matplotlib);
#   2. tests/tools: the pipeline end to end on --quick epochs into a temporary
#      repository (sizes, sparsity, accuracy bounds, manifests, served answers),
#      plus the committed zoo/ (provenance recorded, every version validates).
# The daemon's own suite never needs TensorFlow; this job is separate so that it can.
#
# Usage: scripts/ci_tools.sh        (from anywhere; works in the repository root)
# Takes about 3 minutes on a 2-core VM with a warm pip cache (most of it installing TensorFlow).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== .venv-tools: pip install -e '.[tools,test]'"
python3 -m venv .venv-tools
.venv-tools/bin/pip install -q -e '.[tools,test]'

echo "== tests/tools (model preparation pipeline, --quick)"
rc=0
.venv-tools/bin/python -m pytest tests/tools -q || rc=$?
# pytest exits 5 when it collected no tests: a failure here, never a pass.
if [ "$rc" -eq 5 ]; then echo "CI: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
