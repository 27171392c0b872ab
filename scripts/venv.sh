#!/usr/bin/env bash
# Create .venv (once) with torch 2.13.0 CPU first, then diffcheck editable with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import diffcheck, torch, pytest, hypothesis" 2>/dev/null; then
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
    .venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
    .venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
    .venv/bin/python -c "import diffcheck, torch, pytest, hypothesis"
fi
