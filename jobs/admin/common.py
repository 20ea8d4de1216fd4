"""Shared pieces of the queue's admin pages: links, error history, the estimated-count paginator,
read-only audit inlines, list filters and the object actions on a change page."""

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince

from jobs import db, staff
from jobs.models import AuditEntry, Job
from jobs.registry import job_types


def pretty_json(value) -> str:
    return format_html('<pre class="jobs-json">{}</pre>', json.dumps(value, indent=2, sort_keys=True))


def job_link(job_id, label=None) -> str:
    if job_id is None:
        return "-"
    url = reverse("admin:jobs_job_change", args=[job_id])
    return format_html('<a href="{}">{}</a>', url, label or f"#{job_id}")


def dead_letter_link(dead_id, label=None) -> str:
    if dead_id is None:
        return "-"
    url = reverse("admin:jobs_deadletter_change", args=[dead_id])
    return format_html('<a href="{}">{}</a>', url, label or f"dead letter #{dead_id}")


def error_history(errors: list) -> str:
    if not errors:
        return "-"
    items = format_html_join(
        "",
        '<div class="jobs-error"><p><strong>Attempt {}</strong> at {} on {}: <code>{}</code></p>'
        "<p>{}</p><pre>{}</pre></div>",
        (
            (
                e.get("attempt", "?"),
                e.get("at", "?"),
                e.get("worker") or "-",
                e.get("exception", ""),
                e.get("message", ""),
                e.get("traceback") or "(no traceback)",
            )
            for e in reversed(errors)
        ),
    )
    return format_html('<div class="jobs-errors">{}</div>', items)


def age(value) -> str:
    return f"{timesince(value)} ago" if value else "-"


def _message(request, outcome: staff.BulkResult, verb: str) -> None:
    level = messages.SUCCESS if outcome.done and not outcome.skipped else messages.WARNING
    if not outcome.done and not outcome.skipped:
        level = messages.INFO
    messages.add_message(request, level, outcome.summary(verb))


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows the engine and the workers own: staff read them and act through actions, never edit them
    (finished jobs are pruned, dead ones stay with their dead letters, a discard keeps its record)."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class JobFieldsMixin:
    """How a job's attempts, errors and payload read, on a job and on its dead letter alike."""

    @admin.display(description="attempts")
    def attempts_of(self, obj):
        return f"{obj.attempts}/{obj.max_attempts}"

    @admin.display(description="errors (newest first)")
    def error_history(self, obj):
        return error_history(obj.errors)

    @admin.display(description="payload")
    def payload_json(self, obj):
        return pretty_json(obj.payload)


def bulk_action(request, operation, queryset, verb: str, *args) -> None:
    """Run a staff operation on the selected rows' ids and tell the user what it did."""
    _message(request, operation(request.user, queryset.values_list("id", flat=True), *args), verb)


class EstimatedCountPaginator(Paginator):
    """An unfiltered list of a big table on PostgreSQL shows the planner's row estimate rather than
    counting a million rows on every page view; filtered lists are counted exactly."""

    estimate_above = 100_000

    @cached_property
    def count(self) -> int:
        query = getattr(self.object_list, "query", None)
        if query is not None and not query.where:
            estimate = db.estimated_rows(self.object_list.model._meta.db_table)
            if estimate is not None and estimate > self.estimate_above:
                return estimate
        return super().count


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_staff


class AuditInline(ReadOnlyInline):
    model = AuditEntry
    fields = ["at", "actor", "action", "target_kind", "target", "details"]
    readonly_fields = fields
    verbose_name = "audit entry"
    verbose_name_plural = "audit trail"


class JobAuditInline(AuditInline):
    fk_name = "job"


class DeadLetterAuditInline(AuditInline):
    fk_name = "dead_letter"


class JobActionForm(helpers.ActionForm):
    # Text, not a number field: a bad value reaches the action, which says what is wrong.
    priority = forms.CharField(required=False, max_length=8, help_text="For “change priority”.")


class TypeFilter(admin.SimpleListFilter):
    """Job types from the registry: no DISTINCT over a table of a million jobs."""

    title = "type"
    parameter_name = "type"

    def lookups(self, request, model_admin):
        return [(name, name) for name in sorted(job_types())]

    def queryset(self, request, queryset):
        return queryset.filter(type=self.value()) if self.value() else queryset


class TagFilter(admin.SimpleListFilter):
    """Jobs carrying a tag (``?tag=order:ORD-2026-000042``, exact). The choices offered are the tags of
    the latest tagged jobs; any other tag works through the URL or the search box."""

    title = "tag"
    parameter_name = "tag"

    def lookups(self, request, model_admin):
        seen: dict[str, None] = {}
        # The latest 200 rows through the primary key, whatever they carry: a bounded read.
        for tags in Job.objects.order_by("-id").values_list("tags", flat=True)[:200]:
            seen.update(dict.fromkeys(tags or ()))
        return [(tag, tag) for tag in list(seen)[:20]]

    def queryset(self, request, queryset):
        return queryset.filter(db.tagged(self.value())) if self.value() else queryset


class QueueFilter(admin.SimpleListFilter):
    title = "queue"
    parameter_name = "queue"

    def lookups(self, request, model_admin):
        return [(name, name) for name in staff.known_queues()]

    def queryset(self, request, queryset):
        return queryset.filter(queue=self.value()) if self.value() else queryset


class ObjectActionsMixin:
    """Buttons on a change page that run one of the admin's actions on that one object."""

    object_actions: tuple[str, ...] = ()
    object_action_labels: dict[str, str] = {}

    def get_urls(self):
        extra = [
            path(
                "<path:object_id>/do/<str:action>/",
                self.admin_site.admin_view(self.object_action_view),
                name=f"{self.opts.app_label}_{self.opts.model_name}_do",
            )
        ]
        return extra + super().get_urls()

    def object_action_view(self, request, object_id, action):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        actions = self.get_actions(request)
        if action not in self.object_actions or action not in actions:
            raise PermissionDenied
        queryset = self.get_queryset(request).filter(pk=object_id)
        get_object_or_404(queryset)
        response = actions[action][0](self, request, queryset)
        if response is not None:
            return response
        return HttpResponseRedirect(
            reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[object_id])
        )

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            permitted = self.get_actions(request)
            url_name = f"admin:{self.opts.app_label}_{self.opts.model_name}_do"
            context["object_actions"] = [
                (
                    name,
                    self.object_action_labels.get(name, permitted[name][2]),
                    reverse(url_name, args=[obj.pk, name]),
                )
                for name in self.object_actions
                if name in permitted and self.action_applies(name, obj)
            ]
        return super().render_change_form(request, context, add, change, form_url, obj)

    def action_applies(self, name: str, obj) -> bool:
        return True
