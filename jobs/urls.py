"""Staff pages of the queue; the project mounts them, e.g. at ``staff/jobs/``."""

from django.urls import path

from jobs import dashboard, metrics

app_name = "jobs"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("panels/", dashboard.panels, name="dashboard-panels"),
    path("stats.json", dashboard.stats_json, name="stats-json"),
    path("metrics", metrics.metrics, name="metrics"),
]
