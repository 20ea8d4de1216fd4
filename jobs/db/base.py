"""What every statement of the contract needs: which database, its clock, parameters in its form."""

from collections.abc import Sequence
from datetime import datetime

from django.db import connection
from django.db.models.functions import Now
from django.utils import timezone

from jobs import conf

NOTIFY_CHANNEL = "jobs_enqueued"


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def now() -> datetime:
    """The database's clock: the time every decision about ownership and due times is made by, so that
    hosts whose clocks disagree agree on it. On PostgreSQL the server's ``statement_timestamp()``; a
    SQLite file is only ever shared by processes on one host, whose clock is its clock."""
    if not is_postgres():
        return timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement_timestamp()")
        return cursor.fetchone()[0]


def now_value():
    """The database's clock as a value for an ORM update or filter, read by the database itself (no
    round trip): ``statement_timestamp()`` on PostgreSQL, this host's clock for SQLite (see now())."""
    return Now() if is_postgres() else timezone.now()


def dt(value: datetime):
    """A datetime as a raw-SQL parameter, stored exactly as the ORM stores it (naive UTC text on SQLite)."""
    return connection.ops.adapt_datetimefield_value(value)


def in_list(column: str, values: Sequence, params: list) -> str:
    params.extend(values)
    return f"{column} IN ({', '.join(['%s'] * len(values))})"


def timeout_ms() -> str:
    return str(int(conf.get("JOBS_DB_TIMEOUT") * 1000))
