"""Reading configuration files: the edge between the disk (and the environment) and the pure
policy model (daemon/core/policy.py, which does no I/O: tests/test_core_purity.py).

    read_config_text(path) -> str     a TOML file's text; PolicyError when it cannot be read
    load_policy(path, env=None, secrets=None) -> Policy
        reads the file and the process environment (env=None: os.environ) and hands both to the
        core's parse_policy(); `secrets` reads ${credential:NAME} / ${file:PATH} (daemon/secrets.py)
    parse_policy_text(text, path, secrets=None) -> Policy
        the same for text already read (stdin, the store's copy of an earlier version)
"""

from __future__ import annotations

import os
from typing import Mapping

from .core.policy import Policy, PolicyError, Problem, SecretResolver, parse_policy

__all__ = ["load_policy", "parse_policy_text", "read_config_text"]


def read_config_text(path: str) -> str:
    """Read a TOML config file (routing.toml, a scenario) as text; PolicyError when it cannot be."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PolicyError(path, [Problem((), f"cannot read file: {e.strerror or e}")]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(path, [Problem((), f"not UTF-8 text (byte {e.start})")]) from None


def parse_policy_text(text: str, path: str = "routing.toml", secrets: SecretResolver | None = None) -> Policy:
    """parse_policy() with ${VAR} read from this process's environment."""
    return parse_policy(text, path, dict(os.environ), secrets)


def load_policy(path: str, env: Mapping[str, str] | None = None, secrets: SecretResolver | None = None) -> Policy:
    """Read and validate a routing.toml file; PolicyError lists every problem."""
    return parse_policy(read_config_text(path), path, dict(os.environ) if env is None else env, secrets)
