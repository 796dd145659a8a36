#!/bin/sh
# tests/test_ui.py renders the status page (/ui) in a real headless Chromium; make sure it exists.
for p in chromium chromium-browser google-chrome; do
  if command -v "$p" >/dev/null 2>&1; then exit 0; fi
done
echo "chromium not found; installing it (tests/test_ui.py renders the status page in headless Chromium)" >&2
sh "$(dirname "$0")/install-package.sh" chromium && exit 0
echo "error: could not install chromium. Install it with your package manager" >&2
echo "       (Debian: apt-get install chromium; Ubuntu: snap install chromium) and run make test again." >&2
exit 1
