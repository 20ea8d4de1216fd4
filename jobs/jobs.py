"""The queue's own job types and schedules (discovered like every app's jobs.py)."""

from datetime import timedelta

from pydantic import BaseModel, Field

from jobs import conf, pruner, scheduler
from jobs.registry import job


class PruneOptions(BaseModel):
    older_than_days: int | None = Field(default=None, ge=0)


@job("cleanup_completed_jobs", payload=PruneOptions, queue="maintenance", timeout=3600)
def cleanup_completed_jobs(payload: PruneOptions, ctx) -> dict:
    days = (
        payload.older_than_days if payload.older_than_days is not None else conf.get("JOBS_PRUNE_AFTER_DAYS")
    )
    return {"deleted": pruner.prune(timedelta(days=days))}


scheduler.declare("cleanup_completed_jobs", "0 3 * * *", "cleanup_completed_jobs")
