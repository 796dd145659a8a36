#!/bin/sh
# tests/test_deploy.py runs `systemd-analyze verify` and `systemd-analyze security` on
# deploy/routingd.service; make sure the tool exists (it does not need a running systemd).
if command -v systemd-analyze >/dev/null 2>&1; then exit 0; fi
echo "systemd-analyze not found; installing it (package: systemd) to check deploy/routingd.service" >&2
sh "$(dirname "$0")/install-package.sh" systemd --no-install-recommends && command -v systemd-analyze >/dev/null 2>&1 && exit 0
echo "error: could not install systemd-analyze. Install it as root and run make test again:" >&2
echo "       Debian/Ubuntu: sudo apt-get install systemd    Fedora/RHEL: sudo dnf install systemd" >&2
echo "       (it is part of the systemd package; the tests only run it offline on the unit file)" >&2
exit 1
