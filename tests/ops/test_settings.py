"""Every operations setting that cannot work is refused when the process starts, saying why."""

import subprocess

import pytest

from tests.utils import manage_py, subprocess_env


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("HEALTH_DB_TIMEOUT", "0", "HEALTH_DB_TIMEOUT must be a positive number of seconds, not 0."),
        (
            "HEALTH_PROBE_HEADER",
            "X Probe",
            "HEALTH_PROBE_HEADER must be a header name (letters, digits, dashes)",
        ),
        (
            "OTEL_TRACES_FILE",
            "/nonexistent/dir/spans.jsonl",
            "OTEL_TRACES_FILE '/nonexistent/dir/spans.jsonl' cannot",
        ),
        ("TRACE_SAMPLE_RATIO", "1.5", "TRACE_SAMPLE_RATIO must be between 0 and 1, not 1.5."),
        ("TRACE_SAMPLE_PER_SECOND", "-1", "TRACE_SAMPLE_PER_SECOND must be zero or more, not -1."),
        (
            "SENTRY_DSN",
            "ftp://key@sentry.example.com/1",
            "SENTRY_DSN is not a valid DSN: Unsupported scheme 'ftp'.",
        ),
    ],
)
def test_a_bad_operations_setting_is_refused_at_start_with_a_clear_error(variable, value, message):
    result = subprocess.run(
        [*manage_py(), "check"],
        capture_output=True,
        text=True,
        env=subprocess_env(**{variable: value}),
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stderr.strip().splitlines()[-1]
