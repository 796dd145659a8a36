#!/bin/sh
# tools/install-package.sh PACKAGE [APT-GET OPTION...]: install a distribution package without
# asking anything, as root or through password-less sudo, with apt-get (or dnf). Exits 0 once it
# is installed, non-zero otherwise; the calling tools/ensure-*.sh script then says how to do it by hand.
pkg="$1"; shift
if [ "$(id -u)" = "0" ]; then
  sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo="sudo"
else
  exit 1
fi
if command -v apt-get >/dev/null 2>&1; then
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" "$pkg" >/dev/null
elif command -v dnf >/dev/null 2>&1; then
  $sudo dnf install -y -q "$pkg" >/dev/null
else
  exit 1
fi
