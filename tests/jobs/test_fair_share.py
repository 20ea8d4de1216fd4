"""Per-key rate limits and fair share (jobs.fairshare), held across real worker processes."""

import pytest

from jobs import engine
from jobs.api import RateLimit, enqueue, enqueue_many, explain, job
from jobs.explain import RATE_LIMITED
from jobs.models import FairShareKey, Job, JobStatus, RateLimitStart, WorkerProcess
from tests.testapp.jobs import Key
from tests.testapp.models import Run
from tests.utils import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def done(group: str, job_type: str = "test.per_key") -> int:
    return Job.objects.filter(type=job_type, fair_key=group, status=JobStatus.SUCCEEDED).count()


def test_per_key_rate_limit_holds_per_key_across_two_workers(workers):
    procs = [workers.start("--concurrency", "2") for _ in range(2)]
    wait_for(lambda: WorkerProcess.objects.count() == 2, timeout=30, message="both workers up")
    enqueue_many("test.per_key", [{"group": "a", "key": str(i)} for i in range(6)])
    wait_for(lambda: done("a") == 3, timeout=30, message="three of key a ran")
    # key a is over its limit (3 an hour); key b of the same type still runs
    enqueue_many("test.per_key", [{"group": "b", "key": str(i)} for i in range(4)])
    wait_for(lambda: done("b") == 3, timeout=30, message="three of key b ran")
    # a claim after both were full: a new key runs, the full ones still wait
    enqueue("test.per_key", {"group": "c"})
    wait_for(lambda: done("c") == 1, timeout=30, message="key c ran")
    runs = sorted(Run.objects.values_list("key", flat=True))
    assert runs == ["a"] * 3 + ["b"] * 3 + ["c"]
    starts = sorted(RateLimitStart.objects.filter(type="test.per_key").values_list("key", flat=True))
    assert starts == ["a"] * 3 + ["b"] * 3 + ["c"]
    waiting = Job.objects.filter(type="test.per_key", status=JobStatus.PENDING)
    assert sorted(waiting.values_list("fair_key", flat=True)) == ["a"] * 3 + ["b"]
    assert set(waiting.values_list("attempts", flat=True)) == {0}  # waiting used no attempt
    reasons = explain(waiting.filter(fair_key="a").first())
    assert reasons[0].code == RATE_LIMITED and "key 'a'" in reasons[0].text
    for proc in procs:
        proc.terminate()
        assert workers.exit_code(proc, 20) == 0


def started_order(job_type: str) -> list[str]:
    return list(
        Job.objects.filter(type=job_type, status=JobStatus.SUCCEEDED)
        .order_by("started_at", "id")
        .values_list("fair_key", flat=True)
    )


def test_a_flooded_key_does_not_starve_the_others(workers):
    enqueue_many("test.fair", [{"group": "A", "key": str(i)} for i in range(200)])
    enqueue_many("test.fair", [{"group": "B", "key": str(i)} for i in range(5)])
    proc = workers.start("--concurrency", "1", "--burst", env={"JOBS_PREFETCH": "0"})
    assert workers.exit_code(proc, 120) == 0
    order = started_order("test.fair")
    assert len(order) == 205
    # round-robin: A, B, A, B ... until B has run out
    last_b = max(i for i, key in enumerate(order) if key == "B")
    assert last_b < 2 * 5, order[:12]


def test_fair_share_off_claims_in_plain_order(workers):
    enqueue_many("test.fair", [{"group": "A", "key": str(i)} for i in range(30)])
    enqueue_many("test.fair", [{"group": "B", "key": str(i)} for i in range(5)])
    proc = workers.start(
        "--concurrency", "1", "--burst", env={"JOBS_PREFETCH": "0", "JOBS_FAIR_SHARE": "false"}
    )
    assert workers.exit_code(proc, 60) == 0
    assert started_order("test.fair") == ["A"] * 30 + ["B"] * 5


def claim_one_at_a_time(count: int) -> list[str]:
    """``count`` claims of one job each, alternating between two worker ids: the rotation lives in the
    rows, not in a worker."""
    keys = []
    for i in range(count):
        (claimed,) = engine.claim(f"worker-{i % 2}", 1)
        keys.append(claimed.fair_key)
        engine.complete(claimed)
    return keys


def test_rotation_is_shared_by_every_worker():
    enqueue_many("test.fair", [{"group": "A"} for _ in range(20)])
    enqueue_many("test.fair", [{"group": "B"} for _ in range(20)])
    enqueue_many("test.fair", [{"group": "C"} for _ in range(20)])
    assert claim_one_at_a_time(9) == ["A", "B", "C"] * 3


def test_weights_give_a_key_its_share():
    enqueue_many("test.weighted", [{"group": "big"} for _ in range(40)])
    enqueue_many("test.weighted", [{"group": "small"} for _ in range(40)])
    keys = claim_one_at_a_time(40)
    assert 29 <= keys.count("big") <= 31, keys  # 3 to 1, within a turn (a new key's first comes soon)


def test_a_claim_of_several_jobs_takes_them_round_robin():
    enqueue_many("test.fair", [{"group": "A"} for _ in range(50)])
    enqueue_many("test.fair", [{"group": "B"} for _ in range(3)])
    claimed = engine.claim("w", 8)
    assert sorted(job.fair_key for job in claimed) == ["A"] * 5 + ["B"] * 3


def test_priority_comes_before_the_rotation():
    enqueue_many("test.fair", [{"group": "A"} for _ in range(5)])
    urgent = enqueue("test.fair", {"group": "B"}, priority=10)
    assert [job.id for job in engine.claim("w", 1)] == [urgent.id]


def test_a_key_whose_jobs_finished_leaves_the_rotation():
    enqueue_many("test.fair", [{"group": "A"} for _ in range(2)])
    enqueue("test.fair", {"group": "B"})
    claim_one_at_a_time(3)
    enqueue("test.fair", {"group": "C"})
    assert claim_one_at_a_time(1) == ["C"]  # the next claim of the type forgets A and B
    assert list(FairShareKey.objects.values_list("key", flat=True)) == ["C"]


def test_rate_key_and_concurrency_key_hold_together():
    enqueue_many("test.keyed_limited", [{"group": "g"} for _ in range(4)])
    first = engine.claim("w", 4)
    assert len(first) == 1  # the concurrency key allows one running
    engine.complete(first[0])
    second = engine.claim("w", 4)
    assert len(second) == 1
    engine.complete(second[0])
    assert engine.claim("w", 4) == []  # 2 an hour: the key is full, and says so
    waiting = Job.objects.filter(type="test.keyed_limited", status=JobStatus.PENDING).first()
    assert [r.code for r in explain(waiting)][:1] == [RATE_LIMITED]


def test_bad_rate_limit_and_key_options_are_clear_errors():
    with pytest.raises(ValueError, match="rate_limit must be"):
        job("test.bad", payload=Key, rate_limit=("10/s",))
    with pytest.raises(ValueError, match="invalid rate limit"):
        RateLimit("ten/s", key=lambda p: p.key)
    with pytest.raises(ValueError, match="key must be a function"):
        RateLimit("10/s", key="endpoint_id")
    with pytest.raises(ValueError, match="weights need a key"):
        job("test.bad", payload=Key, weights={"a": 2})
    with pytest.raises(ValueError, match="positive number"):
        job("test.bad", payload=Key, fair_key=lambda p: p.key, weights={"a": 0})
    with pytest.raises(ValueError, match="declare one of them"):
        job("test.bad", payload=Key, rate_limit=RateLimit("1/s", key=len), fair_key=len)


def test_a_paused_keyed_type_is_not_claimed():
    from jobs.models import JobTypeState

    enqueue_many("test.fair", [{"group": "A"}, {"group": "B"}])
    JobTypeState.objects.update_or_create(name="test.fair", defaults={"paused": True})
    assert engine.claim("w", 5) == []
    JobTypeState.objects.filter(name="test.fair").update(paused=False)
    assert len(engine.claim("w", 5)) == 2
