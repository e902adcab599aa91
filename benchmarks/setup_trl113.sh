#!/usr/bin/env bash
# Recreate benchmarks/.venv-trl113: an isolated venv with TRL 1.13.0 for the reference Nash-MD benchmark
# (benchmarks/trl113_nash_md_step.py). Idempotent: exits early if the venv already imports trl 1.13.0.
#
#   bash benchmarks/setup_trl113.sh            # create / repair
#   FORCE=1 bash benchmarks/setup_trl113.sh    # rebuild from scratch
#   TRL113_VENV=/some/dir bash benchmarks/setup_trl113.sh   # build elsewhere
#
# torch is installed first and pinned to exactly 2.13.0 (the local CPU wheel); every other package is
# pinned to the exact versions in requirements-trl113.lock.txt so pip never resolves another torch.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${TRL113_VENV:-$HERE/.venv-trl113}"
LOCK="$HERE/requirements-trl113.lock.txt"
PY="${PYTHON:-python3.11}"
export HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

check() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import os
os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
import torch, trl, transformers
from trl.experimental.nash_md import NashMDTrainer, NashMDConfig  # noqa: F401
assert trl.__version__ == "1.13.0", trl.__version__
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"trl {trl.__version__} / transformers {transformers.__version__} / torch {torch.__version__}")
PY
}

if [[ "${FORCE:-0}" == "1" ]]; then
  rm -rf "$VENV"
elif [[ -x "$VENV/bin/python" ]] && check; then
  echo "setup_trl113: $VENV already OK"
  exit 0
fi

[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
# 1) torch first, exact version (local CPU wheel), 2) everything else exactly pinned.
"$VENV/bin/pip" install --quiet "torch==2.13.0"
"$VENV/bin/pip" install --quiet -r "$LOCK"

TORCH_LINE="$("$VENV/bin/pip" list 2>/dev/null | grep -E '^torch ' || true)"
if ! [[ "$TORCH_LINE" =~ ^torch\ +2\.13\.0 ]]; then
  echo "setup_trl113: wrong torch in $VENV" >&2
  echo "$TORCH_LINE" >&2
  exit 1
fi
check || { echo "setup_trl113: trl 1.13.0 import check failed" >&2; exit 1; }
echo "setup_trl113: done ($VENV)"
