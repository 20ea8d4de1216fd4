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


TAG_INDEX = "jobs_job_tags_idx"


def create_tag_index(schema_editor) -> None:
    """PostgreSQL: a GIN index answering ``tags @> '[...]'``, so staff's filter by tag reads the jobs of
    one order among a million instead of scanning them all (``jsonb_path_ops``: containment only, a
    third the size of the default operator class). SQLite has no such index: it scans, as it must."""
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {TAG_INDEX} ON jobs_job USING gin (tags jsonb_path_ops)"
        )


def drop_tag_index(schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {TAG_INDEX}")
