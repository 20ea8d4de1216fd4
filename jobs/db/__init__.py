"""The queue's concurrency contract, in one package: every vendor difference and every statement written
as SQL (the claim, completion, NOTIFY/LISTEN, the reaper's and scheduler's row locks, the statistics
upsert, the row estimate, parameter adaptation). Anyone reviewing locking reads this package:
``claim`` (the claim and every lock), ``writes`` (inserts, completion, heartbeats, deletes),
``workflow`` (a workflow's jobs and dependencies in one insert), ``notify`` (NOTIFY/LISTEN), ``fair``
(the fair-share claim's reads), ``tags`` (finding jobs by tag) and ``base`` (the database's clock). No
other module of ``jobs`` opens a cursor or asks which database it runs on beyond ``is_postgres()``.

PostgreSQL: ``FOR UPDATE SKIP LOCKED`` lets many workers claim side by side without waiting on each
other. SQLite: every transaction is ``BEGIN IMMEDIATE`` (see settings; the system check jobs.E001
refuses a database without it), so a claim holds the single write lock from its first statement and
two claims can never interleave.
"""

from jobs.db.base import NOTIFY_CHANNEL, dt, in_list, is_postgres, now, now_value, timeout_ms  # noqa: F401
from jobs.db.claim import (  # noqa: F401
    CLAIMED,
    bound_time,
    claim_at_once,
    claim_ids,
    claim_jobs,
    claim_keyed_ids,
    claim_sql,
    lock_keyed_claims,
    lock_name,
    prepare_claim,
    skip_locked,
)
from jobs.db.fair import next_due, pending_keys  # noqa: F401
from jobs.db.notify import listen, listen_conninfo, listen_errors, notify  # noqa: F401
from jobs.db.tags import tagged  # noqa: F401
from jobs.db.workflow import (
    child_ids,  # noqa: F401
    insert_workflow,  # noqa: F401
)
from jobs.db.workflow import discard as discard_workflow  # noqa: F401
from jobs.db.writes import (  # noqa: F401
    add_job_stats,
    bulk_insert_jobs,
    complete_ids,
    complete_sql,
    delete_jobs,
    estimated_rows,
    heartbeat_jobs,
    insert_job,
    relax_commit,
)
