"""`runworker` with every claim timed: `python -m bench.timed_worker OUT.json runworker ...`.

At exit the claim round trips (seconds, from ``engine.claim`` being called to its return: the
transaction, and behind PgBouncer the wait for a server connection) are written to OUT.json as a list.
Bench-only: the worker itself does not keep these timings.
"""

import atexit
import json
import sys
import time
from pathlib import Path


def main() -> None:
    out = Path(sys.argv[1])
    import django

    django.setup()
    from django.core.management import execute_from_command_line

    from jobs import engine

    claim, times = engine.claim, []

    def timed_claim(*args, **kwargs):
        start = time.perf_counter()
        try:
            return claim(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - start)

    engine.claim = timed_claim
    atexit.register(lambda: out.write_text(json.dumps(times)))
    execute_from_command_line(["manage.py", *sys.argv[2:]])


if __name__ == "__main__":
    main()
