"""Circuit breakers in the admin: read-only rows (the engine owns them) and one action, close."""

from django.contrib import admin, messages

from jobs import staff
from jobs.models import BreakerState


@admin.register(BreakerState)
class BreakerStateAdmin(admin.ModelAdmin):
    """Circuit breakers: a job type (or one concurrency key of it) whose jobs
    wait for a probe after repeated failures. Closing one lets workers claim its jobs at once."""

    list_display = [
        "type",
        "key",
        "state",
        "opened_at",
        "probe_at",
        "probe_job_id",
        "failure_count",
        "changed_by",
    ]
    list_filter = ["state"]
    search_fields = ["type", "key"]
    actions = ["close_breakers"]
    ordering = ["-opened_at", "type", "key"]
    readonly_fields = [f.name for f in BreakerState._meta.fields]

    @admin.display(description="failures in window")
    def failure_count(self, obj) -> int:
        return len(obj.failures)

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Close (workers claim its jobs again at once)", permissions=["change"])
    def close_breakers(self, request, queryset):
        closed, already = [], []
        for row in queryset:
            (closed if staff.close_breaker(request.user, row.type, row.key) else already).append(row.label)
        if closed:
            messages.success(request, f"Closed: {', '.join(closed)}")
        if already:
            messages.warning(request, f"Not open (left as they were): {', '.join(already)}")
