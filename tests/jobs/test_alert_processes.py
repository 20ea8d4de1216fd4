"""Stall alerts from real `runworker` processes: the queue's only worker is frozen (SIGSTOP) while its
jobs are due, two other workers evaluate the alerts, and the stall is emailed once; the frozen worker
thawed (SIGCONT) drains the queue and the recovery is emailed once."""

import collections
import signal
from email import message_from_bytes

import pytest

from jobs import db
from jobs.api import enqueue
from jobs.models import Alert, Job, JobStatus, WorkerProcess
from tests.utils import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def subjects(mail_dir) -> collections.Counter:
    """Subjects of the messages the workers' filemail backends wrote (one file per connection)."""
    counts = collections.Counter()
    for path in mail_dir.glob("*.log"):
        for chunk in path.read_bytes().split(b"-" * 79):
            if chunk.strip():
                counts[message_from_bytes(chunk.strip())["Subject"]] += 1
    return counts


def test_a_stalled_queue_emails_one_alert_and_one_recovery(workers, tmp_path):
    mail_dir = tmp_path / "mail"
    env = {
        "EMAIL_URL": f"filemail://{mail_dir}",
        "JOBS_ALERT_EMAILS": "ops@example.com",
        "JOBS_ALERT_INTERVAL": "0.2",
        "JOBS_STALL_AFTER": "2",
        "JOBS_LAG_SLO": "",
        "JOBS_DEAD_LETTER_BURST": "0",
    }
    frozen = workers.start("--queues", "stalls", env=env)
    evaluators = [workers.start("--queues", "elsewhere", env=env) for _ in range(2)]
    wait_for(lambda: WorkerProcess.objects.count() == 3, timeout=30, message="three workers registered")
    workers.freeze(frozen)
    jobs = [enqueue("test.noop", {"key": str(i)}, queue="stalls") for i in range(3)]

    stalled, recovered = "[jobs] Queue stalled stalls", "[jobs] Recovered: queue stalled stalls"
    wait_for(lambda: subjects(mail_dir)[stalled], timeout=30, message="the stall emailed")
    alert = Alert.objects.get(kind="stalled", subject="stalls", closed_at__isnull=True)
    # The evaluators keep evaluating while the queue stays stalled: past ten of their intervals, still
    # the one email.
    wait_for(lambda: (db.now() - alert.opened_at).total_seconds() > 2, timeout=10, message="2 s open")
    assert subjects(mail_dir) == {stalled: 1}
    assert Job.objects.filter(id__in=[j.id for j in jobs], status=JobStatus.PENDING).count() == 3

    frozen.send_signal(signal.SIGCONT)
    wait_for(lambda: subjects(mail_dir)[recovered], timeout=30, message="the recovery emailed")
    # The first completion ends the stall; the rest drain after it.
    wait_for(
        lambda: Job.objects.filter(id__in=[j.id for j in jobs], status=JobStatus.SUCCEEDED).count() == 3,
        timeout=30,
        message="the queue drained",
    )
    alert.refresh_from_db()
    assert alert.closed_at is not None
    assert list(Alert.objects.values_list("kind", "subject")) == [("stalled", "stalls")]
    for proc in [frozen, *evaluators]:
        proc.terminate()
        assert workers.exit_code(proc, 20) == 0
    assert subjects(mail_dir) == {stalled: 1, recovered: 1}
    mail = "".join(path.read_text() for path in mail_dir.glob("*.log"))
    assert mail.count("To: ops@example.com") == 2 and "Dashboard: http://127.0.0.1:8000/staff/jobs/" in mail
