#!/usr/bin/env bash
# Runs the test stages; `all` runs every stage and fails if any failed.
# pytest's exit code 5 ("no tests collected") counts as a pass for a stage, on purpose:
# a stage may legitimately be empty while the others are not.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
BIN=$REPO/.venv/bin
export PATH=$BIN:$PATH
export ANSIBLE_COLLECTIONS_PATH=$REPO/.build/collections
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0

pytest_stage() {
  "$BIN/python" -m pytest "$@"
  local rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "(no tests collected in $*: not a failure)"
    return 0
  fi
  return "$rc"
}

lint() {
  "$BIN/ruff" check . || return 1
  "$BIN/ansible-lint" --profile production --offline roles/ playbooks/ || return 1
}

sanity() {
  # ansible-test wants the collection at .../ansible_collections/<ns>/<name>: test a copy
  # of the files git knows (tracked and new, not ignored).
  local dest=$REPO/.build/sanity/ansible_collections/safedeploy/django
  rm -rf "$REPO/.build/sanity" && mkdir -p "$dest"
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
  done | tar --null -T - -cf - | tar -xf - -C "$dest"
  (cd "$dest" && "$BIN/ansible-test" sanity --python 3.11 --requirements --color no \
      --exclude devtools/ --exclude benchmarks/ --exclude tests/integration/projects/)
}

unit() { pytest_stage tests/unit -q; }
integration() { pytest_stage tests/integration -q; }
e2e() { pytest_stage tests/e2e -q; }

run() {
  local name=$1 start=$SECONDS
  echo "=== stage: $name"
  "$name"
  local rc=$?
  echo "=== stage: $name: $([ $rc -eq 0 ] && echo passed || echo "FAILED rc=$rc") in $((SECONDS - start))s"
  return $rc
}

case "${1:-all}" in
  all)
    failed=()
    for stage in lint sanity unit integration e2e; do
      run "$stage" || failed+=("$stage")
    done
    if [ ${#failed[@]} -gt 0 ]; then
      echo "FAILED stages: ${failed[*]}"
      exit 1
    fi
    echo "all stages passed in ${SECONDS}s"
    ;;
  lint|sanity|unit|integration|e2e) run "$1" ;;
  *) echo "usage: $0 [all|lint|sanity|unit|integration|e2e]" >&2; exit 2 ;;
esac
