#!/bin/sh
# Build a Debian bookworm base image with debootstrap and store it in a
# buildah image store, for building the editstore image where no registry can
# be reached. Prints the image reference, for `--build-arg BASE_IMAGE=...`.
#
# Usage: scripts/container/build-test-base.sh [CACHE_DIR]
#
# CACHE_DIR (default: $EDITSTORE_CONTAINER_CACHE, else
# /var/cache/editstore-container-test) contains the buildah image store. Run
# buildah with `--root CACHE_DIR/storage --runroot CACHE_DIR/run` to use it.
# The image is tagged with a hash of everything it is built from, so a second
# run with the same inputs prints the same reference at once. Without the
# cache, the base is built from nothing (about a minute on 2 cores).
#
# Settings: EDITSTORE_DEBIAN_MIRROR (default http://deb.debian.org/debian).
# Needs root, debootstrap and buildah (scripts/container/install-tools.sh).
set -eu

cache_dir=${1:-${EDITSTORE_CONTAINER_CACHE:-/var/cache/editstore-container-test}}
mirror=${EDITSTORE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
packages=python3,python3-venv,python3-pip,ca-certificates
repository=localhost/editstore-test-base
# Certificate authorities added on this host (for example a TLS-inspecting
# proxy's) are copied into the base, so that pip inside the image build
# trusts what pip on the host trusts. The folder is empty on most machines.
local_ca_dir=/usr/local/share/ca-certificates

buildah_store() {
    buildah --root "$cache_dir/storage" --runroot "$cache_dir/run" "$@"
}

# The key covers this script (the recipe), the debootstrap inputs, the
# architecture and the added certificate authorities.
key=$(
    {
        cat "$0"
        echo "$mirror $suite $packages $(dpkg --print-architecture)"
        find "$local_ca_dir" -type f -name '*.crt' 2>/dev/null | sort | xargs -r cat
    } | sha256sum | cut -c1-16
)
image="$repository:$key"

mkdir -p "$cache_dir"
# One build at a time per cache: a second caller waits, then finds the image.
exec 9>"$cache_dir/base.lock"
flock 9

if buildah_store inspect --type image "$image" >/dev/null 2>&1; then
    echo "$image"
    exit 0
fi

# A build that was killed leaves its folder behind, and none can be in use
# now. --one-file-system keeps rm out of anything still mounted in it.
rm -rf --one-file-system "$cache_dir"/rootfs.*
rootfs=$(mktemp -d "$cache_dir/rootfs.XXXXXX")
chmod 0755 "$rootfs"
container=""
cleanup() {
    if [ -n "$container" ]; then
        buildah_store rm "$container" >/dev/null 2>&1 || true
    fi
    rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

echo "building $image with debootstrap from $mirror" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >&2
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
find "$local_ca_dir" -type f -name '*.crt' -exec cp {} "$rootfs$local_ca_dir/" \; 2>/dev/null || true
chroot "$rootfs" update-ca-certificates >&2

container=$(buildah_store from scratch)
mountpoint=$(buildah_store mount "$container")
tar -C "$rootfs" --numeric-owner -cf - . | tar -C "$mountpoint" --numeric-owner -xpf -
buildah_store umount "$container" >/dev/null
buildah_store config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash "$container"
buildah_store commit --quiet --format docker "$container" "$image" >/dev/null

# Drop base images built from older inputs.
buildah_store images --format '{{.Name}}:{{.Tag}}' \
    | grep "^$repository:" | grep -v ":$key\$" \
    | xargs -r buildah --root "$cache_dir/storage" --runroot "$cache_dir/run" rmi >&2 || true

echo "$image"
