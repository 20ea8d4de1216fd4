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
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince

from jobs import conf, db, staff
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


class BulkByFilterMixin:
    """ "… all matching the current filter": a link on the changelist per permitted bulk action, to a
    page that shows how many rows the changelist's filters take now and, once confirmed, runs
    ``jobs.staff.bulk`` with them (batched, audited with the filter). Only filters the staff operation
    can carry over are accepted; a search or an unknown parameter is refused rather than ignored."""

    # action -> (link label, the single-row permission it needs: has_<name>_permission)
    bulk_actions: dict[str, tuple[str, str]] = {}
    bulk_noun = "row"
    # changelist parameter -> BulkFilter field; anything else but ordering and paging is refused
    bulk_params = {
        "type": "type",
        "queue": "queue",
        "queue__exact": "queue",
        "created_at__gte": "since",
        "created_at__lt": "until",
    }
    ignored_params = ("o", "p", "_changelist_filters")

    def get_urls(self):
        extra = [
            path(
                # A suffix of its own: a dead letter's "<path:object_id>/discard/" would take "bulk/discard/".
                "bulk/<str:action>/confirm/",
                self.admin_site.admin_view(self.bulk_view),
                name=f"{self.opts.app_label}_{self.opts.model_name}_bulk",
            )
        ]
        return extra + super().get_urls()

    def _bulk_permitted(self, request, action: str) -> bool:
        return action in self.bulk_actions and getattr(
            self, f"has_{self.bulk_actions[action][1]}_permission"
        )(request)

    def changelist_view(self, request, extra_context=None):
        query = request.GET.urlencode()
        links = [
            (label, reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_bulk", args=[action]))
            for action, (label, _) in self.bulk_actions.items()
            if self._bulk_permitted(request, action)
        ]
        extra_context = {
            **(extra_context or {}),
            "bulk_links": [(label, f"{url}?{query}" if query else url) for label, url in links],
        }
        return super().changelist_view(request, extra_context)

    def bulk_filter(self, params) -> staff.BulkFilter:
        """The changelist's filters as a BulkFilter; ValueError for one it cannot carry over."""
        fields: dict = {}
        for name, value in params.items():
            if name in self.ignored_params:
                continue
            if name == "q":
                if value:
                    raise ValueError("a search cannot be carried over to a bulk action: use the filters")
                continue
            if name not in self.bulk_params:
                raise ValueError(f"the filter {name!r} cannot be carried over to a bulk action")
            field = self.bulk_params[name]
            if field is None:
                continue
            fields[field] = staff.parse_moment(value) if field in ("since", "until") else value
        return staff.BulkFilter(everything=True, **fields)

    def bulk_view(self, request, action):
        if not self._bulk_permitted(request, action):
            raise PermissionDenied
        changelist = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist")
        query = request.GET.urlencode()
        back = f"{changelist}?{query}" if query else changelist
        try:
            flt = self.bulk_filter(request.GET)
            count = staff.bulk_count(action, flt)
        except ValueError as exc:
            messages.error(request, f"Not run: {exc}.")
            return HttpResponseRedirect(back)
        needs_reason = action == "discard"
        reason = request.POST.get("reason", "").strip()
        if request.method == "POST" and request.POST.get("confirm") and (reason or not needs_reason):
            counts = staff.bulk(request.user, action, flt, reason=reason)
            messages.add_message(
                request,
                messages.WARNING if counts.skipped else messages.SUCCESS,
                f"{self.bulk_actions[action][0]}: done {counts.done}, skipped {counts.skipped} "
                f"in {counts.batches} batch(es).",
            )
            return HttpResponseRedirect(back)
        context = {
            **self.admin_site.each_context(request),
            "title": self.bulk_actions[action][0],
            "opts": self.opts,
            "action": action,
            "count": count,
            "noun": self.bulk_noun,
            "filter_json": json.dumps(flt.as_dict(), sort_keys=True),
            "batch_size": conf.get("JOBS_BULK_BATCH_SIZE"),
            "needs_reason": needs_reason,
            "reason_missing": request.method == "POST" and needs_reason and not reason,
            "back": back,
        }
        return TemplateResponse(request, "admin/jobs/bulk_confirm.html", context)
