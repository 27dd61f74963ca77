#!/usr/bin/env bash
# Set-up of a machine: a virtual environment in .venv holding exactly the packages pinned in
# constraints.txt (every dependency, transitive too, at the versions the committed results were
# made with) plus stresnet itself, editable. A second run re-syncs an existing .venv to the pins;
# .ci/run deletes .venv first, so CI always installs from scratch.
#
# constraints.txt is installed as a lock (--no-deps), not resolved: ultralytics declares the GUI
# build `opencv-python`, which needs the system's libGL (absent on slim images), and a pip
# constraint cannot forbid a package. The lock holds `opencv-python-headless` instead, which
# provides the same `cv2` module. On this workplace's x86-64 Python 3.11 machines pip takes torch
# and its CUDA wheels from local disk; on another platform regenerate the lock there
# (`pip freeze --exclude-editable` after a resolved install) and pass it as CONSTRAINTS=...
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOCK=${CONSTRAINTS:-constraints.txt}
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
fresh=0
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
    fresh=1
fi
"${PIP[@]}" install -q --no-deps -r "$LOCK"
# stresnet and its extras, resolved against the same pins: with the lock installed nothing new
# should come in (the detect extra is left out: it would pull opencv-python; ultralytics is locked).
"${PIP[@]}" install -q -c "$LOCK" -e ".[test,export,plot,imagenet]"
# Every requirement of every installed package is met, but ultralytics' opencv-python (see above).
if ! problems=$("${PIP[@]}" check 2>&1); then
    problems=$(grep -v -E '^ultralytics [^ ]+ requires opencv-python, which is not installed\.$' <<<"$problems" || true)
    if [ -n "$problems" ]; then
        echo "setup.sh: the environment does not satisfy its requirements:" >&2
        echo "$problems" >&2
        exit 1
    fi
fi
if [ "$fresh" = 1 ]; then
    # A fresh venv holds exactly the lock: a dependency missing from it would have come in unpinned.
    pinned=$(grep -v -E '^\s*(#|$)' "$LOCK" | sort -f)
    if ! drift=$(diff <("${PIP[@]}" freeze --exclude-editable | sort -f) <(echo "$pinned")); then
        echo "setup.sh: the fresh .venv differs from $LOCK ('<' installed, '>' pinned):" >&2
        echo "$drift" >&2
        exit 1
    fi
fi
# timm's own model tests (tests/test_timm_suite.py runs them on the zoo), fetched once into .cache/.
bash scripts/timm_tests.sh .venv/bin/python
