"""Reading the secrets routing.toml refers to (docs/configuration.md "Secrets"):

    ${credential:NAME}   $CREDENTIALS_DIRECTORY/NAME, the directory systemd fills from the unit's
                         LoadCredential= / SetCredential= (deploy/routingd.service)
    ${file:/abs/path}    a file, e.g. a Kubernetes or Docker secret

The policy model (daemon/core/policy.py) does no I/O: the daemon and the command line pass
`read_secret` in as its resolver. A reason never holds the secret itself; the trailing newline
most secret files end with is not part of the value.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Callable, Mapping

MAX_SECRET_BYTES = 1024 * 1024      # far above any real secret (an FCM service account file); only a guard
# systemd's credential names: no slash, not "." or ".."
_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]*$")


def read_secret(kind: str, ref: str, env: Mapping[str, str] | None = None) -> str:
    """The value of ${credential:NAME} (kind "credential") or ${file:PATH} (kind "file");
    ValueError with the reason when it cannot be read."""
    env = os.environ if env is None else env
    if kind == "credential":
        if not _CREDENTIAL_NAME.match(ref) or ref in (".", ".."):
            raise ValueError(f"bad credential name {ref!r} (letters, digits, '_', '.', '@', '-'; no '/')")
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ValueError("$CREDENTIALS_DIRECTORY is not set (systemd sets it for a unit with "
                             f"LoadCredential={ref}:/path/to/file)")
        return _read(os.path.join(directory, ref), f"credential {ref!r}")
    if kind == "file":
        if not os.path.isabs(ref):
            raise ValueError("the path must be absolute")
        return _read(ref, "file")
    raise ValueError(f"unknown secret kind {kind!r}")


def resolver(env: Mapping[str, str] | None = None) -> Callable[[str, str], str]:
    """read_secret bound to an environment (the process's when None)."""
    return lambda kind, ref: read_secret(kind, ref, env)


def _read(path: str, what: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ValueError(f"cannot read {what}: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"cannot read {what}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_SECRET_BYTES + 1)
    except OSError as e:
        raise ValueError(f"cannot read {what}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise ValueError(f"{what} is larger than {MAX_SECRET_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8 text") from None
    return text.rstrip("\r\n")
