"""The scheduler's clock: the database's (see db.now()), so that cron fires on time whichever host's
clock is off. Tests move it (for every process at once) by writing an offset in seconds to the file
named by ``JOBS_CLOCK_OFFSET_FILE``; production never sets that."""

import os
from datetime import datetime, timedelta

from jobs import db


def now() -> datetime:
    path = os.environ.get("JOBS_CLOCK_OFFSET_FILE")
    if not path:
        return db.now()
    try:
        with open(path) as f:
            offset = float(f.read().strip() or 0)
    except (OSError, ValueError):
        offset = 0.0
    return db.now() + timedelta(seconds=offset)
