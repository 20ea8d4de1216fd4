"""System checks of what the queue's guarantees rest on, outside its own code.

On SQLite a claim is one writer at a time only because every transaction begins IMMEDIATE (it takes
the write lock up front): with the default DEFERRED mode, two claims can read the same pending rows
and one fails half-way with "database is locked". The project sets it in its settings; this check
makes sure no configuration loses it, as django-tasks-db enforces its exclusive transactions itself.
"""

from django.conf import settings
from django.core import checks

SERIAL_MODES = {"IMMEDIATE", "EXCLUSIVE"}


@checks.register  # from the settings alone: run by every command, runworker included
def check_sqlite_transaction_mode(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    return sqlite_mode_errors(settings.DATABASES)


def sqlite_mode_errors(databases: dict) -> list[checks.CheckMessage]:
    errors = []
    for alias, config in databases.items():
        if not config.get("ENGINE", "").endswith("sqlite3"):
            continue
        mode = str((config.get("OPTIONS") or {}).get("transaction_mode") or "DEFERRED").upper()
        if mode not in SERIAL_MODES:
            errors.append(
                checks.Error(
                    f"SQLite database {alias!r} begins its transactions {mode}: the job queue needs"
                    " IMMEDIATE, so that a claim holds the write lock from its first statement.",
                    hint=f'Set DATABASES["{alias}"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE".',
                    id="jobs.E001",
                )
            )
    return errors
