"""shop.settings as production runs it: `check --deploy` is clean, and it refuses to start without
SECRET_KEY or ALLOWED_HOSTS. Each case is a `manage.py check` in a clean environment (no test settings)."""

import secrets
import subprocess

import pytest

from tests.utils import BASE_DIR, manage_py

PRODUCTION = {
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "shop.example.com",
    "DATABASE_URL": "postgres://shop:pw@db.example.com:5432/shop",  # never connected to by `check`
}


def check(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "DJANGO_SETTINGS_MODULE": "shop.settings"}
    return subprocess.run(
        [*manage_py(), "check", *args],
        env={**clean, **env},
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_deploy_is_clean_with_the_production_settings():
    result = check("--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in PRODUCTION.items() if k != "SECRET_KEY"}
    result = check(**env)
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_production_refuses_to_start_without_allowed_hosts():
    env = {k: v for k, v in PRODUCTION.items() if k != "ALLOWED_HOSTS"}
    result = check(**env)
    assert result.returncode != 0
    assert "ALLOWED_HOSTS must be set" in result.stderr


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_secret_key_counts_as_missing(value):
    result = check(**{**PRODUCTION, "SECRET_KEY": value})
    assert result.returncode != 0


@pytest.mark.parametrize("value", ["", ","])
def test_empty_allowed_hosts_count_as_missing(value):
    result = check(**{**PRODUCTION, "ALLOWED_HOSTS": value})
    assert result.returncode != 0 and "ALLOWED_HOSTS must be set" in result.stderr


def test_check_deploy_fails_on_a_weak_secret_key():
    result = check("--deploy", "--fail-level", "WARNING", **{**PRODUCTION, "SECRET_KEY": "short"})
    assert result.returncode != 0 and "security.W009" in result.stderr


def test_check_deploy_fails_with_debug_on():
    result = check("--deploy", "--fail-level", "WARNING", **{**PRODUCTION, "DEBUG": "1"})
    assert result.returncode != 0 and "security.W018" in result.stderr


def test_production_reconciles_pending_payments_every_minute_and_refuses_an_unknown_capture_mode():
    shell = "from django.conf import settings; print(settings.RECONCILE_SCHEDULE, settings.PAYMENT_CAPTURE)"
    clean = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "DJANGO_SETTINGS_MODULE": "shop.settings"}
    result = subprocess.run(
        [*manage_py(), "shell", "-c", shell],
        env={**clean, **PRODUCTION},
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.splitlines()[-1].split() == ["*", "*", "*", "*", "*", "immediately"], result.stderr
    refused = check(**PRODUCTION, PAYMENT_CAPTURE="later")
    assert refused.returncode != 0 and "PAYMENT_CAPTURE must be" in refused.stderr
