#!/bin/sh
# Installs the Debian packages the C++ runner (genapi/examples/cpp) builds with, when any is
# missing and this shell may install them (root, with apt-get). Otherwise it names the missing
# packages and exits 0: the C++ tests then skip with the same names (or fail under CI=true).
set -u

PACKAGES="cmake g++ pkg-config libsentencepiece-dev"

missing=""
for package in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $package" ;;
    esac
done
missing=${missing# }
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "C++ runner: missing Debian packages: $missing" >&2
    echo "  install them with: sudo apt-get install -y $missing" >&2
    exit 0
fi

echo "C++ runner: installing $missing" >&2
export DEBIAN_FRONTEND=noninteractive
# Try the cached package lists first; refresh them only if that fails.
# shellcheck disable=SC2086  # one word per package
if ! apt-get install -y -qq --no-install-recommends $missing >/dev/null; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null \
        || echo "C++ runner: could not install $missing; the C++ tests will skip" >&2
fi
exit 0
