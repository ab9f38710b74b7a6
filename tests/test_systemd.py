"""The shipped unit files: they load, and the service is hardened.

``systemd-analyze verify`` insists that ExecStart's binary exists, so the
units are checked as copies whose ExecStart points at this checkout's
``sponsord`` (the only line that differs from what ``make install`` puts in
place).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sponsord.daemon import STOP_BUDGET

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
INSTALLED_EXEC = "/opt/sponsord/venv/bin/sponsord"

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """Copies of the units with ExecStart pointing at this venv's sponsord."""
    exe = Path(sys.executable).parent / "sponsord"
    assert exe.exists(), "the sponsord console script is not installed in this venv"
    service = (UNITS / "sponsord.service").read_text()
    assert INSTALLED_EXEC in service
    (tmp_path / "sponsord.service").write_text(service.replace(INSTALLED_EXEC, str(exe)))
    shutil.copy(UNITS / "sponsord.socket", tmp_path / "sponsord.socket")
    return tmp_path


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False)


def _settings(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line.strip())
        if m:
            values.setdefault(m[1], []).append(m[2])
    return values


def test_units_verify(units: Path) -> None:
    """Both unit files pass ``systemd-analyze verify`` without a warning."""
    result = _analyze("verify", "--man=no", str(units / "sponsord.service"), str(units / "sponsord.socket"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_service_security_exposure_at_most_2(units: Path) -> None:
    """``systemd-analyze security --offline`` rates the service OK, exposure <= 2.0."""
    result = _analyze("security", "--offline=true", "--threshold=20", str(units / "sponsord.service"))
    assert result.returncode == 0, result.stdout + result.stderr
    m = re.search(r"Overall exposure level for sponsord\.service: (\d+\.\d+) (\w+)", result.stdout)
    assert m, result.stdout
    assert float(m[1]) <= 2.0
    assert m[2] == "OK"


def test_service_contract() -> None:
    """The service is the notify/watchdog/restart/DynamicUser/credentials unit the docs describe."""
    s = _settings((UNITS / "sponsord.service").read_text())
    assert s["Type"] == ["notify"]
    assert s["Restart"] == ["on-failure"]
    assert s["DynamicUser"] == ["yes"]
    assert s["StateDirectory"] == ["sponsord"]
    assert s["LoadCredential"] == ["patreon:/etc/sponsord/credentials"]
    assert s["StartLimitBurst"] and s["StartLimitIntervalSec"]
    assert s["ExecStart"] == [f"{INSTALLED_EXEC} serve --config /etc/sponsord/config.toml"]
    assert _seconds(s["WatchdogSec"][0]) >= 10
    # systemd must never kill a stop that the daemon is still finishing.
    assert _seconds(s["TimeoutStopSec"][0]) > STOP_BUDGET + 5
    assert s["Requires"] == ["sponsord.socket"]


def test_socket_contract() -> None:
    """The socket is a stream socket with the daemon's backlog."""
    s = _settings((UNITS / "sponsord.socket").read_text())
    assert s["ListenStream"]
    assert s["Backlog"] == ["4096"]


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", value)
    assert m, value
    return float(m[1]) * (60 if m[2] == "min" else 1)
