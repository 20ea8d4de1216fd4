"""Jobs in the admin: read-only, with retry, run now, cancel and priority through jobs.staff."""

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince

from jobs import db, explain, staff
from jobs.admin.common import (
    BulkByFilterMixin,
    EstimatedCountPaginator,
    JobActionForm,
    JobAuditInline,
    JobFieldsMixin,
    ObjectActionsMixin,
    QueueFilter,
    ReadOnlyAdmin,
    TagFilter,
    TypeFilter,
    bulk_action,
    dead_letter_link,
    job_link,
    pretty_json,
)
from jobs.models import DeadLetter, Job

# -- jobs ----------------------------------------------------------------------------------------


@admin.register(Job)
class JobAdmin(BulkByFilterMixin, ObjectActionsMixin, JobFieldsMixin, ReadOnlyAdmin):
    list_display = ["id", "type", "status", "queue", "priority", "attempts_of", "run_at", "age"]
    list_display_links = ["id", "type"]
    list_filter = ["status", QueueFilter, TypeFilter, TagFilter, "created_at"]
    search_fields = ["=type", "=unique_key"]
    search_help_text = "A job id, a job type, a unique key or a tag such as order:ORD-2026-000042 (exact)."
    ordering = ["-id"]
    list_per_page = 50
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a count per filter choice over a million rows
    paginator = EstimatedCountPaginator
    action_form = JobActionForm
    actions = ["retry_jobs", "run_jobs_now", "cancel_jobs", "change_priority"]
    object_actions = ("retry_jobs", "run_jobs_now", "cancel_jobs", "change_priority")
    object_action_labels = {
        "retry_jobs": "Retry now",
        "run_jobs_now": "Run now",
        "cancel_jobs": "Cancel",
        "change_priority": "Set priority",
    }
    change_form_template = "admin/jobs/change_form_actions.html"
    change_list_template = "admin/jobs/change_list_bulk.html"
    bulk_actions = {
        "retry": ("Retry all matching the current filter", "retry"),
        "cancel": ("Cancel all matching the current filter", "cancel"),
    }
    bulk_noun = "job"
    bulk_params = {
        **BulkByFilterMixin.bulk_params,
        "status__exact": "status",
        "status": "status",
        "tag": "tag",
    }
    inlines = [JobAuditInline]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    "type",
                    "status",
                    "status_reason",
                    "why_waiting",
                    "queue",
                    "priority",
                    "progress_bar",
                ]
            },
        ),
        ("Attempts", {"fields": ["attempts", "max_attempts", "error_history"]}),
        ("Payload and result", {"fields": ["payload_json", "payload_version", "result_json"]}),
        (
            "Timing",
            {"fields": ["created_at", "run_at", "started_at", "finished_at", "heartbeat_at", "worker"]},
        ),
        (
            "Relations",
            {
                "fields": [
                    "parent_links",
                    "child_links",
                    "waiting_on",
                    "dead_letter_link",
                    "requeued_from_link",
                    "unique_key",
                    "concurrency_key",
                    "fair_key",
                    "cancel_requested",
                ]
            },
        ),
        (
            "Tags, metadata, expiry",
            {
                "fields": ["tag_links", "meta_json", "expires_at", "snoozes"],
            },
        ),
    ]
    readonly_fields = [f for _, opts in fieldsets for f in opts["fields"]]

    def has_retry_permission(self, request) -> bool:
        return request.user.has_perm("jobs.retry_job")

    def has_cancel_permission(self, request) -> bool:
        return request.user.has_perm("jobs.cancel_job")

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip().lstrip("#")
        if term.isdigit():
            return queryset.filter(Q(pk=int(term)) | Q(unique_key=term)), False
        found, duplicates = super().get_search_results(request, queryset, search_term)
        if term:
            found = found | queryset.filter(db.tagged(term))
        return found, duplicates

    def action_applies(self, name, obj) -> bool:
        # The staff operations' own rules; the page leaves out what would change nothing (a job already
        # due, a cancellation already asked for).
        if name == "retry_jobs":
            return obj.can_retry()
        if name == "run_jobs_now":
            return obj.can_run_now() and obj.run_at > timezone.now()
        if name == "cancel_jobs":
            return obj.can_cancel() and not obj.cancel_requested
        if name == "change_priority":
            return obj.can_reprioritise()
        return True

    @admin.display(description="age", ordering="created_at")
    def age(self, obj):
        return timesince(obj.created_at)

    @admin.display(description="why waiting")
    def why_waiting(self, obj):
        """What holds the job now (jobs.explain), in the order it meets each hold."""
        return format_html(
            '<ul class="jobs-why">{}</ul>',
            format_html_join(
                "",
                '<li data-code="{}"><code>{}</code> {}</li>',
                ((r.code, r.code, r.text) for r in explain.explain(obj)),
            ),
        )

    @admin.display(description="progress")
    def progress_bar(self, obj):
        if obj.progress is None:
            return "-"
        return format_html('<progress max="100" value="{}"></progress> {}%', obj.progress, obj.progress)

    @admin.display(description="result")
    def result_json(self, obj):
        return pretty_json(obj.result) if obj.result is not None else "-"

    @admin.display(description="meta")
    def meta_json(self, obj):
        return pretty_json(obj.meta) if obj.meta else "-"

    @admin.display(description="tags")
    def tag_links(self, obj):
        """Each tag links to the job list filtered by it: every job of the same order, say."""
        if not obj.tags:
            return "-"
        url = reverse("admin:jobs_job_changelist")
        links = ((url, urlencode({"tag": tag}), tag) for tag in obj.tags)
        return format_html_join(", ", '<a href="{}?{}">{}</a>', links)

    @admin.display(description="worker")
    def worker(self, obj):
        if obj.locked_by:
            return obj.locked_by
        last = obj.last_error
        return f"{last.get('worker')} (last failed attempt)" if last and last.get("worker") else "-"

    @admin.display(description="parents")
    def parent_links(self, obj):
        return self._links(obj.parents.order_by("id"))

    @admin.display(description="children")
    def child_links(self, obj):
        return self._links(obj.children.order_by("id"))

    def _links(self, jobs):
        jobs = list(jobs[:100])
        if not jobs:
            return "-"
        return format_html_join(
            ", ", "{}", ((job_link(j.pk, f"#{j.pk} {j.type} ({j.status})"),) for j in jobs)
        )

    @admin.display(description="dead letter")
    def dead_letter_link(self, obj):
        dead = DeadLetter.objects.filter(job=obj).first()
        if dead is None:
            return "-"
        if dead.requeued_job_id:
            return format_html(
                "{} (requeued as {})", dead_letter_link(dead.pk), job_link(dead.requeued_job_id)
            )
        if dead.discarded_at:
            return format_html("{} (discarded: {})", dead_letter_link(dead.pk), dead.discard_reason)
        return format_html("{} (open)", dead_letter_link(dead.pk))

    @admin.display(description="requeued from")
    def requeued_from_link(self, obj):
        return dead_letter_link(obj.requeued_from_id)

    # -- actions -----------------------------------------------------------------------------------

    @admin.action(description="Retry now (pending: run now; dead: requeue)", permissions=["retry"])
    def retry_jobs(self, request, queryset):
        bulk_action(request, staff.retry, queryset, "Retried")

    @admin.action(description="Run now (bring run_at forward)", permissions=["retry"])
    def run_jobs_now(self, request, queryset):
        bulk_action(request, staff.run_now, queryset, "Run now:")

    @admin.action(description="Cancel", permissions=["cancel"])
    def cancel_jobs(self, request, queryset):
        bulk_action(request, staff.cancel, queryset, "Cancelled")

    @admin.action(description="Change priority (to the number given)", permissions=["retry"])
    def change_priority(self, request, queryset):
        try:
            priority = int(request.POST.get("priority", ""))
        except ValueError:
            messages.error(request, "Give the new priority as a whole number.")
            return None
        bulk_action(request, staff.set_priority, queryset, f"Priority set to {priority} for", priority)
