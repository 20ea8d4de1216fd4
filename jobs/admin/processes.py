"""Queues and job types (pause, resume), worker processes, alerts and the audit trail in the admin."""

from django import forms
from django.contrib import admin, messages
from django.db.models import F
from django.db.models.functions import Now
from django.utils.html import format_html_join

from jobs import conf, staff
from jobs.admin.common import ReadOnlyAdmin, dead_letter_link, job_link
from jobs.models import Alert, AuditEntry, JobTypeState, QueueState, WorkerProcess

# -- queues, workers, audit ----------------------------------------------------------------------


class QueueStateForm(forms.ModelForm):
    class Meta:
        model = QueueState
        fields = ["name", "paused"]


@admin.register(QueueState)
class QueueStateAdmin(admin.ModelAdmin):
    """Queues: pausing one stops every worker claiming from it; jobs already running finish."""

    form = QueueStateForm
    list_display = ["name", "paused", "changed_at", "changed_by"]
    actions = ["pause_queues", "resume_queues"]
    ordering = ["name"]

    def get_readonly_fields(self, request, obj=None):
        return ["name"] if obj else []

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change):
        if obj.paused:
            staff.pause_queue(request.user, obj.name)
        else:
            staff.resume_queue(request.user, obj.name)

    @admin.action(description="Pause (all workers stop claiming)", permissions=["change"])
    def pause_queues(self, request, queryset):
        self._each_queue(request, queryset, staff.pause_queue, "Paused")

    @admin.action(description="Resume", permissions=["change"])
    def resume_queues(self, request, queryset):
        self._each_queue(request, queryset, staff.resume_queue, "Resumed")

    def _each_queue(self, request, queryset, operation, verb: str) -> None:
        names = list(queryset.values_list("name", flat=True))
        for name in names:
            operation(request.user, name)
        messages.success(request, f"{verb}: {', '.join(names)}")


class JobTypeStateForm(forms.ModelForm):
    class Meta:
        model = JobTypeState
        fields = ["paused"]


@admin.register(JobTypeState)
class JobTypeStateAdmin(admin.ModelAdmin):
    """Job types: pausing one stops every worker claiming its jobs, in any queue; other types run on.
    A row per type the code declares (written at migrate), or that staff once paused."""

    form = JobTypeStateForm
    list_display = ["name", "paused", "changed_at", "changed_by"]
    list_filter = ["paused"]
    search_fields = ["name"]
    actions = ["pause_types", "resume_types"]
    ordering = ["name"]

    def has_add_permission(self, request) -> bool:
        return False  # a type exists in code; pausing one by a typo would hold nothing

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change):
        if obj.paused:
            staff.pause_type(request.user, obj.name)
        else:
            staff.resume_type(request.user, obj.name)

    @admin.action(description="Pause (all workers stop claiming this type)", permissions=["change"])
    def pause_types(self, request, queryset):
        self._each_type(request, queryset, staff.pause_type, "Paused")

    @admin.action(description="Resume", permissions=["change"])
    def resume_types(self, request, queryset):
        self._each_type(request, queryset, staff.resume_type, "Resumed")

    def _each_type(self, request, queryset, operation, verb: str) -> None:
        names = list(queryset.values_list("name", flat=True))
        for name in names:
            operation(request.user, name)
        messages.success(request, f"{verb}: {', '.join(names)}")


@admin.register(WorkerProcess)
class WorkerProcessAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "hostname",
        "pid",
        "state",
        "alive",
        "heartbeat_age",
        "queue_list",
        "concurrency",
        "running_jobs",
        "jobs_done",
        "started_at",
    ]
    ordering = ["hostname", "id"]
    readonly_fields = [*list_display, "heartbeat_at"]
    fields = readonly_fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def get_queryset(self, request):
        # Ages by the database's clock, which stamped the heartbeats, never the web host's.
        return super().get_queryset(request).annotate(checked_at=Now())

    @admin.display(boolean=True, description="alive")
    def alive(self, obj):
        return obj.is_alive(obj.checked_at, conf.get("JOBS_STALE_AFTER"))

    @admin.display(description="heartbeat", ordering="heartbeat_at")
    def heartbeat_age(self, obj):
        seconds = (obj.checked_at - obj.heartbeat_at).total_seconds()
        return f"{seconds:.0f}s ago"

    @admin.display(description="queues")
    def queue_list(self, obj):
        return ", ".join(obj.queues) or "all"

    @admin.display(description="current jobs")
    def running_jobs(self, obj):
        if not obj.current_jobs:
            return "-"
        return format_html_join(", ", "{}", ((job_link(pk),) for pk in obj.current_jobs))


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ["at", "actor", "action", "job_ref", "dead_letter_ref", "target_kind", "target", "details"]
    list_filter = ["action", "target_kind", "at"]
    search_fields = ["actor", "target", "details"]
    readonly_fields = [
        "at",
        "actor",
        "user",
        "action",
        "job_ref",
        "dead_letter_ref",
        "target_kind",
        "target",
        "details",
    ]
    fields = readonly_fields

    @admin.display(description="job")
    def job_ref(self, obj):
        return job_link(obj.job_id)

    @admin.display(description="dead letter")
    def dead_letter_ref(self, obj):
        return dead_letter_link(obj.dead_letter_id)


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    """Incidents the workers opened and closed (jobs.alerts); open ones first."""

    list_display = ["kind", "subject", "text", "since", "opened_at", "closed_at"]
    list_filter = ["kind", ("closed_at", admin.EmptyFieldListFilter), "opened_at"]
    search_fields = ["subject", "text"]
    readonly_fields = list_display
    fields = readonly_fields

    def get_ordering(self, request):
        return [F("closed_at").desc(nulls_first=True), "-opened_at"]
