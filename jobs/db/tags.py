"""Finding jobs by tag: a JSON array's membership test is written differently by each database."""

from django.db.models import Q
from django.db.models.expressions import RawSQL

from jobs.db.base import is_postgres


def tagged(tag: str) -> Q:
    """A filter for the jobs carrying ``tag`` (exactly, not a prefix). PostgreSQL: jsonb containment
    (``tags @> '["order:42"]'``). SQLite has no containment for JSON: a lookup in each row's array
    through ``json_each``."""
    if is_postgres():
        return Q(tags__contains=[tag])
    return Q(id__in=RawSQL("SELECT j.id FROM jobs_job j, json_each(j.tags) t WHERE t.value = %s", [tag]))
