"""The `gateway` command: help, refusals at startup that name what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ASSERTION_KEY, ENCRYPTION_KEYS


def gateway(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DATABASE_URL", "AIOHTTP_"))}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=60, cwd="/")


def test_help_lists_every_command() -> None:
    result = gateway("--help")
    assert result.returncode == 0
    for command in ("migrate", "serve", "demo", "create-token", "rotate-keys", "routes"):
        assert gateway(command, "--help").returncode == 0
        assert command in result.stdout


def test_serve_refuses_without_its_keys() -> None:
    result = gateway("serve", DATABASE_URL="postgresql://127.0.0.1:1/none", GATEWAY_JWT_SECRET="x")
    assert result.returncode == 2
    assert "GATEWAY_ENCRYPTION_KEYS" in result.stderr


def test_serve_refuses_the_pure_python_http_parser() -> None:
    result = gateway("serve", DATABASE_URL="postgresql://127.0.0.1:1/none", GATEWAY_JWT_SECRET="x",
                     GATEWAY_ENCRYPTION_KEYS=ENCRYPTION_KEYS, GATEWAY_ASSERTION_KEY=ASSERTION_KEY,
                     AIOHTTP_NO_EXTENSIONS="1")
    assert result.returncode == 2
    assert "C HTTP parser" in result.stderr


def test_malformed_setting_is_named() -> None:
    result = gateway("serve", GATEWAY_PORT="eighty")
    assert result.returncode == 2 and "GATEWAY_PORT" in result.stderr
