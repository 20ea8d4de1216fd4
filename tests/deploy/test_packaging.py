"""The jobs app on its own: built into a wheel (a non-editable install, the source tree out of the path)
and mounted in a bare Django project, it serves its admin pages and its dashboard with the templates it
carries."""

import shutil
import subprocess
import sys
import zipfile

from tests.utils import BASE_DIR

SETTINGS = """
SECRET_KEY = "packaging-test"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages", "django.contrib.staticfiles", "jobs",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "bare_urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [], "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request", "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
DATABASES = {"default": {
    "ENGINE": "django.db.backends.sqlite3", "NAME": "bare.sqlite3",
    "OPTIONS": {"transaction_mode": "IMMEDIATE"},
}}
STATIC_URL = "/static/"
USE_TZ = True
"""

URLS = """
from django.contrib import admin
from django.urls import include, path

urlpatterns = [path("admin/", admin.site.urls), path("staff/jobs/", include("jobs.urls"))]
"""

CHECK = """
import django, jobs, sys
django.setup()
assert jobs.__file__.startswith(sys.argv[1]), jobs.__file__  # the installed copy, not the source tree
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from jobs.api import enqueue, job
from jobs.models import DeadLetter

from pydantic import BaseModel

class Empty(BaseModel):
    pass

@job("bare.noop", payload=Empty)
def noop(payload, ctx):
    return None

call_command("migrate", verbosity=0)  # after the job types are known, as in a project (post_migrate)
enqueue("bare.noop", {})
client = Client()
client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
for url, text in [
    ("/admin/jobs/job/", "bare.noop"),
    ("/admin/jobs/job/1/change/", "Retry now"),
    ("/admin/jobs/queuestate/", "default"),
    ("/staff/jobs/", "jobs-panels"),
    ("/staff/jobs/panels/", "default"),
]:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    assert text in response.content.decode(), (url, text)
print("served")
"""


def test_a_wheel_of_the_project_serves_the_jobs_admin_and_dashboard_from_its_own_templates(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(BASE_DIR / "pyproject.toml", source)
    for package in ("jobs", "orders", "shop"):
        shutil.copytree(BASE_DIR / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {
            "jobs/templates/jobs/dashboard.html",
            "jobs/templates/admin/jobs/change_form_actions.html",
        } <= names
        site = tmp_path / "site"
        archive.extractall(site)  # a pure-Python wheel installed, without its dependencies (those are here)

    project = tmp_path / "bare"
    project.mkdir()
    (project / "bare_settings.py").write_text(SETTINGS)
    (project / "bare_urls.py").write_text(URLS)
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "bare_settings",
        # The installed copy and the bare project; Django and the rest from this interpreter's site.
        "PYTHONPATH": f"{site}:{project}",
    }
    served = subprocess.run(
        [sys.executable, "-c", CHECK, str(site)],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert served.returncode == 0 and "served" in served.stdout, served.stderr[-3000:]
