#!/usr/bin/env bash
# Create the virtual environment and install repwam with every extra the demo and tests use.
# torch is installed first and pinned, so no later dependency can pull another torch or CUDA wheels.
set -euo pipefail
PY=${1:-python3}; VENV=${2:-.venv}; TORCH=${3:-torch==2.13.0}
if ! ldconfig -p 2>/dev/null | grep -q libOSMesa; then
  # Offscreen MuJoCo rendering on a machine with no display and no GPU uses OSMesa (software GL).
  echo "[install] installing libosmesa6 (offscreen rendering)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq libosmesa6 >/dev/null \
    || echo "[install] WARNING: could not install libosmesa6; set MUJOCO_GL=egl on a machine with a GPU"
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$TORCH"
"$VENV/bin/python" -m pip install -q -e ".[all]" "$TORCH"
"$VENV/bin/python" - <<'PY'
import importlib.util, sys, torch
bad = [m for m in ("torchvision", "timm") if importlib.util.find_spec(m)]
print(f"[install] torch {torch.__version__}, cuda={torch.version.cuda}")
if bad: sys.exit(f"[install] unexpected packages pulled in: {bad}")
PY
