"""Dead letters in the admin: requeue, edit and requeue, discard (with a reason), through jobs.staff."""

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse

from jobs import staff
from jobs.admin.common import (
    BulkByFilterMixin,
    DeadLetterAuditInline,
    JobFieldsMixin,
    ObjectActionsMixin,
    ReadOnlyAdmin,
    _message,
    bulk_action,
    job_link,
)
from jobs.exceptions import InvalidPayload, UnknownJobType
from jobs.models import DeadLetter
from jobs.registry import get_job_type

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
class DeadLetterAdmin(BulkByFilterMixin, ObjectActionsMixin, JobFieldsMixin, ReadOnlyAdmin):
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
    change_list_template = "admin/jobs/change_list_bulk.html"
    bulk_actions = {
        "requeue": ("Requeue all matching the current filter", "requeue"),
        "discard": ("Discard all matching the current filter", "discard"),
    }
    bulk_noun = "dead letter"
    # Bulk requeue and discard take open dead letters: the state filter may say so, or say nothing.
    bulk_params = {**BulkByFilterMixin.bulk_params, "error_class": "error_class", "state": None}
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

    def bulk_filter(self, params) -> staff.BulkFilter:
        if params.get("state", "open") != "open":
            raise ValueError("bulk requeue and discard take open dead letters: filter by state Open or none")
        return super().bulk_filter(params)

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

    # -- actions -----------------------------------------------------------------------------------

    @admin.action(description="Requeue selected", permissions=["requeue"])
    def requeue_selected(self, request, queryset):
        bulk_action(request, staff.requeue, queryset, "Requeued")

    @admin.action(description="Requeue all open dead letters of the selected types", permissions=["requeue"])
    def requeue_all_of_type(self, request, queryset):
        for job_type in sorted(set(queryset.values_list("type", flat=True))):
            _message(request, staff.requeue_type(request.user, job_type), f"{job_type}: requeued")

    @admin.action(description="Discard selected (asks for a reason)", permissions=["discard"])
    def discard_selected(self, request, queryset):
        form = DiscardForm(request.POST if "confirm" in request.POST else None)
        if form.is_valid():
            bulk_action(request, staff.discard, queryset, "Discarded", form.cleaned_data["reason"])
            return None
        return self._discard_page(
            request,
            "Discard dead letters",
            form,
            queryset,
            action="discard_selected",
            action_checkbox_name=helpers.ACTION_CHECKBOX_NAME,
            form_url=reverse("admin:jobs_deadletter_changelist"),
        )

    def _discard_page(self, request, title, form, queryset, **extra):
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "form": form,
            "queryset": queryset,
            **extra,
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
        return self._discard_page(request, f"Discard {dead}", form, [dead], original=dead, form_url="")

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
