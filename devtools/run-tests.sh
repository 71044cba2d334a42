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

# Each stage gets a temp dir of its own: pytest's default numbered dirs under /tmp/pytest-of-<user>
# are pruned by any other pytest session on the machine (it keeps the newest three), which would
# delete the data directory of a PostgreSQL cluster a running stage still uses.
TEST_TMP=$(mktemp -d /tmp/safedeploy-tests.XXXXXX)
chmod 0755 "$TEST_TMP"
trap 'rm -rf "$TEST_TMP"' EXIT

pytest_stage() {
  local stage=$1
  shift
  "$BIN/python" -m pytest --basetemp="$TEST_TMP/$stage" "$@"
  local rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "(no tests collected in $stage: not a failure)"
    return 0
  fi
  return "$rc"
}

lint() {
  "$BIN/ruff" check . || return 1
  "$BIN/ansible-lint" --profile production --offline roles/ playbooks/ || return 1
}

sanity() {
  # ansible-test bootstraps pip in its venvs with a script from a host this machine cannot
  # reach; give it a local stand-in under the name it looks for.
  local pip_version
  pip_version=$("$BIN/python" -c 'import pathlib, re, sysconfig; d = pathlib.Path(sysconfig.get_paths()["purelib"], "ansible_test"); print(re.search(r"pip=.([0-9.]+).", (d / "_internal/python_requirements.py").read_text()).group(1))')
  local cached=$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py
  if [ ! -s "$cached" ]; then
    mkdir -p "$(dirname "$cached")" && cp devtools/get_pip_offline.py "$cached"
  fi
  # ansible-test wants the collection at .../ansible_collections/<ns>/<name>: test a copy
  # of the files git knows (tracked and new, not ignored).
  # The copy lives outside this repository: inside it, git would report the copy as ignored.
  local top
  top=$(mktemp -d "${TMPDIR:-/tmp}/safedeploy-sanity.XXXXXX")
  local dest=$top/ansible_collections/safedeploy/django
  mkdir -p "$dest"
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
  done | tar --null -T - -cf - | tar -xf - -C "$dest"
  # Development tooling and sample Django projects are not part of the built collection.
  local excludes=()
  for path in devtools/ benchmarks/ tests/integration/projects/; do
    [ -e "$dest/$path" ] && excludes+=(--exclude "$path")
  done
  (cd "$dest" && "$BIN/ansible-test" sanity --python 3.11 --requirements --color no "${excludes[@]}")
  local rc=$?
  rm -rf "$top"
  return $rc
}

unit() { pytest_stage unit tests/unit -q; }
integration() { pytest_stage integration tests/integration -q; }
# Each e2e module builds its own sandbox fleet (own PostgreSQL, nginx, ports) and spends most of its
# time waiting on deploys: two modules at a time, each whole on one worker, in file order.
e2e() { pytest_stage e2e tests/e2e -q -n 2 --dist loadfile; }

# Three systemd hosts in podman containers (extensions/molecule/default): the host side first
# (devtools/molecule_env.py: apt packages, image, network, PostgreSQL, nginx ...), then the whole
# `molecule test` sequence, then a teardown that leaves nothing running, whatever happened.
molecule_teardown() { "$BIN/python" -m devtools.molecule_env down --purge; }
# Run a command bounded in time. `timeout` puts it in a process group of its own, out of reach of a
# Ctrl-C or a TERM sent to ours: run it in the background and pass those on, then end the stage
# (the EXIT trap tears down).
molecule_bounded() {
  local seconds=$1 pid rc=0
  shift
  timeout --kill-after=30 "$seconds" "$@" &
  pid=$!
  trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit 143' INT TERM
  wait "$pid" || rc=$?
  trap 'exit 143' INT TERM
  return "$rc"
}
molecule() {
  export SAFEDEPLOY_MOLECULE_ENV=$REPO/.build/molecule-env/env.json NO_COLOR=1
  # what an interrupted earlier run left behind (and its database: every run starts empty)
  molecule_teardown >/dev/null 2>&1
  trap 'molecule_teardown; rm -rf "$TEST_TMP"' EXIT
  trap 'exit 143' INT TERM  # bash runs no EXIT trap when a signal kills it: make it exit instead
  local rc=0
  molecule_bounded 900 "$BIN/python" -m devtools.molecule_env up || rc=$?
  if [ "$rc" -eq 0 ]; then
    # --destroy always: the containers go even when a step fails
    molecule_bounded 1800 "$BIN/molecule" test --scenario-name default --destroy always || rc=$?
  fi
  molecule_teardown
  trap 'rm -rf "$TEST_TMP"' EXIT
  trap - INT TERM
  return "$rc"
}

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
    for stage in lint sanity unit integration e2e molecule; do
      run "$stage" || failed+=("$stage")
    done
    if [ ${#failed[@]} -gt 0 ]; then
      echo "FAILED stages: ${failed[*]}"
      exit 1
    fi
    echo "all stages passed in ${SECONDS}s"
    ;;
  lint|sanity|unit|integration|e2e|molecule) run "$1" ;;
  *) echo "usage: $0 [all|lint|sanity|unit|integration|e2e|molecule]" >&2; exit 2 ;;
esac
