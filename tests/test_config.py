"""config.py: validation of every key, secrets, and the CLI's exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sponsord.config import Secret, load_config, load_secrets, parse_config
from sponsord.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_is_valid() -> None:
    """The documented config.toml at the top of the repo loads as is."""
    config = load_config(ROOT / "config.toml", environ={})
    assert config.patreon.campaign_id == "725055"
    assert config.server.port == 8080
    assert config.patreon.webhook_cooldown == 2.0


def test_shipped_config_documents_every_key() -> None:
    """Every key the parser knows appears in config.toml with a comment above it."""
    text = (ROOT / "config.toml").read_text()
    from sponsord.config import DisplayConfig, PatreonConfig, ServerConfig, StateConfig

    for cls in (ServerConfig, PatreonConfig, DisplayConfig, StateConfig):
        for name in cls.__dataclass_fields__:
            lines = text.splitlines()
            idx = next((i for i, line in enumerate(lines) if line.startswith(f"{name} =")), None)
            assert idx is not None, f"{name} missing from config.toml"
            assert lines[idx - 1].startswith("#") or lines[idx - 2].startswith("#"), name


def test_defaults_and_floats() -> None:
    """Integers are accepted where seconds are floats; public_url defaults to host:port."""
    config = parse_config({"server": {"port": 9000}, "patreon": {"campaign_id": "1", "poll_interval": 60}})
    assert config.patreon.poll_interval == 60.0
    assert isinstance(config.patreon.poll_interval, float)
    assert config.server.public_url == "http://127.0.0.1:9000"
    assert config.server.public_origin == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("doc", "key", "expected"),
    [
        ({"server": {"port": "8080"}}, "server.port", "integer"),
        ({"server": {"port": 70000}}, "server.port", "integer from 0 to 65535"),
        ({"server": {"port": True}}, "server.port", "integer"),
        ({"server": {"allowed_origins": "https://a.com"}}, "server.allowed_origins", "list"),
        ({"server": {"allowed_origins": ["https://a.com/path"]}}, "server.allowed_origins", "origins"),
        ({"server": {"trusted_proxies": ["not-a-net"]}}, "server.trusted_proxies", "CIDR"),
        ({"server": {"public_url": "ftp://x"}}, "server.public_url", "http(s) URL"),
        ({"server": {"prot": 1}}, "server.prot", "not a known key"),
        ({"patreon": {"campaign_id": 725055}}, "patreon.campaign_id", "string"),
        ({"patreon": {"campaign_id": "abc"}}, "patreon.campaign_id", "numeric campaign id"),
        ({"patreon": {"poll_interval": -1}}, "patreon.poll_interval", "seconds"),
        ({"patreon": {"poll_interval": "5m"}}, "patreon.poll_interval", "seconds"),
        ({"patreon": {"request_timeout": float("nan")}}, "patreon.request_timeout", "seconds"),
        ({"display": {"goal_count": -3}}, "display.goal_count", "integer"),
        ({"display": {"join_url": "nope"}}, "display.join_url", "http(s) URL"),
        ({"state": {"dir": ""}}, "state.dir", "non-empty string"),
        ({"extra": {}}, "extra", "not a known table"),
        ({"server": 5}, "server", "a table"),
    ],
)
def test_bad_values_name_key_and_expectation(doc: dict[str, object], key: str, expected: str) -> None:
    """Each invalid value raises ConfigError naming the file, the key and what was expected."""
    patreon = doc.get("patreon", {})
    if isinstance(patreon, dict):
        doc = {**doc, "patreon": {"campaign_id": "1", **patreon}}
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "my.toml")
    assert info.value.key == key
    assert expected in info.value.expected
    assert str(info.value).startswith(f"my.toml: {key}: ")


def test_trusted_proxies_cloudflare_word() -> None:
    """trusted_proxies may be the word "cloudflare" instead of a list."""
    config = parse_config({"server": {"trusted_proxies": "cloudflare"}, "patreon": {"campaign_id": "1"}})
    assert config.server.trusted_proxies == ("cloudflare",)


def test_secret_repr_hides_value() -> None:
    """A Secret never shows its value in repr, str or f-strings; reveal() gives it."""
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in f"{secret} {secret!r}"
    assert secret.reveal() == "hunter2"
    config = parse_config({"patreon": {"campaign_id": "1"}})
    from sponsord.config import Secrets

    assert "hunter2" not in repr(config.with_secrets(Secrets(access_token=secret)))


def test_secrets_from_credentials_directory_win_over_env(tmp_path: Path) -> None:
    """$CREDENTIALS_DIRECTORY files (lower-case names) are read first, then env vars."""
    (tmp_path / "patreon_access_token").write_text("from-file\n")
    env = {
        "CREDENTIALS_DIRECTORY": str(tmp_path),
        "PATREON_ACCESS_TOKEN": "from-env",
        "PATREON_WEBHOOK_SECRET": "hook",
    }
    secrets = load_secrets(env)
    assert secrets.access_token == Secret("from-file")
    assert secrets.webhook_secret == Secret("hook")
    assert secrets.refresh_token is None
    assert not secrets.can_rotate


def test_cli_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    """`sponsord check-config` on a bad file exits 2 with one line and no traceback."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[patreon]\ncampaign_id = "725055"\npoll_interval = "often"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "sponsord", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(bad) in lines[0] and "patreon.poll_interval" in lines[0] and "seconds" in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_syntax_error_and_missing_file(tmp_path: Path) -> None:
    """TOML syntax errors and missing files are config errors too (exit 2)."""
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nport = 1\n")
    for path in (broken, tmp_path / "absent.toml"):
        proc = subprocess.run(
            [sys.executable, "-m", "sponsord", "check-config", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 2
        assert str(path) in proc.stderr and "Traceback" not in proc.stderr


def test_cli_check_config_needs_a_token(tmp_path: Path) -> None:
    """check-config without any Patreon credential says which secret is missing."""
    proc = subprocess.run(
        [sys.executable, "-m", "sponsord", "check-config", "--config", str(ROOT / "config.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "PATREON_ACCESS_TOKEN" in proc.stderr
