#!/bin/sh
# The tests start their own throwaway PostgreSQL cluster (initdb + pg_ctl on a free loopback
# port, tests/pg_cluster.py); make sure the server binaries exist.
for p in initdb /usr/lib/postgresql/*/bin/initdb; do
  if command -v "$p" >/dev/null 2>&1 || [ -x "$p" ]; then exit 0; fi
done
echo "PostgreSQL's initdb not found; installing postgresql (tests start their own cluster on a free loopback port)" >&2
sh "$(dirname "$0")/install-package.sh" postgresql && exit 0
echo "error: could not install postgresql. Install it with your package manager" >&2
echo "       (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql) and run make test again." >&2
exit 1
