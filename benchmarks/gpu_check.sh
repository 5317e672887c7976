#!/usr/bin/env bash
# GPU check of the whole pipeline (see benchmarks/gpu_check.py for what it runs and prints).
#   benchmarks/gpu_check.sh [--ci] [--work DIR] [--cores N]
# --ci: CPU and tiny data, the check's logic in about two minutes (CI runs it).
# Uses the project's .venv when present, else the python on PATH (its bin goes first on PATH).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$here/.venv/bin/python"
[ -x "$python" ] || python="$(command -v python3)"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$(dirname "$python"):$PATH"  # the rules call `pcam` from that environment
exec "$python" "$here/benchmarks/gpu_check.py" "$@"
