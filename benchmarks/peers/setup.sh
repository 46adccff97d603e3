#!/usr/bin/env bash
# Create the PyTorch peer environment (benchmarks/peers/.venv), separate from alignlab.
# Idempotent: re-running only installs what is missing. torch is pinned to the CPU
# wheel 2.13.0 first, and a constraints file keeps trl/transformers from upgrading it
# (a plain `pip install torch` would pull GBs of CUDA wheels).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PY="$VENV/bin/python"
TORCH_VERSION="2.13.0"

if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
fi

CONSTRAINTS="$VENV/constraints.txt"
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"

if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
fi
"$PY" -m pip install -q -c "$CONSTRAINTS" trl transformers tokenizers

if "$PY" -m pip list 2>/dev/null | grep -i '^nvidia-'; then
  echo "ERROR: nvidia-* packages were installed into $VENV (expected a CPU-only torch)" >&2
  exit 1
fi

HF_HUB_OFFLINE=1 "$PY" - <<'PYEOF'
import sys, torch, transformers, tokenizers, trl, accelerate, datasets
print(f"python {sys.version.split()[0]}")
for m in (torch, transformers, tokenizers, trl, accelerate, datasets):
    print(f"{m.__name__} {m.__version__}")
print(f"torch.cuda.is_available() = {torch.cuda.is_available()}")
PYEOF
