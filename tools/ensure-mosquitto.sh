#!/bin/sh
# The tests start their own mosquitto on a free loopback port; make sure the binary exists.
for p in mosquitto /usr/sbin/mosquitto /usr/local/sbin/mosquitto; do
  if command -v "$p" >/dev/null 2>&1; then exit 0; fi
done
echo "mosquitto not found; installing it (tests start their own broker on a free loopback port)" >&2
sh "$(dirname "$0")/install-package.sh" mosquitto && exit 0
echo "error: could not install mosquitto. Install it with your package manager" >&2
echo "       (Debian/Ubuntu: apt-get install mosquitto; macOS: brew install mosquitto) and run make test again." >&2
exit 1
