"""The systemd units in deploy/: what they must say, and `systemd-analyze verify` where it is installed."""

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from tests.utils import BASE_DIR

DEPLOY = BASE_DIR / "deploy"
WEB = DEPLOY / "shop-web.service"
WORKER = DEPLOY / "shop-worker@.service"
ENV_EXAMPLE = DEPLOY / "shop.env.example"


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(path)
    return parser


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "min" else 1)


def env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_]+=", line)
    )
    return dict(pairs)


def test_worker_unit_is_notify_with_a_watchdog_and_restarts_on_failure():
    service = unit(WORKER)["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure"
    assert "runworker" in service["ExecStart"] and "%I" in service["ExecStart"]
    assert service["EnvironmentFile"] == "/etc/shop/shop.env"


def test_worker_stop_timeout_outlasts_the_grace_period():
    service = unit(WORKER)["Service"]
    grace = float(env_example().get("JOBS_GRACE_PERIOD", settings.JOBS_GRACE_PERIOD))
    assert seconds(service["TimeoutStopSec"]) >= grace + 10


def test_watchdog_is_pinged_well_within_half_of_watchdog_sec():
    watchdog = seconds(unit(WORKER)["Service"]["WatchdogSec"])
    assert settings.JOBS_POLL_INTERVAL * 10 < watchdog / 2
    assert watchdog > settings.JOBS_HEARTBEAT_INTERVAL


def test_web_unit_runs_gunicorn_and_stops_within_its_timeout():
    service = unit(WEB)["Service"]
    assert service["ExecStart"].split()[0].endswith("/gunicorn") and "shop.wsgi" in service["ExecStart"]
    assert service["Type"] == "notify" and service["Restart"] == "on-failure"
    graceful = re.search(r"--graceful-timeout (\d+)", service["ExecStart"])
    assert graceful and int(graceful[1]) < seconds(service["TimeoutStopSec"])


def test_environment_example_names_the_required_settings_and_holds_no_real_secret():
    values = env_example()
    for name in ("SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL", "JOBS_METRICS_TOKEN"):
        assert name in values, name
    assert "change-me" in values["SECRET_KEY"] and "change-me" in values["JOBS_METRICS_TOKEN"]
    assert values.get("DEBUG", "0") in ("0", "false", "")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    """The units as installed, with the paths pointed at this checkout so that the binaries exist."""
    for path in (WEB, WORKER):
        text = (
            path.read_text()
            .replace("/srv/shop/.venv", str(BASE_DIR / ".venv"))
            .replace("/srv/shop", str(BASE_DIR))
            .replace("/etc/shop/shop.env", str(ENV_EXAMPLE))
        )
        (tmp_path / path.name).write_text(text)
    instances = ["shop-web.service", "shop-worker@all.service", r"shop-worker@default\x2cmail.service"]
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *instances],
        env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result
