"""The queue in the Django admin. The engine owns job state, so jobs and dead letters are read-only
here: every change goes through ``jobs.staff`` (retry, cancel, requeue, discard ...), which audits it.

Retrying, cancelling, requeuing, discarding and running schedules need their own permissions, so a
support role with only the view permissions can look without touching.
"""

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Q
from django.db.models.functions import Now
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince

from jobs import conf, db, scheduler, staff
from jobs.exceptions import InvalidPayload, UnknownJobType
from jobs.models import AuditEntry, CronSchedule, DeadLetter, Job, QueueState, WorkerProcess
from jobs.registry import get_job_type, job_types, validate_payload


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


def _message(request, outcome: staff.Outcome, verb: str) -> None:
    level = messages.SUCCESS if outcome.done and not outcome.skipped else messages.WARNING
    if not outcome.done and not outcome.skipped:
        level = messages.INFO
    messages.add_message(request, level, outcome.summary(verb))


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


# -- jobs ----------------------------------------------------------------------------------------


@admin.register(Job)
class JobAdmin(ObjectActionsMixin, admin.ModelAdmin):
    list_display = ["id", "type", "status", "queue", "priority", "attempts_of", "run_at", "age"]
    list_display_links = ["id", "type"]
    list_filter = ["status", QueueFilter, TypeFilter, "created_at"]
    search_fields = ["=type", "=unique_key"]
    search_help_text = "A job id, a job type or a unique key (exact)."
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
    inlines = [JobAuditInline]
    fieldsets = [
        (None, {"fields": ["id", "type", "status", "status_reason", "queue", "priority", "progress_bar"]}),
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
                    "cancel_requested",
                ]
            },
        ),
    ]
    readonly_fields = [f for _, opts in fieldsets for f in opts["fields"]]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # the engine owns a job's fields; staff act through the actions

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # finished jobs are pruned; dead ones stay with their dead letters

    def has_retry_permission(self, request) -> bool:
        return request.user.has_perm("jobs.retry_job")

    def has_cancel_permission(self, request) -> bool:
        return request.user.has_perm("jobs.cancel_job")

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip().lstrip("#")
        if term.isdigit():
            return queryset.filter(Q(pk=int(term)) | Q(unique_key=term)), False
        return super().get_search_results(request, queryset, search_term)

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

    @admin.display(description="attempts")
    def attempts_of(self, obj):
        return f"{obj.attempts}/{obj.max_attempts}"

    @admin.display(description="age", ordering="created_at")
    def age(self, obj):
        return timesince(obj.created_at)

    @admin.display(description="progress")
    def progress_bar(self, obj):
        if obj.progress is None:
            return "-"
        return format_html('<progress max="100" value="{}"></progress> {}%', obj.progress, obj.progress)

    @admin.display(description="errors (newest first)")
    def error_history(self, obj):
        return error_history(obj.errors)

    @admin.display(description="payload")
    def payload_json(self, obj):
        return pretty_json(obj.payload)

    @admin.display(description="result")
    def result_json(self, obj):
        return pretty_json(obj.result) if obj.result is not None else "-"

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
        _message(request, staff.retry(request.user, queryset.values_list("id", flat=True)), "Retried")

    @admin.action(description="Run now (bring run_at forward)", permissions=["retry"])
    def run_jobs_now(self, request, queryset):
        _message(request, staff.run_now(request.user, queryset.values_list("id", flat=True)), "Run now:")

    @admin.action(description="Cancel", permissions=["cancel"])
    def cancel_jobs(self, request, queryset):
        _message(request, staff.cancel(request.user, queryset.values_list("id", flat=True)), "Cancelled")

    @admin.action(description="Change priority (to the number given)", permissions=["retry"])
    def change_priority(self, request, queryset):
        try:
            priority = int(request.POST.get("priority", ""))
        except ValueError:
            messages.error(request, "Give the new priority as a whole number.")
            return None
        outcome = staff.set_priority(request.user, queryset.values_list("id", flat=True), priority)
        _message(request, outcome, f"Priority set to {priority} for")


# -- dead letters --------------------------------------------------------------------------------


class DeadLetterStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("open", "Open"), ("requeued", "Requeued"), ("discarded", "Discarded")]

    def queryset(self, request, queryset):
        if self.value() == "open":
            return queryset.open()
        if self.value() == "requeued":
            return queryset.filter(requeued_at__isnull=False)
        if self.value() == "discarded":
            return queryset.filter(discarded_at__isnull=False)
        return queryset


class DistinctValueFilter(admin.SimpleListFilter):
    field = ""

    def lookups(self, request, model_admin):
        values = DeadLetter.objects.order_by(self.field).values_list(self.field, flat=True).distinct()
        return [(v, v or "(none)") for v in values[:200]]

    def queryset(self, request, queryset):
        return queryset.filter(**{self.field: self.value()}) if self.value() is not None else queryset


class DeadLetterTypeFilter(DistinctValueFilter):
    title = parameter_name = field = "type"


class ErrorClassFilter(DistinctValueFilter):
    title = "error class"
    parameter_name = field = "error_class"


class DiscardForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Why this will not be run again (kept in the audit trail).",
    )


class PayloadForm(forms.Form):
    payload = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 14, "cols": 80, "class": "vLargeTextField"})
    )

    def clean_payload(self):
        try:
            value = json.loads(self.cleaned_data["payload"])
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("The payload must be a JSON object ({...}).")
        return value


@admin.register(DeadLetter)
class DeadLetterAdmin(ObjectActionsMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "type",
        "error_class",
        "short_message",
        "attempts",
        "created_at",
        "state",
        "requeued",
    ]
    list_display_links = ["id", "type"]
    list_filter = [DeadLetterStateFilter, DeadLetterTypeFilter, ErrorClassFilter, "queue", "created_at"]
    search_fields = ["=type", "error_message"]
    search_help_text = "A dead letter or job id, a job type (exact) or words of the error message."
    ordering = ["-created_at", "-id"]
    list_per_page = 50
    actions = ["requeue_selected", "requeue_all_of_type", "discard_selected"]
    object_actions = ("requeue_selected",)
    object_action_labels = {"requeue_selected": "Requeue"}
    change_form_template = "admin/jobs/deadletter/change_form.html"
    inlines = [DeadLetterAuditInline]
    fieldsets = [
        (None, {"fields": ["id", "type", "queue", "state", "original_job", "requeued_job_link"]}),
        ("Why it died", {"fields": ["error_class", "error_message", "attempts_of", "error_history"]}),
        ("Payload", {"fields": ["payload_json", "payload_version", "priority"]}),
        (
            "Closed",
            {"fields": ["created_at", "requeued_at", "discarded_at", "discarded_by", "discard_reason"]},
        ),
    ]
    readonly_fields = [f for _, opts in fieldsets for f in opts["fields"]]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # discard keeps the record and says why

    def has_requeue_permission(self, request) -> bool:
        return request.user.has_perm("jobs.requeue_deadletter")

    def has_discard_permission(self, request) -> bool:
        return request.user.has_perm("jobs.discard_deadletter")

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip().lstrip("#")
        if term.isdigit():
            return queryset.filter(Q(pk=int(term)) | Q(job_id=int(term))), False
        return super().get_search_results(request, queryset, search_term)

    def get_urls(self):
        extra = [
            path(
                "<path:object_id>/edit-requeue/",
                self.admin_site.admin_view(self.edit_requeue_view),
                name="jobs_deadletter_edit_requeue",
            ),
            path(
                "<path:object_id>/discard/",
                self.admin_site.admin_view(self.discard_view),
                name="jobs_deadletter_discard",
            ),
        ]
        return extra + super().get_urls()

    def action_applies(self, name, obj) -> bool:
        return obj.is_open

    def render_change_form(self, request, context, *args, obj=None, **kwargs):
        if obj is not None and obj.is_open:
            context["can_requeue"] = self.has_requeue_permission(request)
            context["can_discard"] = self.has_discard_permission(request)
        return super().render_change_form(request, context, *args, obj=obj, **kwargs)

    @admin.display(description="state")
    def state(self, obj):
        if obj.requeued_at:
            return "requeued"
        if obj.discarded_at:
            return "discarded"
        return "open"

    @admin.display(description="requeued as")
    def requeued(self, obj):
        return job_link(obj.requeued_job_id) if obj.requeued_job_id else "-"

    @admin.display(description="requeued as")
    def requeued_job_link(self, obj):
        if not obj.requeued_job_id:
            return "-"
        job = obj.requeued_job
        return job_link(obj.requeued_job_id, f"#{job.pk} ({job.status})" if job else None)

    @admin.display(description="job")
    def original_job(self, obj):
        return job_link(obj.job_id)

    @admin.display(description="message")
    def short_message(self, obj):
        text = obj.error_message
        return text if len(text) <= 120 else text[:117] + "..."

    @admin.display(description="attempts")
    def attempts_of(self, obj):
        return f"{obj.attempts}/{obj.max_attempts}"

    @admin.display(description="errors (newest first)")
    def error_history(self, obj):
        return error_history(obj.errors)

    @admin.display(description="payload")
    def payload_json(self, obj):
        return pretty_json(obj.payload)

    # -- actions -----------------------------------------------------------------------------------

    @admin.action(description="Requeue selected", permissions=["requeue"])
    def requeue_selected(self, request, queryset):
        _message(request, staff.requeue(request.user, queryset.values_list("id", flat=True)), "Requeued")

    @admin.action(description="Requeue all open dead letters of the selected types", permissions=["requeue"])
    def requeue_all_of_type(self, request, queryset):
        for job_type in sorted(set(queryset.values_list("type", flat=True))):
            _message(request, staff.requeue_type(request.user, job_type), f"{job_type}: requeued")

    @admin.action(description="Discard selected (asks for a reason)", permissions=["discard"])
    def discard_selected(self, request, queryset):
        form = DiscardForm(request.POST if "confirm" in request.POST else None)
        if form.is_valid():
            outcome = staff.discard(
                request.user, queryset.values_list("id", flat=True), form.cleaned_data["reason"]
            )
            _message(request, outcome, "Discarded")
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Discard dead letters",
            "opts": self.opts,
            "form": form,
            "queryset": queryset,
            "action": "discard_selected",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "form_url": reverse("admin:jobs_deadletter_changelist"),
        }
        return TemplateResponse(request, "admin/jobs/deadletter/discard.html", context)

    # -- per-object views --------------------------------------------------------------------------

    def _open_dead_letter(self, request, object_id, permission):
        if not request.user.has_perm(permission):
            raise PermissionDenied
        return get_object_or_404(DeadLetter, pk=object_id)

    def discard_view(self, request, object_id):
        dead = self._open_dead_letter(request, object_id, "jobs.discard_deadletter")
        change_url = reverse("admin:jobs_deadletter_change", args=[dead.pk])
        form = DiscardForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            _message(
                request, staff.discard(request.user, [dead.pk], form.cleaned_data["reason"]), "Discarded"
            )
            return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Discard {dead}",
            "opts": self.opts,
            "form": form,
            "queryset": [dead],
            "original": dead,
            "form_url": "",
        }
        return TemplateResponse(request, "admin/jobs/deadletter/discard.html", context)

    def edit_requeue_view(self, request, object_id):
        dead = self._open_dead_letter(request, object_id, "jobs.requeue_deadletter")
        change_url = reverse("admin:jobs_deadletter_change", args=[dead.pk])
        if request.method == "POST":
            form = PayloadForm(request.POST)
            if form.is_valid():
                try:
                    new = staff.edit_and_requeue(request.user, dead.pk, form.cleaned_data["payload"])
                except (InvalidPayload, UnknownJobType) as exc:
                    form.add_error("payload", str(exc))
                else:
                    if new is None:
                        messages.warning(request, f"Not requeued: {staff.closed_reason(dead)}.")
                    else:
                        messages.success(request, f"Payload corrected and requeued as job #{new.pk}.")
                    return HttpResponseRedirect(change_url)
        else:
            form = PayloadForm(initial={"payload": json.dumps(dead.payload, indent=2, sort_keys=True)})
        schema = None
        try:
            schema = json.dumps(get_job_type(dead.type).payload.model_json_schema(), indent=2)
        except UnknownJobType:
            form.add_error(
                None, f"The job type {dead.type!r} is no longer registered; it cannot be requeued."
            )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Edit payload and requeue {dead}",
            "opts": self.opts,
            "original": dead,
            "form": form,
            "schema": schema,
            "change_url": change_url,
        }
        return TemplateResponse(request, "admin/jobs/deadletter/edit_requeue.html", context)


# -- schedules -----------------------------------------------------------------------------------


class CronScheduleForm(forms.ModelForm):
    job_type = forms.ChoiceField()

    class Meta:
        model = CronSchedule
        fields = ["name", "expression", "time_zone", "job_type", "payload", "priority", "enabled"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        names = sorted(job_types())
        current = self.instance.job_type if self.instance.pk else None
        if current and current not in names:
            names.append(current)
        self.fields["job_type"].choices = [(n, n) for n in names]

    def clean_expression(self):
        value = " ".join(self.cleaned_data["expression"].split())
        try:
            scheduler.validate_expression(value)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        return value

    def clean_time_zone(self):
        value = self.cleaned_data["time_zone"].strip()
        try:
            scheduler.validate_time_zone(value)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        return value

    def clean(self):
        data = super().clean()
        if "job_type" in data and "payload" in data and not self.has_error("payload"):
            try:
                data["payload"] = validate_payload(get_job_type(data["job_type"]), data["payload"] or {})
            except UnknownJobType as exc:
                self.add_error("job_type", str(exc))
            except InvalidPayload as exc:
                self.add_error("payload", str(exc))
        return data


@admin.register(CronSchedule)
class CronScheduleAdmin(ObjectActionsMixin, admin.ModelAdmin):
    form = CronScheduleForm
    list_display = [
        "name",
        "expression",
        "time_zone",
        "job_type",
        "enabled",
        "next_run_at",
        "last_run_at",
        "outcome",
    ]
    list_filter = ["enabled", "declared_in_code"]
    search_fields = ["name", "job_type"]
    actions = ["run_schedules_now", "enable_schedules", "disable_schedules"]
    object_actions = ("run_schedules_now",)
    object_action_labels = {"run_schedules_now": "Run now"}
    change_form_template = "admin/jobs/change_form_actions.html"
    readonly_fields = [
        "next_five_runs",
        "next_run_at",
        "last_run_at",
        "outcome",
        "declared_in_code",
        "audit_trail",
    ]

    def get_fields(self, request, obj=None):
        fields = ["name", "expression", "time_zone", "job_type", "payload", "priority", "enabled"]
        return fields + (self.readonly_fields if obj else [])

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.declared_in_code:
            return ["name", *self.readonly_fields]  # declared in code under this name
        return self.readonly_fields

    @admin.display(description="audit trail")
    def audit_trail(self, obj):
        entries = AuditEntry.objects.filter(target=obj.name).exclude(action__in=["pause", "resume"])[:20]
        if not entries:
            return "-"
        return format_html_join(
            "",
            "<div>{} {} {} {}</div>",
            ((f"{e.at:%Y-%m-%d %H:%M}", e.actor, e.action, e.details) for e in entries),
        )

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.declared_in_code:
            return False  # it would come back at the next worker start; disable it instead
        return super().has_delete_permission(request, obj)

    def has_run_permission(self, request) -> bool:
        return request.user.has_perm("jobs.run_cronschedule")

    def save_model(self, request, obj, form, change):
        staff.save_schedule(request.user, obj, form.changed_data if change else ())

    @admin.display(description="next five runs")
    def next_five_runs(self, obj):
        try:
            runs = scheduler.next_runs(obj, 5)
        except ValueError as exc:
            return str(exc)
        return format_html_join("", "<div>{}</div>", ((f"{r:%a %Y-%m-%d %H:%M %Z}",) for r in runs))

    @admin.display(description="last outcome")
    def outcome(self, obj):
        if not obj.last_job_id:
            return "-"
        job = obj.last_job
        return job_link(obj.last_job_id, f"#{obj.last_job_id} {job.status if job else 'pruned'}")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("last_job")

    @admin.action(description="Run now", permissions=["run"])
    def run_schedules_now(self, request, queryset):
        for schedule in queryset:
            job = staff.run_schedule(request.user, schedule)
            messages.success(request, format_html("{}: enqueued job {}", schedule.name, job_link(job.pk)))

    @admin.action(description="Enable", permissions=["change"])
    def enable_schedules(self, request, queryset):
        _message(request, staff.set_schedule_enabled(request.user, queryset, True), "Enabled")

    @admin.action(description="Disable", permissions=["change"])
    def disable_schedules(self, request, queryset):
        _message(request, staff.set_schedule_enabled(request.user, queryset, False), "Disabled")


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
        names = list(queryset.values_list("name", flat=True))
        for name in names:
            staff.pause_queue(request.user, name)
        messages.success(request, f"Paused: {', '.join(names)}")

    @admin.action(description="Resume", permissions=["change"])
    def resume_queues(self, request, queryset):
        names = list(queryset.values_list("name", flat=True))
        for name in names:
            staff.resume_queue(request.user, name)
        messages.success(request, f"Resumed: {', '.join(names)}")


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
    readonly_fields = [
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
        "heartbeat_at",
    ]
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
class AuditEntryAdmin(admin.ModelAdmin):
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

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="job")
    def job_ref(self, obj):
        return job_link(obj.job_id)

    @admin.display(description="dead letter")
    def dead_letter_ref(self, obj):
        return dead_letter_link(obj.dead_letter_id)
