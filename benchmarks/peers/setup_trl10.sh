#!/usr/bin/env bash
# Create the trl 1.0 peer environment (benchmarks/peers/.venv-trl10), used by trl_ppo_iter.py only.
#
# trl 1.0.0 is the last release line that still ships the PPO trainer (`trl.experimental.ppo`); the main
# peer env (.venv, trl 1.16) is left alone. transformers is pinned to 5.4.0, the newest release when
# trl 1.0.0 came out (2026-03-30; transformers 5.4.0 is from 2026-03-27), so the pair is one that was
# tested together. Idempotent like setup.sh: torch is pinned to the CPU wheel 2.13.0 first and a
# constraints file keeps the other installs from replacing it (a plain `pip install torch` would pull
# GBs of CUDA wheels); re-running only installs what is missing.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-trl10"
PY="$VENV/bin/python"
TORCH_VERSION="2.13.0"
TRL_VERSION="1.0.0"
TRANSFORMERS_VERSION="5.4.0"

if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
fi

CONSTRAINTS="$VENV/constraints.txt"
printf 'torch==%s\ntransformers==%s\ntrl==%s\n' "$TORCH_VERSION" "$TRANSFORMERS_VERSION" "$TRL_VERSION" > "$CONSTRAINTS"

if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
fi
"$PY" -m pip install -q -c "$CONSTRAINTS" "trl==$TRL_VERSION" "transformers==$TRANSFORMERS_VERSION" tokenizers

if "$PY" -m pip list 2>/dev/null | grep -i '^nvidia-'; then
  echo "ERROR: nvidia-* packages were installed into $VENV (expected a CPU-only torch)" >&2
  exit 1
fi

HF_HUB_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1 "$PY" - <<'PYEOF'
import sys, torch, transformers, tokenizers, trl, accelerate, datasets
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: F401  (fails here if the PPO trainer is missing)
print(f"python {sys.version.split()[0]}")
for m in (torch, transformers, tokenizers, trl, accelerate, datasets):
    print(f"{m.__name__} {m.__version__}")
print(f"torch.cuda.is_available() = {torch.cuda.is_available()}")
PYEOF
