"""systemd/monitord.service: systemd itself validates the unit, and its hardening keeps a low exposure score."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "monitord.service"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed on this machine")


def unit_with_real_executable(tmp_path: Path) -> Path:
    """The unit as installed: ExecStart must point at an executable that exists, here the test's monitord."""
    monitord = Path(sys.executable).parent / "monitord"
    text = UNIT.read_text().replace("/usr/local/bin/monitord", str(monitord))
    path = tmp_path / "monitord.service"
    path.write_text(text)
    return path


def test_unit_verifies(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(unit_with_real_executable(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "monitord.service" not in result.stderr, result.stderr  # no warning about our unit


def test_unit_declares_what_the_daemon_relies_on() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "DynamicUser=yes",
                 "StateDirectory=monitord", "EnvironmentFile=-/etc/monitord/env", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                 "SystemCallFilter=@system-service", "CapabilityBoundingSet="):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M)


def test_security_exposure_is_low(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit_with_real_executable(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    if "--offline" in result.stderr and result.returncode != 0:
        pytest.skip(f"this systemd-analyze has no offline security mode: {result.stderr.strip()}")
    score = re.search(r"Overall exposure level for monitord\.service: ([\d.]+)", result.stdout)
    assert score, result.stdout[-500:] + result.stderr
    assert float(score.group(1)) <= 2.0, score.group(0)
