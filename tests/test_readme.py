"""README.md's Python blocks run, so the README cannot drift from the code.

Every ```python block is executed in order, in one namespace, against the test database: the namespace
is a module named ``shop.tasks`` (the README's "say shop/tasks.py"), so the tasks it declares can be
imported by path as a worker would. Jobs run in immediate mode (``JOBS_IMMEDIATE``), so that what a
worker would have run has run when the next line reads it. A block with a top-level ``await`` (async
code) runs in an event loop of its own. The job types a block declares are forgotten after it, so the
README's examples never replace the shop's real handlers for other tests.
"""

import ast
import inspect
import re
import sys
import threading
import types
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.core import mail
from django.core.management import call_command
from django.db import connections
from django.utils import timezone
from django_tasks import TaskResultStatus

from jobs import registry
from jobs.models import Job, JobStatus
from jobs.tasks_backend import JobsBackend
from jobs.testing import immediate
from tests.utils import BASE_DIR

pytestmark = pytest.mark.django_db(transaction=True)

README = BASE_DIR / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[int, str]]:
    """(line of the block's first line of code, code) for each ```python block of README.md."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def run_block(line: int, code: str, namespace: dict) -> None:
    # Padded so that a traceback names the README's own line numbers.
    compiled = compile("\n" * (line - 1) + code, str(README), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if not compiled.co_flags & inspect.CO_COROUTINE:
        exec(compiled, namespace)
        return
    # Async code: an event loop of its own in a thread of its own (none may run in this one); the
    # sync code it awaits runs in that thread too, which closes its connection at the end.
    outcome: list[BaseException | None] = []

    async def block() -> None:
        await eval(compiled, namespace)

    def run() -> None:
        try:
            async_to_sync(block)()
            outcome.append(None)
        except BaseException as exc:  # handed to the test's thread below
            outcome.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert outcome, f"README.md line {line}: the async block did not finish within 60 s"
    if outcome[0] is not None:
        raise outcome[0]


@pytest.fixture
def readme_module():
    module = types.ModuleType("shop.tasks")
    module.__file__ = str(README)
    sys.modules["shop.tasks"] = module
    yield module
    del sys.modules["shop.tasks"]


def test_readme_python_blocks_run_against_the_test_database(readme_module):
    call_command("load_demo_catalog", verbosity=0)  # what `make run` loads; the examples order from it
    blocks = python_blocks()
    assert len(blocks) >= 6
    namespace = readme_module.__dict__
    with immediate():
        for line, code in blocks:
            saved = registry.job_types()
            try:
                run_block(line, code, namespace)
            finally:
                registry._registry.clear()
                registry._registry.update(saved)

    # What the examples say they did.
    # (the README's own job, not the pipeline's of an order that happens to have the id 7: untagged)
    (confirmation,) = [
        job
        for job in Job.objects.filter(type="send_order_confirmation", payload={"order_id": 7})
        if not job.tags
    ]
    assert confirmation.status == JobStatus.SUCCEEDED and confirmation.result == {"sent": True}
    followup = Job.objects.get(type="send_followup_email", payload={"order_id": 7})
    assert followup.status == JobStatus.PENDING and followup.run_at > timezone.now() + timedelta(hours=23)
    assert namespace["order"].status == "paid"
    result, later = namespace["result"], namespace["later"]
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert namespace["send_newsletter"].get_result(result.id).status == TaskResultStatus.SUCCESSFUL
    assert later.status == TaskResultStatus.READY and later.task.priority == 10
    assert later.task.run_after == namespace["in_an_hour"]
    assert "Newsletter #12" in [m.subject for m in mail.outbox]


def test_readme_tasks_settings_are_accepted_by_the_backend(readme_module):
    namespace = readme_module.__dict__
    for line, code in python_blocks():
        if code.lstrip().startswith("TASKS"):
            run_block(line, code, namespace)
    saved = registry.job_types()
    try:
        backend = JobsBackend("readme", namespace["TASKS"]["default"])
        limited = registry.get_job_type("task:shop.tasks.send_newsletter")
    finally:
        registry._registry.clear()
        registry._registry.update(saved)
    assert backend.options_for("shop.tasks.send_newsletter")["unique_key"] == "shop.tasks.newsletter_key"
    assert (limited.rate_limit, limited.max_attempts, limited.timeout) == ("10/s", 5, 30)


def test_readme_signature_check_is_the_shops_own(readme_module):
    from orders.webhooks import sign, verify_signature

    namespace = readme_module.__dict__
    (line, code), *_ = [(n, c) for n, c in python_blocks() if "def verify_signature" in c]
    run_block(line, code, namespace)
    body = b'{"id": "order.paid:1001"}'
    header = sign(body, "s3cret")
    for verify in (namespace["verify_signature"], verify_signature):
        assert verify(header, body, "s3cret")
        assert not verify(header, body, "another secret")
        assert not verify(header, body + b" ", "s3cret")
        stale = sign(body, "s3cret", timestamp=int(timezone.now().timestamp()) - 600)
        assert not verify(stale, body, "s3cret")
