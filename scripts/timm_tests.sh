#!/usr/bin/env bash
# Fetch timm's own model tests (tests/test_models.py and what it imports) for the installed timm
# version from its PyPI sdist into .cache/timm-tests/timm-<version>/ (git-ignored), so
# tests/test_timm_suite.py can run them on the stresnet* models without copying timm code into
# the repo. Idempotent: does nothing when the folder for the installed version is complete.
#   usage: scripts/timm_tests.sh [python]   (default: $PYTHON, else .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-${PYTHON:-}}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
version="$("$py" -c 'import timm; print(timm.__version__)')"
dest=".cache/timm-tests/timm-$version"
files=(tests/__init__.py tests/conftest.py tests/test_models.py pyproject.toml)
complete=1
for f in "${files[@]}"; do [ -f "$dest/$f" ] || complete=0; done
if [ "$complete" = 1 ]; then
  echo "timm $version tests already in $dest"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download --quiet "timm==$version" --no-binary :all: --no-deps -d "$tmp"
sdist="$(ls "$tmp"/timm-*.tar.gz)"
tar -xzf "$sdist" -C "$tmp" "${files[@]/#/timm-$version/}"
mkdir -p "$dest.tmp"
cp -r "$tmp/timm-$version/." "$dest.tmp/"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "timm $version tests -> $dest"
