#!/bin/sh
# `make bench` drives the ingress benchmark with wrk (the Debian/Ubuntu package); install it if missing.
if command -v wrk >/dev/null 2>&1; then exit 0; fi
echo "wrk not found; installing it from the distribution packages (the ingress benchmark's load tool)" >&2
sh "$(dirname "$0")/install-package.sh" wrk && exit 0
echo "error: could not install wrk. Install it with your package manager" >&2
echo "       (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk) and run make bench again," >&2
echo "       or run the benchmarks that need no load tool: benchmarks/run_all.py --skip ingress" >&2
exit 1
