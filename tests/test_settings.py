"""Settings from the environment, CLI overrides, masking, and one-line errors with exit 2."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from responder.errors import ConfigError
from responder.settings import SPECS, Settings, reference_markdown


def test_defaults_are_the_embedded_setup() -> None:
    s = Settings.from_env({})
    assert s.database_url == "sqlite+aiosqlite:///responder.db"
    assert s.smtp.is_file and s.smtp.path == Path("outbox")
    assert s.base_url == "http://127.0.0.1:8080"
    assert s.secret_key is None and s.admin_token is None


def test_environment_and_overrides() -> None:
    env = {
        "RESPONDER_DATABASE_URL": "postgresql://app:pw@db.internal:5433/news",
        "RESPONDER_SMTP_URL": "smtps://mailer:s3cret@smtp.example.com",
        "RESPONDER_FROM": "Acme <hello@acme.example.com>",
        "RESPONDER_PORT": "9000",
    }
    s = Settings.from_env(env, port="9100", base_url="https://news.acme.example.com/")
    assert s.database_url == "postgresql+asyncpg://app:pw@db.internal:5433/news"
    assert (s.smtp.scheme, s.smtp.host, s.smtp.port) == ("smtps", "smtp.example.com", 465)
    assert (s.smtp.username, s.smtp.password) == ("mailer", "s3cret")
    assert s.port == 9100
    assert s.base_url == "https://news.acme.example.com"
    assert (s.from_name, s.from_email) == ("Acme", "hello@acme.example.com")


def test_file_outbox_absolute_path() -> None:
    s = Settings.from_env({"RESPONDER_SMTP_URL": "file:///var/spool/responder"})
    assert s.smtp.path == Path("/var/spool/responder")


@pytest.mark.parametrize(
    ("env", "value", "fragment"),
    [
        ("RESPONDER_SMTP_URL", "ftp://mail.example.com", "unknown mail URL scheme"),
        ("RESPONDER_SMTP_URL", "smtp://mail.example.com:notaport", "bad port"),
        ("RESPONDER_SMTP_URL", "smtp://", "no host"),
        ("RESPONDER_DATABASE_URL", "mysql://db/x", "unsupported database"),
        ("RESPONDER_DATABASE_URL", "::::", "not a database URL"),
        ("RESPONDER_BASE_URL", "news.example.com", "not an http(s) URL"),
        ("RESPONDER_FROM", "Acme <not-an-address>", "not valid"),
        ("RESPONDER_FROM", "Acme\r\nBcc: x@y.com <a@b.com>", "control characters"),
        ("RESPONDER_PORT", "eighty", "whole number"),
    ],
)
def test_bad_values_name_the_variable(env: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({env: value})
    assert caught.value.message.startswith(env + ":")
    assert fragment in caught.value.message


def test_describe_masks_secrets() -> None:
    s = Settings.from_env(
        {
            "RESPONDER_SECRET_KEY": "supersecretsigningkey",
            "RESPONDER_ADMIN_TOKEN": "admintoken123456",
            "RESPONDER_SMTP_URL": "smtp://user:hunter2@mail.example.com:587",
        }
    )
    printed = "\n".join(f"{k}={v}" for k, v, _ in s.describe())
    for secret in ("supersecretsigningkey", "admintoken123456", "hunter2"):
        assert secret not in printed
    assert "smtp://user:******@mail.example.com:587" in printed


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "responder", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=60,
    )


def test_cli_config_prints_masked_configuration() -> None:
    done = _cli("config", env={"RESPONDER_ADMIN_TOKEN": "admintoken123456"})
    assert done.returncode == 0, done.stderr
    assert "RESPONDER_DATABASE_URL=sqlite+aiosqlite:///responder.db" in done.stdout
    assert "admintoken123456" not in done.stdout


def test_cli_bad_value_is_one_line_and_exit_2() -> None:
    done = _cli("serve", env={"RESPONDER_SMTP_URL": "gopher://x"})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("responder: error: RESPONDER_SMTP_URL:")
    assert "Traceback" not in done.stderr


def test_configuration_reference_is_generated_from_the_settings() -> None:
    """docs/configuration.md lists every setting with its default; regenerate it when a setting changes."""
    root = Path(__file__).resolve().parent.parent
    printed = subprocess.run(
        [sys.executable, "-m", "responder", "config", "--reference"], capture_output=True, text=True, check=True
    ).stdout
    assert printed == reference_markdown()
    assert (root / "docs" / "configuration.md").read_text() == printed, (
        "docs/configuration.md is stale: responder config --reference > docs/configuration.md"
    )
    for spec in SPECS:
        assert f"| `{spec.env}` |" in printed


def test_every_documented_variable_is_a_setting() -> None:
    """A RESPONDER_* name in the README or docs/ that no setting reads is a documentation error."""
    root = Path(__file__).resolve().parent.parent
    known = {spec.env for spec in SPECS} | {"RESPONDER_X"}  # RESPONDER_X: a placeholder in docs/benchmarks.md
    texts = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    named = {name for path in texts for name in re.findall(r"RESPONDER_[A-Z_]+[A-Z]", path.read_text())}
    assert {name for name in named - known if not name.startswith("RESPONDER_TEST_")} == set()
