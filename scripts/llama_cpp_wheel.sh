#!/usr/bin/env bash
# Print the path of a llama-cpp-python wheel built with portable CPU flags, building it once.
#
# PyPI has only an sdist of llama-cpp-python (llama.cpp vendored, compiled with CMake, ~4 min
# on 2 cores). A default build turns on GGML_NATIVE, which on CPUs that advertise AMX picks a
# matmul kernel that segfaults on the first quantized product; the flags below build the
# AVX2/FMA/F16C kernels every x86-64 CI runner has. The wheel is kept in
# ${LLMQ_WHEEL_CACHE:-~/.cache/pytest-llmquant/wheels}, so later setups install it in seconds.
# Usage: pip install --no-deps "$(bash scripts/llama_cpp_wheel.sh PYTHON)"
set -euo pipefail
py="${1:-python3}"
version=$(sed -n 's/^llama_cpp_python==//p' "$(dirname "$0")/../constraints/ci.txt")
cache="${LLMQ_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pytest-llmquant/wheels}"
mkdir -p "$cache"
wheel=$(ls "$cache"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  start=$(date +%s)
  CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$py" -m pip wheel --quiet --no-deps "llama-cpp-python==$version" -w "$cache" >&2
  wheel=$(ls "$cache"/llama_cpp_python-"$version"-*.whl | head -1)
  echo "built $wheel in $(( $(date +%s) - start )) s" >&2
fi
echo "$wheel"
