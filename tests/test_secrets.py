"""Secrets in routing.toml: ${VAR}, ${credential:NAME} ($CREDENTIALS_DIRECTORY, systemd
LoadCredential=) and ${file:/path}; read at the edge (daemon/secrets.py), never echoed in errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_process import DaemonProcess, routingd_command  # noqa: E402

from routingd.daemon.core.policy import PolicyError, parse_policy  # noqa: E402
from routingd.daemon.secrets import read_secret, resolver  # noqa: E402

SECRET = "s3cr3t-VALUE-never-printed"


def policy(headers: str, extra: str = "") -> str:
    return f'''
[providers.hook]
type = "http"
url = "http://127.0.0.1:9/send"
headers = {{ {headers} }}
{extra}
[channels.email]
providers = ["hook"]
[routes.default]
channels = ["email"]
'''


def test_credential_file_and_variable_references_are_resolved(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "hook-token").write_text(SECRET + "\n")          # files end in a newline: not part of the value
    other = tmp_path / "other.secret"
    other.write_text("from-a-file\r\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "REGION": "eu"}
    p = parse_policy(policy(f'A = "Bearer ${{credential:hook-token}}", B = "${{file:{other}}}", C = "${{REGION}}"'),
                     env=env, secrets=resolver(env))
    assert p.providers["hook"].headers == {"A": "Bearer " + SECRET, "B": "from-a-file", "C": "eu"}


def test_missing_credentials_name_the_key_path_never_a_value(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    with pytest.raises(PolicyError) as e:
        parse_policy(policy('A = "${credential:hook-token}"'), env=env, secrets=resolver(env))
    assert e.value.lines() == [
        "routing.toml:5:13: providers.hook.headers.A: ${credential:hook-token}: $CREDENTIALS_DIRECTORY is not set "
        "(systemd sets it for a unit with LoadCredential=hook-token:/path/to/file)"]
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    with pytest.raises(PolicyError) as e:
        parse_policy(policy('A = "${credential:absent}"', 'receipt_secret = "${file:relative/path}"'),
                     env=env, secrets=resolver(env))
    assert e.value.lines() == [
        "routing.toml:5:13: providers.hook.headers.A: ${credential:absent}: cannot read credential 'absent': "
        "No such file or directory",
        "routing.toml:6: providers.hook.receipt_secret: ${file:relative/path}: the path must be absolute"]
    with pytest.raises(PolicyError) as e:
        parse_policy(policy('A = "${credential:../etc/passwd}"'), env=env, secrets=resolver(env))
    assert "bad credential name" in e.value.lines()[0]
    # without a resolver (core alone, e.g. a unit test), a reference is an error, not a file read
    with pytest.raises(PolicyError) as e:
        parse_policy(policy('A = "${credential:x}"'), env={})
    assert "cannot be read here" in e.value.lines()[0]


def test_a_secret_in_the_wrong_key_is_masked_in_errors(tmp_path: Path) -> None:
    """A credential pasted into a key that rejects it: the error names ${credential:NAME}."""
    (tmp_path / "url").write_text(SECRET)
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    text = policy('A = "x"').replace('url = "http://127.0.0.1:9/send"', 'url = "${credential:url}"')
    with pytest.raises(PolicyError) as e:
        parse_policy(text, env=env, secrets=resolver(env))
    assert SECRET not in str(e.value)
    assert "${credential:url}" in str(e.value)


def test_read_secret_refuses_what_is_not_a_small_text_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a regular file"):
        read_secret("file", str(tmp_path))
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_secret("file", str(tmp_path / "bin"))
    (tmp_path / "big").write_bytes(b"x" * (1024 * 1024 + 1))
    with pytest.raises(ValueError, match="larger than"):
        read_secret("file", str(tmp_path / "big"))


def test_check_and_serve_read_credentials_from_the_credentials_directory(tmp_path: Path) -> None:
    """`routingd check` and `serve` resolve ${credential:NAME} as systemd's LoadCredential= provides
    it; the value never reaches the log, /v1/config or /metrics."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "hook-token").write_text(SECRET)
    text = policy('Authorization = "Bearer ${credential:hook-token}"')
    cfg = tmp_path / "routing.toml"
    cfg.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTINGD_") and k != "CREDENTIALS_DIRECTORY"}
    p = subprocess.run([*routingd_command(), "check", str(cfg)], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 1 and "providers.hook.headers.Authorization: ${credential:hook-token}: " \
        "$CREDENTIALS_DIRECTORY is not set" in p.stderr
    env["CREDENTIALS_DIRECTORY"] = str(creds)
    p = subprocess.run([*routingd_command(), "check", str(cfg)], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    with DaemonProcess(tmp_path / "d", text, env={"CREDENTIALS_DIRECTORY": str(creds)},
                       args=["--log-level", "DEBUG"]) as d:
        mid = d.send({"to": {"email": "a@x"}, "content": {"title": "t"}})
        d.wait_status(mid, "failed", "undeliverable")     # port 9: nothing listens
        config = d.get("/v1/config").body.decode()
        for where, text_ in (("/v1/config", config), ("/metrics", d.metrics_text()),
                             ("status", str(d.status(mid))), ("log", d.log_text())):
            assert SECRET not in text_, where
