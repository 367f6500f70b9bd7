#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian/Ubuntu machine, then run it.
#
#   bash scripts/test.sh            # setup + lint + types + docs + the whole suite
#   bash scripts/test.sh -k pipe    # extra arguments go to pytest
#
# Idempotent: a second run reuses the virtual environments and the container base layer.
# As root it installs the system packages the real-parts tests use (iproute2 and sshd for
# namespace hosts, podman + debootstrap for the container test); without root those tests
# skip with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
step() { printf '\n==> %s (%ss)\n' "$*" "$(( $(date +%s) - started ))"; }

PY=${PYTHON:-python3}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  command -v ip >/dev/null || need+=(iproute2)
  command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v ssh >/dev/null || need+=(openssh-client)
  command -v unshare >/dev/null || need+=(util-linux)
  if [ ${#need[@]} -gt 0 ]; then
    step "installing system packages: ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  step "creating .venv"
  "$PY" -m venv .venv
fi
step "installing smtk with its test extra into .venv"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

if [ ! -x .venv-ref/bin/train ]; then
  step "installing the reference toolkit (sagemaker-training) into .venv-ref, used only as a test oracle"
  rm -rf .venv-ref
  if "$PY" -m venv .venv-ref && .venv-ref/bin/python -m pip install -q sagemaker-training; then
    echo "reference toolkit installed"
  else
    echo "WARNING: could not install sagemaker-training; differential tests and ratios will skip" >&2
    rm -rf .venv-ref
  fi
fi

if [ "$(id -u)" = 0 ] && [ -f .ci/container-setup.sh ] && [ "${SKIP_CONTAINER_SETUP:-0}" != 1 ]; then
  step "container test prerequisites (podman, runc, debootstrap, the local base image)"
  if bash .ci/container-setup.sh; then
    # The machine can build and run images: the container test must run, not skip.
    export CONTAINER_TEST_REQUIRED=1
  else
    echo "WARNING: container setup failed; the container test will skip with the reason" >&2
  fi
fi

step "lint (ruff)"
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks

step "types (mypy --strict on src/)"
.venv/bin/mypy

if [ -f mkdocs.yml ]; then
  step "docs (mkdocs build --strict)"
  .venv/bin/mkdocs build --strict --quiet --site-dir "${TMPDIR:-/tmp}/smtk-site"
fi

step "tests (pytest -n 2)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
.venv/bin/pytest -n 2 "$@"
step "done"
