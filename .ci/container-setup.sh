#!/bin/sh
# Prepare this machine for tests/integration/test_container.py: install podman, runc and
# debootstrap (the minimal set that builds and runs images as root here), then make the local
# Debian base image with docker/build-base.sh. Idempotent: when everything is there it only
# checks, in a second or two. Run as root from the repository root (.ci/run calls it).
#
# Settings: CONTAINER_TEST_BASE_IMAGE (default localhost/smtk-base:bookworm), and those of
# docker/build-base.sh (BASE_CACHE_DIR: where the root filesystem tarball is kept, ...).
set -eu

cd "$(dirname "$0")/.."
BASE_IMAGE=${CONTAINER_TEST_BASE_IMAGE:-localhost/smtk-base:bookworm}
START=$(date +%s)
step() { printf 'container-setup: %s (+%ss)\n' "$*" "$(( $(date +%s) - START ))"; }

missing=""
for pkg in podman runc debootstrap; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    step "installing$missing"
    apt-get update -qq
    # Recommends (buildah, slirp4netns, fuse-overlayfs, uidmap, ...) are for rootless use: not needed.
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
step "$(podman --version), $(runc --version | head -n 1)"

docker/build-base.sh "$BASE_IMAGE"
step "base image $BASE_IMAGE ready"

# Which `podman run` options this host needs (the test finds them the same way).
if podman run --rm "$BASE_IMAGE" true >/dev/null 2>&1; then
    step "podman runs containers with its defaults"
elif podman run --rm --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "$BASE_IMAGE" true; then
    step "podman runs containers with: --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024"
else
    step "error: podman cannot run a container from $BASE_IMAGE"
    exit 1
fi
step "done"
