#!/usr/bin/env bash
# Re-lock app/requirements*.txt from PyPI (not the host's wheel cache / pip.conf), universal for py3.11-3.13.
# Needs `uv` on PATH (pip install uv into any scratch venv). Extra uv options: ./lock.sh --upgrade
set -euo pipefail
cd "$(dirname "$0")"
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL
export UV_NO_CONFIG=1 UV_CUSTOM_COMPILE_COMMAND="app/lock.sh"
opts=(--universal --python-version 3.11 --generate-hashes --no-config --index-url https://pypi.org/simple "$@")
uv pip compile "${opts[@]}" requirements.in -o requirements.txt
uv pip compile "${opts[@]}" requirements-dev.in -o requirements-dev.txt
