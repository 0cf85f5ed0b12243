#!/bin/sh
# Install buildah and debootstrap from Debian's packages, which the container
# test (tests/test_container.py) uses to build and run the image without a
# container engine. Does nothing when both are already installed. Needs root.
set -eu

missing=""
for package in buildah debootstrap; do
    status=$(dpkg-query --show --showformat='${Status}' "$package" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing="$missing $package"
    fi
done
if [ -z "$missing" ]; then
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086 # $missing is a list of package names.
apt-get install -y $missing
