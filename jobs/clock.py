"""The scheduler's clock. Tests move it (for every process at once) by writing an offset in seconds
to the file named by ``JOBS_CLOCK_OFFSET_FILE``; production never sets that."""

import os
from datetime import datetime, timedelta

from django.utils import timezone


def now() -> datetime:
    path = os.environ.get("JOBS_CLOCK_OFFSET_FILE")
    if not path:
        return timezone.now()
    try:
        with open(path) as f:
            offset = float(f.read().strip() or 0)
    except (OSError, ValueError):
        offset = 0.0
    return timezone.now() + timedelta(seconds=offset)
