"""The queue's tables. The engine (``jobs.engine``) owns the state transitions; models hold data and
the constraints that keep it consistent under concurrency."""

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


class Priority:
    """Named priorities; any integer works, higher runs first."""

    LOW = -10
    NORMAL = 0
    HIGH = 10
    CRITICAL = 20


class JobStatus(models.TextChoices):
    BLOCKED = "blocked", "Blocked (waiting on parents)"
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    DEAD = "dead", "Dead"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = (JobStatus.BLOCKED, JobStatus.PENDING, JobStatus.RUNNING)
FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.DEAD, JobStatus.CANCELLED)


class Job(models.Model):
    type = models.CharField(max_length=100)
    queue = models.CharField(max_length=64, default="default")
    payload = models.JSONField(default=dict, blank=True)
    payload_version = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.PENDING)
    status_reason = models.TextField(blank=True, default="")
    priority = models.SmallIntegerField(default=Priority.NORMAL)
    run_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    errors = models.JSONField(default=list, blank=True)
    result = models.JSONField(null=True, blank=True)
    progress = models.PositiveSmallIntegerField(null=True, blank=True)
    locked_by = models.CharField(max_length=200, null=True, blank=True)
    lock_token = models.CharField(max_length=32, null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    unique_key = models.CharField(max_length=200, null=True, blank=True)
    concurrency_key = models.CharField(max_length=200, null=True, blank=True)
    concurrency_limit = models.PositiveIntegerField(null=True, blank=True)
    # The key fair share rotates over and a per-key rate limit counts by (jobs.fairshare): set at
    # enqueue for types that declare one (the rate limit's key, fair_key, or the concurrency key).
    fair_key = models.CharField(max_length=200, null=True, blank=True)
    waiting_on = models.PositiveIntegerField(default=0, help_text="Parents that have not succeeded yet.")
    cancel_requested = models.BooleanField(default=False)
    # Where the job was enqueued from, for tracing (W3C trace context headers), set by a job_enqueuing
    # receiver; empty unless tracing is on.
    trace_context = models.JSONField(null=True, blank=True)
    # Labels staff filter and search by ("order:ORD-2026-000042"), and free-form facts for them.
    tags = models.JSONField(default=list, blank=True)
    meta = models.JSONField(default=dict, blank=True)
    # A job not claimed by then is cancelled (reason "expired") by the claim that finds it, never run late.
    expires_at = models.DateTimeField(null=True, blank=True)
    # Times the handler asked to run later (Snooze) without using an attempt; bounded by max_snoozes.
    snoozes = models.PositiveIntegerField(default=0)
    requeued_from = models.ForeignKey(
        "DeadLetter", null=True, blank=True, on_delete=models.SET_NULL, related_name="requeued_jobs"
    )
    parents = models.ManyToManyField(
        "self",
        symmetrical=False,
        through="JobDependency",
        through_fields=("child", "parent"),
        related_name="children",
        blank=True,
    )

    class Meta:
        indexes = [
            # The claim query walks this index: only pending rows are in it, so it stays small however
            # many finished jobs the table holds.
            models.Index(
                fields=["-priority", "run_at", "id"],
                name="jobs_job_claim_idx",
                condition=models.Q(status="pending", fair_key__isnull=True),
            ),
            # Keyed jobs wait in their own index, by type and key in claim order: the fair-share pass
            # finds each key's next jobs in it, and the plain claim never walks past them.
            models.Index(
                fields=["type", "fair_key", "-priority", "run_at", "id"],
                name="jobs_job_fair_idx",
                condition=models.Q(status="pending", fair_key__isnull=False),
            ),
            models.Index(
                fields=["heartbeat_at"], name="jobs_job_running_idx", condition=models.Q(status="running")
            ),
            models.Index(fields=["status", "finished_at"], name="jobs_job_finished_idx"),
            models.Index(fields=["type", "status"], name="jobs_job_type_status_idx"),
            models.Index(
                fields=["concurrency_key"],
                name="jobs_job_concurrency_idx",
                condition=models.Q(status="running", concurrency_key__isnull=False),
            ),
            # Jobs by key whatever their status (an order's pipeline, the enqueue-time duplicate check,
            # staff searching a key): the unique constraint below only holds unfinished ones.
            models.Index(
                fields=["unique_key"],
                name="jobs_job_unique_key_idx",
                condition=models.Q(unique_key__isnull=False),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["unique_key"],
                name="jobs_job_unique_active_key",
                condition=models.Q(status__in=["blocked", "pending", "running"]),
            ),
        ]
        permissions = [
            ("retry_job", "Can retry, run now or reprioritise jobs"),
            ("cancel_job", "Can cancel jobs"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.type} ({self.status})"

    def refresh_from_db(self, using=None, fields=None, from_queryset=None):
        """Reading one deferred column of a row loaded with some deferred (a claimed job carries only
        what running it reads: jobs.db.claim.CLAIMED) loads all of them in one query, not one each."""
        deferred = self.get_deferred_fields()
        if fields is not None and deferred and set(fields) <= deferred:
            fields = deferred
        super().refresh_from_db(using=using, fields=fields, from_queryset=from_queryset)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    # What staff may do to a job: asked by jobs.staff before it acts and by the admin before it offers.

    def can_retry(self) -> bool:
        """Pending (run it now), or dead with its dead letter still open (requeue it, once)."""
        if self.status == JobStatus.DEAD:
            dead = getattr(self, "dead_letter", None)
            return dead is not None and dead.is_open
        return self.status == JobStatus.PENDING

    def can_run_now(self) -> bool:
        return self.status == JobStatus.PENDING

    def can_cancel(self) -> bool:
        return not self.is_finished

    def can_reprioritise(self) -> bool:
        """Not claimed yet: a running or finished job keeps its priority."""
        return self.status in (JobStatus.BLOCKED, JobStatus.PENDING)

    @property
    def last_error(self) -> dict | None:
        return self.errors[-1] if self.errors else None


class DependsWhen(models.TextChoices):
    SUCCEEDED = "succeeded", "After the parent succeeded (a dead or cancelled parent cancels the child)"
    FINISHED = "finished", "After the parent finished, whatever its outcome"


class JobDependency(models.Model):
    parent = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="child_links")
    child = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="parent_links")
    when = models.CharField(max_length=16, choices=DependsWhen.choices, default=DependsWhen.SUCCEEDED)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["parent", "child"], name="jobs_dependency_unique")]

    def __str__(self) -> str:
        return f"#{self.parent_id} -> #{self.child_id}"


class DeadLetterQuerySet(models.QuerySet):
    def open(self) -> "DeadLetterQuerySet":
        """Neither requeued nor discarded: what staff still have to look at (see DeadLetter.is_open)."""
        return self.filter(requeued_at__isnull=True, discarded_at__isnull=True)


class DeadLetter(models.Model):
    """A job that gave up, with its whole error history. Staff requeue (a fresh job) or discard it."""

    job = models.OneToOneField(Job, null=True, on_delete=models.SET_NULL, related_name="dead_letter")
    type = models.CharField(max_length=100)
    queue = models.CharField(max_length=64)
    payload = models.JSONField(default=dict, blank=True)
    payload_version = models.PositiveSmallIntegerField(default=1)
    priority = models.SmallIntegerField(default=Priority.NORMAL)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True)
    error_class = models.CharField(max_length=200, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    requeued_at = models.DateTimeField(null=True, blank=True)
    requeued_job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    discarded_at = models.DateTimeField(null=True, blank=True)
    discarded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    discard_reason = models.TextField(blank=True, default="")

    objects = DeadLetterQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["type", "error_class"], name="jobs_dead_type_error_idx"),
            models.Index(fields=["-created_at"], name="jobs_dead_created_idx"),
        ]
        permissions = [
            ("requeue_deadletter", "Can requeue dead letters"),
            ("discard_deadletter", "Can discard dead letters"),
        ]

    def __str__(self) -> str:
        return f"dead #{self.pk} {self.type}: {self.error_class}"

    @property
    def is_open(self) -> bool:
        return self.requeued_at is None and self.discarded_at is None


class WorkerProcess(models.Model):
    id = models.CharField(max_length=200, primary_key=True)
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list, blank=True, help_text="Empty: all queues.")
    concurrency = models.PositiveIntegerField(default=1)
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now)
    current_jobs = models.JSONField(default=list, blank=True)
    jobs_done = models.PositiveIntegerField(default=0)
    state = models.CharField(max_length=16, default="running")

    class Meta:
        verbose_name_plural = "worker processes"

    def __str__(self) -> str:
        return self.id

    def is_alive(self, now, stale_after: float) -> bool:
        """Heartbeating within ``stale_after`` seconds of ``now`` (a time read from the database's clock:
        hosts' clocks may disagree). The one definition of a live worker: dashboard, metrics, admin,
        health check."""
        return self.heartbeat_at >= now - timedelta(seconds=stale_after)


class QueueState(models.Model):
    """A queue staff paused: no worker claims from it until it is resumed."""

    name = models.CharField(max_length=64, primary_key=True)
    paused = models.BooleanField(default=False)
    changed_at = models.DateTimeField(default=timezone.now)
    changed_by = models.CharField(max_length=150, blank=True, default="")

    def __str__(self) -> str:
        return f"{self.name} ({'paused' if self.paused else 'running'})"


class JobTypeState(models.Model):
    """A job type staff paused: no worker claims its jobs, in whichever queue, until it is resumed;
    other types in the same queues keep running."""

    name = models.CharField(max_length=100, primary_key=True)
    paused = models.BooleanField(default=False)
    changed_at = models.DateTimeField(default=timezone.now)
    changed_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        verbose_name = "job type"

    def __str__(self) -> str:
        return f"{self.name} ({'paused' if self.paused else 'running'})"


class BreakerState(models.Model):
    """The circuit breaker of a job type, or of one concurrency key of it (``key`` "" for jobs without
    one), shared by every worker; a row exists once a job of the type failed (see jobs.breakers)."""

    class State(models.TextChoices):
        CLOSED = "closed", "Closed"
        OPEN = "open", "Open"
        HALF_OPEN = "half_open", "Half-open (probing)"

    type = models.CharField(max_length=100)
    key = models.CharField(max_length=200, blank=True, default="")
    state = models.CharField(max_length=16, choices=State.choices, default=State.CLOSED)
    failures = models.JSONField(default=list, blank=True, help_text="When the window's failures happened.")
    opened_at = models.DateTimeField(null=True, blank=True)
    probe_at = models.DateTimeField(null=True, blank=True, help_text="When an open breaker probes.")
    probe_job_id = models.BigIntegerField(null=True, blank=True, help_text="The half-open breaker's probe.")
    changed_at = models.DateTimeField(default=timezone.now)
    changed_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        verbose_name = "circuit breaker"
        ordering = ["type", "key"]
        constraints = [models.UniqueConstraint(fields=["type", "key"], name="jobs_breaker_one_per_key")]

    def __str__(self) -> str:
        return f"{self.label} ({self.get_state_display().lower()})"

    @property
    def label(self) -> str:
        return f"{self.type} [{self.key}]" if self.key else self.type


class RateLimitStart(models.Model):
    """One start of a rate-limited job type (or of one key of it, for a per-key limit): the sliding
    window that the limit is counted over."""

    type = models.CharField(max_length=100)
    key = models.CharField(max_length=200, blank=True, default="")  # "": the type's own limit
    started_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["type", "key", "started_at"], name="jobs_ratelimit_key_idx")]

    def __str__(self) -> str:
        return f"{self.type}{f'[{self.key}]' if self.key else ''} at {self.started_at}"


class FairShareKey(models.Model):
    """Where one key of a fair-shared job type stands in its rotation (stride scheduling): each claim of
    one of its jobs moves it on by 1/weight, and the keys furthest behind are claimed first. A row
    lives while its key has pending jobs (jobs.fairshare)."""

    type = models.CharField(max_length=100)
    key = models.CharField(max_length=200)
    position = models.FloatField(default=0.0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["type", "key"], name="jobs_fairsharekey_once")]

    def __str__(self) -> str:
        return f"{self.type}[{self.key}] at {self.position:g}"


class Effect(models.Model):
    """A side effect made once: a database effect recorded in its own transaction, or the sent-marker
    of an external one (email, HTTP)."""

    key = models.CharField(max_length=255, unique=True)
    job_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.key


class CronSchedule(models.Model):
    """A job enqueued on a cron expression. Each due time is enqueued exactly once: the scheduler locks
    the row and advances ``next_run_at`` in the transaction that enqueues."""

    name = models.CharField(max_length=100, unique=True)
    expression = models.CharField(max_length=100, help_text="Cron expression, e.g. '0 3 * * *'.")
    time_zone = models.CharField(max_length=64, default="UTC")
    job_type = models.CharField(max_length=100)
    payload = models.JSONField(default=dict, blank=True)
    priority = models.SmallIntegerField(null=True, blank=True, help_text="Empty: the job type's default.")
    enabled = models.BooleanField(default=True)
    declared_in_code = models.BooleanField(default=False, editable=False)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [("run_cronschedule", "Can run cron schedules now")]

    def __str__(self) -> str:
        return f"{self.name} ({self.expression})"


class AuditEntry(models.Model):
    """Who did what to a job, dead letter, queue or schedule, and when."""

    at = models.DateTimeField(default=timezone.now)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor = models.CharField(max_length=150, help_text="Username, or 'cli'/'system'.")
    action = models.CharField(max_length=32)
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit")
    dead_letter = models.ForeignKey(
        DeadLetter, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit"
    )

    class TargetKind(models.TextChoices):
        NONE = "", "-"
        QUEUE = "queue", "Queue"
        TYPE = "type", "Job type"
        SCHEDULE = "schedule", "Schedule"

    target_kind = models.CharField(max_length=16, blank=True, default="", choices=TargetKind.choices)
    target = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text="The queue's, job type's or schedule's name (see target_kind).",
    )
    details = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-at"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor} {self.action}"


class JobStat(models.Model):
    """Counters per job type, outcome and run-time bucket, added to by every worker (flushed with its
    heartbeat), so metrics and charts never count over the job table. ``bucket`` is the upper bound in
    seconds of the run-time histogram bucket ("+Inf" for the last); ``outcome`` "started" has bucket ""."""

    type = models.CharField(max_length=100)
    outcome = models.CharField(max_length=16)
    bucket = models.CharField(max_length=16, default="")
    count = models.BigIntegerField(default=0)
    seconds = models.FloatField(default=0.0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["type", "outcome", "bucket"], name="jobs_jobstat_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.outcome} {self.bucket}: {self.count}"


class Alert(models.Model):
    """One incident (a stalled queue, a lag over its SLO, a dead worker holding jobs, a burst of dead
    letters), shared by every worker: the evaluator that inserts the open row (the constraint below
    lets one in per kind and subject) sends the alert email, and the one whose update closes it sends
    the recovery email, so each is sent once however many workers evaluate."""

    class Kind(models.TextChoices):
        STALLED = "stalled", "Queue stalled"
        LAG = "lag", "Lag over SLO"
        DEAD_WORKER = "dead_worker", "Dead worker holding jobs"
        DEAD_LETTERS = "dead_letters", "Burst of dead letters"
        BREAKER = "breaker", "Circuit breaker open"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    subject = models.CharField(max_length=200, blank=True, default="", help_text="Queue or worker id.")
    text = models.TextField(blank=True, default="", help_text="What is wrong, as the email said.")
    since = models.DateTimeField(help_text="When the condition began, as far as the rows tell.")
    opened_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "subject"],
                name="jobs_alert_one_open",
                condition=models.Q(closed_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.subject}".strip()
