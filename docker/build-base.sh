#!/bin/sh
# Make the local Debian base image that docker/Dockerfile.cpu builds FROM when no
# registry is reachable (CI, air-gapped hosts): debootstrap a minbase bookworm root
# filesystem from the Debian mirror this machine already uses, then `podman import` it.
#
# usage: docker/build-base.sh [IMAGE]        (default IMAGE: localhost/smtk-base:bookworm)
#   then: podman build --build-arg BASE_IMAGE=localhost/smtk-base:bookworm -f docker/Dockerfile.cpu .
#
# Settings (environment):
#   BASE_CACHE_DIR  where the root filesystem tarball is kept between calls
#                   (default: ${XDG_CACHE_HOME:-$HOME/.cache}/smtk/base)
#   DEBIAN_MIRROR   Debian mirror for debootstrap (default: the first bookworm mirror in
#                   /etc/apt/sources.list*, else http://deb.debian.org/debian)
#   DEBIAN_SUITE    suite (default: bookworm)
#   BASE_HOST_CA    1 (default): copy this machine's /usr/local/share/ca-certificates/*.crt
#                   into the base and point pip at the system bundle (for builds behind a
#                   TLS-inspecting proxy); 0: leave the base as debootstrap made it
#
# Idempotent and fast when done: an image already in podman's storage is kept; a cached
# tarball is imported without a new debootstrap. Needs root (debootstrap), podman, debootstrap.
set -eu

IMAGE=${1:-localhost/smtk-base:bookworm}
SUITE=${DEBIAN_SUITE:-bookworm}
CACHE_DIR=${BASE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/smtk/base}
ARCH=$(dpkg --print-architecture 2>/dev/null || uname -m)
HOST_CA=${BASE_HOST_CA:-1}
TARBALL="$CACHE_DIR/debian-$SUITE-minbase-$ARCH.tar"

log() { printf 'build-base: %s\n' "$*" >&2; }
now() { date +%s; }
START=$(now)

for tool in podman debootstrap tar; do
    command -v "$tool" >/dev/null 2>&1 || { log "error: '$tool' not found on PATH"; exit 1; }
done

if podman image exists "$IMAGE"; then
    log "$IMAGE already present in podman storage; nothing to do"
    exit 0
fi

mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        printf '%s\n' "$DEBIAN_MIRROR"
        return
    fi
    # deb822 sources (URIs: ...) first, then one-line sources (deb URI SUITE ...).
    found=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk -v suite="$SUITE" '
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite && uri != "") { print uri; exit } }')
    if [ -z "$found" ]; then
        found=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk -v suite="$SUITE" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i == suite) { print $(i - 1); exit } }')
    fi
    printf '%s\n' "${found:-http://deb.debian.org/debian}"
}

if [ ! -s "$TARBALL" ]; then
    [ "$(id -u)" = 0 ] || { log "error: debootstrap needs root (running as uid $(id -u))"; exit 1; }
    MIRROR=$(mirror)
    mkdir -p "$CACHE_DIR"
    ROOTFS=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
    trap 'rm -rf "$ROOTFS" "$TARBALL.part"' EXIT
    log "debootstrap --variant=minbase $SUITE from $MIRROR into $ROOTFS (a minute or two)"
    debootstrap --variant=minbase --arch="$ARCH" "$SUITE" "$ROOTFS" "$MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 || {
        log "error: debootstrap failed; last lines of $CACHE_DIR/debootstrap.log:"
        tail -n 20 "$CACHE_DIR/debootstrap.log" >&2
        exit 1
    }
    # Behind a TLS-inspecting proxy, builds on top of this base must trust what this machine
    # trusts: its local CA certificates (ca-certificates, installed by the image build, adds
    # them to the system bundle) and pip pointed at that bundle instead of its own.
    if [ "$HOST_CA" = 1 ] && ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
        log "adding this machine's local CA certificates and pip's cert setting to the base"
        mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
        cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
        printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOTFS/etc/pip.conf"
    fi
    # Slim like debian:bookworm-slim: no documentation, manual pages or translations now or
    # from the packages the image build installs (copyright files stay).
    cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/smtk-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
SLIM
    find "$ROOTFS/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
    rm -rf "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/*
    # Leave no downloaded .debs or apt lists in the layer: the image build runs apt-get update.
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    log "debootstrap done after $(( $(now) - START ))s; packing $TARBALL"
    tar --numeric-owner -C "$ROOTFS" -cf "$TARBALL.part" .
    mv "$TARBALL.part" "$TARBALL"
    rm -rf "$ROOTFS"
    trap - EXIT
else
    log "using cached root filesystem $TARBALL"
fi

log "podman import $TARBALL as $IMAGE"
podman import --quiet --change 'CMD ["/bin/bash"]' "$TARBALL" "$IMAGE" >/dev/null
log "done: $IMAGE ready after $(( $(now) - START ))s"
