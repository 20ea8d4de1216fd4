"""The live queue dashboard for staff: one page, and a partial that the page fetches every 5 seconds."""

from functools import wraps

from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache

from jobs import alerts, charts, explain, read_model

REFRESH_SECONDS = 5
# A due job still pending after this long is listed with the reasons it waits (jobs.explain).
WAITING_LISTED_AFTER = 60


def staff_required(view):
    """Anonymous visitors go to the admin login; signed-in users who are not staff get a 403."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        if not (request.user.is_active and request.user.is_staff):
            raise PermissionDenied("staff only")
        return view(request, *args, **kwargs)

    return wrapped


def _context(request) -> dict:
    snap = read_model.snapshot()
    waiting = read_model.long_waiting(snap.at, WAITING_LISTED_AFTER)
    wrong = alerts.conditions(snap.at, snap.queues)
    return {
        "snap": snap,
        "alerts": wrong,
        "stalled": {c.subject for c in wrong if c.kind == "stalled"},
        "over_slo": {c.subject for c in wrong if c.kind == "lag"},
        "waiting": [(job, (snap.at - job.run_at).total_seconds(), explain.explain(job)) for job in waiting],
        "waiting_after": WAITING_LISTED_AFTER,
        "minute_chart": charts.stacked_bars(
            snap.per_minute,
            title="Jobs finished per minute, last hour",
            label_format="%H:%M",
            chart_id="chart-per-minute",
        ),
        "hour_chart": charts.stacked_bars(
            snap.per_hour,
            title="Jobs finished per hour, last day",
            label_format="%H:00",
            chart_id="chart-per-hour",
        ),
        "refresh_seconds": REFRESH_SECONDS,
    }


@never_cache
@staff_required
def dashboard(request):
    context = {**admin.site.each_context(request), "title": "Job queue", **_context(request)}
    return render(request, "jobs/dashboard.html", context)


@never_cache
@staff_required
def panels(request):
    return render(request, "jobs/_panels.html", _context(request))


@never_cache
@staff_required
def stats_json(request):
    return JsonResponse(read_model.snapshot().as_json())
