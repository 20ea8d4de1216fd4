"""Job payloads: anything that does not fit the type's model is refused at enqueue, nothing stored;
a stored row corrupted afterwards goes to the dead letters when claimed, never crashing the worker."""

import signal

import pytest
from django.db.models import JSONField, Value
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from jobs.api import InvalidPayload, UnknownJobType, enqueue
from jobs.models import DeadLetter, Job, JobStatus, WorkerProcess
from jobs.registry import get_job_type, job_types
from tests.badinput.strategies import FUZZ, json_values
from tests.testapp.models import Run
from tests.utils import wait_for

TYPES = sorted(job_types())


def fits(job_type: str, payload) -> bool:
    try:
        get_job_type(job_type).payload.model_validate({} if payload is None else payload)
    except ValidationError:
        return False
    return True


@pytest.mark.django_db
@FUZZ
@given(st.sampled_from(TYPES), json_values)
def test_a_payload_that_does_not_fit_its_model_is_refused_and_nothing_is_stored(job_type, payload):
    before = Job.objects.count()
    if fits(job_type, payload):
        job = enqueue(job_type, payload)
        assert Job.objects.get(pk=job.pk).payload == get_job_type(job_type).payload.model_validate(
            {} if payload is None else payload
        ).model_dump(mode="json")
        Job.objects.filter(pk=job.pk).delete()
    else:
        with pytest.raises(InvalidPayload) as refused:
            enqueue(job_type, payload)
        assert refused.value.job_type == job_type and refused.value.errors
        assert Job.objects.count() == before


@pytest.mark.django_db
@FUZZ
@given(st.text(max_size=30).filter(lambda name: name not in job_types()), json_values)
def test_an_unknown_type_is_refused_at_enqueue(name, payload):
    with pytest.raises(UnknownJobType):
        enqueue(name, payload)
    assert not Job.objects.exists()


def corrupt(job: Job, payload=..., **fields) -> Job:
    """Overwrite the stored row behind the engine's back, as a bad migration or manual SQL would."""
    if payload is not ...:
        fields["payload"] = Value(payload, output_field=JSONField())
    Job.objects.filter(pk=job.pk).update(**fields)
    return job


VALID = {
    "test.sleep": {"seconds": 0},
    "test.flaky": {"failures": 0},
    "test.batch": {"n": 1},
    "test.versioned": {"first_name": "Ada", "last_name": "Lovelace"},
}


def corrupt_new(job_type: str, fields: dict) -> Job:
    fields = dict(fields)
    job = enqueue(job_type, VALID.get(job_type, {"key": "valid when enqueued"}))
    return corrupt(job, fields.pop("payload", ...), **fields)


CORRUPTIONS = [
    ("wrong field type", "test.record", {"payload": {"key": ["not", "a", "string"]}}),
    ("missing field", "test.sleep", {"payload": {"key": "no seconds"}}),
    ("list instead of object", "test.record", {"payload": [1, 2, 3]}),
    ("string instead of object", "test.record", {"payload": "just a string"}),
    ("number instead of object", "test.flaky", {"payload": 42}),
    ("older version, no upgrade function", "test.record", {"payload_version": 0}),
    ("newer version that does not fit", "test.versioned", {"payload": {"name": "Ada"}, "payload_version": 9}),
    ("unknown type", "test.record", {"type": "no.such.type"}),
    ("batch item that does not fit", "test.batch", {"payload": {"n": "thirteen"}}),
]


@pytest.mark.django_db(transaction=True)
def test_corrupted_rows_go_to_the_dead_letters_and_the_worker_keeps_running(workers):
    corrupted = {label: corrupt_new(job_type, fields) for label, job_type, fields in CORRUPTIONS}
    proc = workers.start("--concurrency", "2")
    wait_for(
        lambda: Job.objects.filter(status=JobStatus.DEAD).count() == len(CORRUPTIONS),
        message="every corrupted job dead",
    )
    for label, job in corrupted.items():
        job.refresh_from_db()
        assert job.status == JobStatus.DEAD and job.attempts == 1, label  # no retries wasted
        letter = DeadLetter.objects.get(job=job)
        assert letter.error_class.rsplit(".", 1)[-1] in ("InvalidPayload", "UnknownJobType"), label
        assert letter.error_message, label
    assert not Run.objects.exists()  # no handler ran on a payload it could not read

    good = enqueue("test.record", {"key": "after the bad ones"})
    wait_for(lambda: Job.objects.get(pk=good.pk).status == JobStatus.SUCCEEDED, message="good job ran")
    assert Run.objects.get().key == "after the bad ones"
    assert proc.poll() is None and WorkerProcess.objects.count() == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, workers.output(proc)


ODD_ROWS = [
    # a JSON null payload: its dead letter keeps an empty object (DeadLetter.payload is NOT NULL)
    ("JSON null", "test.record", {"payload": None}),
    # an upgrade function that raises on a row: the row goes to the dead letters, not to retries
    (
        "older version the upgrade cannot read",
        "test.versioned",
        {"payload": {"nom": "Ada"}, "payload_version": 1},
    ),
    ("older version, not an object", "test.versioned", {"payload": [["name", 1]], "payload_version": 1}),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("label,job_type,fields", ODD_ROWS, ids=[g[0] for g in ODD_ROWS])
def test_rows_the_engine_cannot_read_go_straight_to_the_dead_letters(workers, label, job_type, fields):
    job = corrupt_new(job_type, fields)
    workers.start()
    wait_for(lambda: Job.objects.get(pk=job.pk).errors, timeout=30, message="first attempt recorded")
    job.refresh_from_db()
    assert job.status == JobStatus.DEAD and job.attempts == 1
    assert DeadLetter.objects.filter(job=job).exists()
