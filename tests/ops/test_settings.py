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
            "TRACE_SAMPLE_MAX_PER_SECOND",
            "5",
            "TRACE_SAMPLE_MAX_PER_SECOND (5) must be at least TRACE_SAMPLE_PER_SECOND (10).",
        ),
        (
            "JOBS_LAG_SLO",
            "mail=soon",
            "JOBS_LAG_SLO item 'mail=soon' is not seconds or queue=seconds (a positive number)",
        ),
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


def test_every_jobs_setting_the_readme_names_is_read_from_the_environment():
    import json
    import re
    from pathlib import Path

    from jobs.conf import DEFAULTS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    names = sorted(set(re.findall(r"\bJOBS_[A-Z_]+[A-Z]\b", readme)))
    assert "JOBS_PREFETCH" in names and set(names) <= set(DEFAULTS), set(names) - set(DEFAULTS)
    # Settings with a format of their own get a value in that format.
    examples = {"JOBS_LAG_SLO": "45,mail=90"}
    wanted = {}
    for name in names:
        default = DEFAULTS[name]
        if name in examples:
            wanted[name] = examples[name]
        elif isinstance(default, bool):
            wanted[name] = not default
        elif isinstance(default, (int, float)) or default is None:
            wanted[name] = 7 if default is None or isinstance(default, int) else 2.5
        else:
            wanted[name] = "from-the-environment"
    env = {name: str(int(v) if isinstance(v, bool) else v) for name, v in wanted.items()}
    code = (
        "from django.conf import settings; import json;"
        f" print(json.dumps({{n: getattr(settings, n) for n in {names!r}}}))"
    )
    result = subprocess.run(
        [*manage_py(), "shell", "-c", code],
        capture_output=True,
        text=True,
        env=subprocess_env(**env),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == wanted


@pytest.mark.django_db  # the test database exists (the child process connects to it)
@pytest.mark.parametrize("max_age, kept", [("60", True), ("0", False)])
def test_conn_max_age_keeps_a_web_processs_connection_between_requests_on_either_database(max_age, kept):
    # What a web process does around each request (Django's request_started and request_finished)
    code = (
        "from django.db import close_old_connections, connection;"
        " from django.db.backends.signals import connection_created; opened = [];"
        " connection_created.connect(lambda **kw: opened.append(1), weak=False);"
        " [(close_old_connections(), connection.cursor().execute('SELECT 1'), close_old_connections())"
        " for _ in range(3)]; print(connection.vendor, len(opened) == 1)"
    )
    result = subprocess.run(
        [*manage_py(), "shell", "-c", code],
        capture_output=True,
        text=True,
        env=subprocess_env(CONN_MAX_AGE=max_age),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    vendor, same = result.stdout.strip().splitlines()[-1].split()
    assert vendor in ("sqlite", "postgresql") and same == str(kept)
