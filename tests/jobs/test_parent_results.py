"""Results flow to children (``ctx.parent_results``) and ``depends_on(..., when="finished")``: a child
that runs once its parents finished, whatever their outcome."""

import pytest

from jobs.api import cancel, enqueue, prepare
from jobs.models import Job, JobDependency, JobStatus
from jobs.testing import immediate, run_jobs

pytestmark = pytest.mark.django_db


def fresh(job: Job) -> Job:
    return Job.objects.get(id=job.id)


def test_a_child_reads_its_parents_results_by_parent_id_in_run_jobs_mode():
    a = enqueue("test.record", {"key": "a"})
    b = enqueue("test.record", {"key": "b"})
    child = enqueue("test.parents", depends_on=[b, a])
    run_jobs()
    a, b, child = fresh(a), fresh(b), fresh(child)
    assert child.status == JobStatus.SUCCEEDED
    assert child.result == {"parents": [[a.id, a.result], [b.id, b.result]]}
    assert a.result["run"] != b.result["run"]


def test_a_child_reads_its_parents_results_in_immediate_mode():
    with immediate():
        parent = enqueue("test.record", {"key": "p"}, then=[prepare("test.parents")])
    child = Job.objects.get(type="test.parents")
    assert child.status == JobStatus.SUCCEEDED
    assert child.result == {"parents": [[parent.id, fresh(parent).result]]}


def test_a_job_without_parents_reads_no_parent_results():
    job = enqueue("test.parents")
    run_jobs()
    assert fresh(job).result == {"parents": []}


def test_finished_child_runs_after_a_dead_and_a_succeeded_parent_while_the_default_child_is_cancelled():
    good = enqueue("test.record", {"key": "good"})
    bad = enqueue("test.permanent", {"key": "bad"})
    on_complete = enqueue("test.parents", depends_on=[good, bad], when="finished")
    default = enqueue("test.parents", depends_on=[good, bad])
    assert fresh(on_complete).status == JobStatus.BLOCKED and fresh(on_complete).waiting_on == 2
    assert set(JobDependency.objects.filter(child=on_complete).values_list("when", flat=True)) == {"finished"}
    assert set(JobDependency.objects.filter(child=default).values_list("when", flat=True)) == {"succeeded"}
    run_jobs()
    assert fresh(bad).status == JobStatus.DEAD and fresh(good).status == JobStatus.SUCCEEDED
    assert fresh(on_complete).status == JobStatus.SUCCEEDED
    assert fresh(on_complete).result == {"parents": [[good.id, fresh(good).result], [bad.id, None]]}
    assert fresh(default).status == JobStatus.CANCELLED
    assert fresh(default).status_reason == f"parent job #{bad.id} is dead"


def test_finished_child_is_released_when_a_cancelled_parent_cancels_the_job_it_waits_for():
    root = enqueue("test.record", {"key": "root"}, delay=3600)
    middle = enqueue("test.record", {"key": "middle"}, depends_on=[root])
    after = enqueue("test.parents", depends_on=[middle], when="finished")
    assert cancel(root.id) == JobStatus.CANCELLED
    assert fresh(middle).status == JobStatus.CANCELLED
    assert fresh(after).status == JobStatus.PENDING and fresh(after).waiting_on == 0
    run_jobs()
    assert fresh(after).result == {"parents": [[middle.id, None]]}


def test_finished_child_of_parents_already_finished_is_pending_at_once():
    dead = enqueue("test.permanent", {"key": "dead"})
    run_jobs()
    after = enqueue("test.parents", depends_on=[dead], when="finished")
    default = enqueue("test.parents", depends_on=[dead])
    assert fresh(after).status == JobStatus.PENDING
    assert fresh(default).status == JobStatus.CANCELLED


def test_finished_child_waits_for_every_parent_to_finish():
    done = enqueue("test.permanent", {"key": "done"})
    later = enqueue("test.record", {"key": "later"}, delay=3600)
    after = enqueue("test.parents", depends_on=[done, later], when="finished")
    run_jobs()
    assert fresh(done).status == JobStatus.DEAD
    assert fresh(after).status == JobStatus.BLOCKED and fresh(after).waiting_on == 1


def test_when_needs_depends_on_and_a_known_value():
    parent = enqueue("test.record")
    with pytest.raises(ValueError, match="when= qualifies depends_on"):
        enqueue("test.parents", when="finished")
    with pytest.raises(ValueError, match="when must be one of"):
        enqueue("test.parents", depends_on=[parent], when="failed")
    assert Job.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_child_run_by_a_worker_process_reads_its_parents_results(workers):
    good = enqueue("test.record", {"key": "good"})
    bad = enqueue("test.permanent", {"key": "bad"})
    on_complete = enqueue("test.parents", depends_on=[good, bad], when="finished")
    default = enqueue("test.parents", depends_on=[good, bad])
    proc = workers.start("--burst")
    assert workers.exit_code(proc, timeout=60) == 0, workers.output(proc)
    assert fresh(on_complete).status == JobStatus.SUCCEEDED, workers.output(proc)
    assert fresh(on_complete).result == {"parents": [[good.id, fresh(good).result], [bad.id, None]]}
    assert fresh(good).result["run"] and fresh(default).status == JobStatus.CANCELLED
