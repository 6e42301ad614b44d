#!/usr/bin/env bash
# Create .venv (if missing) and install mhe-edge with the pinned versions from constraints.txt.
#   bash scripts/setup.sh          the CPU build of ONNX Runtime (what CI and the tests use)
#   bash scripts/setup.sh --cuda   ONNX Runtime's CUDA build (onnxruntime-gpu) and nvidia-ml-py instead: both
#                                  wheels ship the `onnxruntime` module, so the CPU wheel is never installed
#                                  beside it (an existing one is removed)
set -euo pipefail
cd "$(dirname "$0")/.."
cuda=0
for arg in "$@"; do
  case "$arg" in
    --cuda) cuda=1 ;;
    *) echo "usage: bash scripts/setup.sh [--cuda]" >&2; exit 2 ;;
  esac
done
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$cuda" = 1 ]; then
  # onnxruntime-genai would pull the CPU wheel back in: for GPU packages install onnxruntime-genai-cuda yourself
  .venv/bin/python -m pip uninstall -q -y onnxruntime onnxruntime-genai 2>/dev/null || true
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[cuda,test,dev]"
  .venv/bin/python -c "import onnxruntime as ort; print('ONNX Runtime', ort.__version__, 'providers:', ort.get_available_providers())"
else
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[cpu,test,genai,dev]"
fi
