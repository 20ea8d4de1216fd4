"""Cron schedules in the admin: edit, enable, disable, run now, through jobs.staff."""

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from jobs import scheduler, staff
from jobs.admin.common import (
    ObjectActionsMixin,
    _message,
    job_link,
)
from jobs.exceptions import InvalidPayload, UnknownJobType
from jobs.models import AuditEntry, CronSchedule
from jobs.registry import get_job_type, job_types, validate_payload

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
