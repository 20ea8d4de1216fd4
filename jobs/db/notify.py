"""NOTIFY on enqueue and the LISTEN connection that hears it (PostgreSQL only)."""

from collections.abc import Iterable

from django.db import connection

from jobs import conf
from jobs.db.base import NOTIFY_CHANNEL, is_postgres


def notify(queues: Iterable[str]) -> None:
    """Wake listening workers when the current transaction commits (PostgreSQL drops it on rollback)."""
    if not is_postgres() or not conf.get("JOBS_LISTEN_NOTIFY"):
        return
    with connection.cursor() as cursor:
        for queue in sorted(set(queues)):
            cursor.execute("SELECT pg_notify(%s, %s)", [NOTIFY_CHANNEL, queue])


def listen(stopping, on_notify, on_listening) -> None:
    """LISTEN on the enqueue channel over a connection of its own (PostgreSQL) until ``stopping`` is
    set: ``on_listening()`` once listening (anything enqueued before was not heard), then
    ``on_notify(queue)`` for each enqueue's notification. Raises the connection's error when it is
    lost (the caller backs off and listens again)."""
    import psycopg  # PostgreSQL only: a SQLite install never listens

    with psycopg.connect(**listen_conninfo()) as conn:
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        on_listening()
        while not stopping.is_set():
            for note in conn.notifies(timeout=1.0):
                on_notify(note.payload)


def listen_errors() -> tuple[type[BaseException], ...]:
    """What a lost LISTEN connection raises."""
    import psycopg
    from django.db import DatabaseError

    return (psycopg.Error, DatabaseError)


def listen_conninfo() -> dict:
    """psycopg.connect() keyword arguments for the database Django uses (for the LISTEN connection)."""
    s = connection.settings_dict
    params = {"dbname": s["NAME"], "autocommit": True}
    for key, name in (("USER", "user"), ("PASSWORD", "password"), ("HOST", "host"), ("PORT", "port")):
        if s.get(key):
            params[name] = s[key]
    # The connection's libpq options (timeouts, keepalives, sslmode...), not Django's own keys.
    django_keys = {"isolation_level", "server_side_binding", "assume_role", "pool", "cursor_factory"}
    params.update({k: v for k, v in s.get("OPTIONS", {}).items() if k not in django_keys})
    return params
