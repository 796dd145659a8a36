#!/bin/sh
# tests/test_deploy.py runs `systemd-analyze verify` and `systemd-analyze security` on
# deploy/routingd.service; make sure the tool exists (it does not need a running systemd).
if command -v systemd-analyze >/dev/null 2>&1; then exit 0; fi
echo "systemd-analyze not found; installing it (package: systemd) to check deploy/routingd.service" >&2
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null) \
      && command -v systemd-analyze >/dev/null 2>&1 && exit 0
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null) \
      && command -v systemd-analyze >/dev/null 2>&1 && exit 0
  fi
elif command -v dnf >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  dnf install -y -q systemd >/dev/null && command -v systemd-analyze >/dev/null 2>&1 && exit 0
fi
echo "error: could not install systemd-analyze. Install it as root and run make test again:" >&2
echo "       Debian/Ubuntu: sudo apt-get install systemd    Fedora/RHEL: sudo dnf install systemd" >&2
echo "       (it is part of the systemd package; the tests only run it offline on the unit file)" >&2
exit 1
