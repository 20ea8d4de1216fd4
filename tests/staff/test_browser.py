"""The dashboard and a retry from the admin in a real browser (Debian chromium via Playwright)."""

import io
from datetime import timedelta

import pytest
from django.utils import timezone
from PIL import Image

from jobs import staff
from jobs.models import DeadLetter, JobStatus
from tests.staff import factories

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

GREEN, RED = (0x2E, 0x7D, 0x32), (0xC6, 0x28, 0x28)


def pixels_like(png: bytes, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=image.width * image.height)
    return sum(
        n for n, rgb in colours if all(abs(a - b) <= tolerance for a, b in zip(rgb, colour, strict=True))
    )


def test_dashboard_draws_charts_and_refreshes_without_reloading(page, login, tmp_path):
    for minutes_ago, count in ((1, 4), (7, 9), (30, 2)):
        factories.finished(count, minutes_ago=minutes_ago)
    factories.finished(3, minutes_ago=5, status=JobStatus.DEAD)
    factories.finished(6, minutes_ago=300)
    factories.job(status=JobStatus.PENDING, queue="mail", run_at=timezone.now() - timedelta(minutes=2))
    staff.pause_queue("cli", "mail")
    factories.worker()
    login(factories.support_user())

    page.goto("/admin/")
    page.click("#jobs-dashboard-link a >> nth=0")
    page.wait_for_url("**/staff/jobs/")
    assert page.locator('tr[data-queue="mail"] .jobs-badge').inner_text() == "paused"

    for chart in ("#chart-per-minute", "#chart-per-hour"):
        box = page.locator(chart).bounding_box()
        assert box and box["width"] > 300 and box["height"] > 80, (chart, box)
        assert page.locator(f"{chart} rect.bar").count() >= 2
        bar = page.locator(f"{chart} rect.bar").first.bounding_box()
        assert bar["width"] > 0 and bar["height"] > 0
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    minute_png = page.locator("#chart-per-minute").screenshot(path=str(tmp_path / "per-minute.png"))
    assert pixels_like(minute_png, GREEN) > 50 and pixels_like(minute_png, RED) > 20

    # New facts arrive through the 5-second refresh; the page itself is never reloaded.
    page.evaluate("window.__notReloaded = true")
    staff.resume_queue("cli", "mail")
    factories.dead_job()
    page.wait_for_function(
        "document.querySelector('tr[data-queue=\"mail\"] .jobs-badge').textContent === 'running'",
        timeout=12_000,
    )
    assert page.locator("#panel-dead-letters .count").inner_text() == "1"
    assert page.evaluate("window.__notReloaded") is True


def test_staff_retry_a_dead_job_from_the_admin(page, login):
    job, dead = factories.dead_job(payload={"key": "order-1001"})
    login(factories.operator())

    page.goto("/admin/jobs/job/?status=dead")
    page.locator(f"#result_list a[href*='/admin/jobs/job/{job.pk}/change/']").first.click()
    page.wait_for_selector("button.jobs-action-retry_jobs")
    assert "PermanentError" in page.content() and "order-1001" in page.content()
    page.click("button.jobs-action-retry_jobs")
    page.wait_for_selector(".messagelist .success")
    dead.refresh_from_db()
    assert dead.requeued_job is not None and dead.requeued_job.status == JobStatus.PENDING
    assert f"new job #{dead.requeued_job_id}" in page.locator(".messagelist").inner_text()
    assert "operator" in page.locator("#audit-group, .inline-group").first.inner_text()

    page.goto(f"/admin/jobs/deadletter/{dead.pk}/change/")
    page.click(f"a[href='/admin/jobs/job/{dead.requeued_job_id}/change/']")
    page.wait_for_url(f"**/admin/jobs/job/{dead.requeued_job_id}/change/")
    assert DeadLetter.objects.get(pk=dead.pk).requeued_at is not None


LONG_QUEUE = "warehouse-inventory-synchronisation-eu-central-1-primary"
LONG_TYPE = "merchant_webhook_delivery_with_a_very_long_descriptive_name.v2"

# Every element of each panel that sticks out of its panel's box, or a panel that overlaps another.
OVERFLOWS = """() => {
  const sections = [...document.querySelectorAll('#jobs-panels section')];
  const found = [];
  for (const s of sections) {
    const box = s.getBoundingClientRect();
    if (s.scrollWidth > s.clientWidth + 1) found.push(`${s.id} scrolls: ${s.scrollWidth} > ${s.clientWidth}`);
    for (const e of s.querySelectorAll('*')) {
      const r = e.getBoundingClientRect();
      if (r.width && (r.right > box.right + 1 || r.left < box.left - 1))
        found.push(`${s.id} ${e.tagName} '${e.textContent.trim().slice(0, 9)}' to ${r.right} > ${box.right}`);
    }
    for (const o of sections) {
      const b = o.getBoundingClientRect();
      const across = box.left < b.right - 1 && b.left < box.right - 1;
      if (o !== s && across && box.top < b.bottom - 1 && b.top < box.bottom - 1)
        found.push(`${s.id} overlaps ${o.id}`);
    }
  }
  return found;
}"""


@pytest.mark.parametrize("width", [1280, 1400, 1920])
def test_every_panel_of_the_dashboard_keeps_its_content_inside_its_box(page, login, width):
    from jobs.models import BreakerState, JobStat

    for queue in (LONG_QUEUE, "mail", "default"):
        factories.job(
            status=JobStatus.PENDING, queue=queue, type=LONG_TYPE, run_at=timezone.now() - timedelta(hours=30)
        )
    staff.pause_queue("cli", LONG_QUEUE)
    factories.finished(5, minutes_ago=3, job_type=LONG_TYPE)
    for outcome in ("started", "succeeded", "failed", "dead"):
        JobStat.objects.create(type=LONG_TYPE, outcome=outcome, bucket="le_0.1", count=123456789, seconds=1.0)
    factories.stale_dead_letter(
        error_class="orders.webhooks.MerchantEndpointUnreachableError", message="x" * 300
    )
    factories.worker(
        "worker-on-a-host-with-a-long-name-1234-abcdef",
        hostname="ip-10-200-33-44.eu-central-1.compute.internal",
        queues=[LONG_QUEUE, "mail", "default"],
        current_jobs=list(range(1000001, 1000013)),
    )
    BreakerState.objects.create(  # the open breakers' table, with a long type and key
        type=LONG_TYPE,
        key="webhook-endpoint:merchant-with-a-rather-long-endpoint-identifier-0042",
        state=BreakerState.State.OPEN,
        failures=[timezone.now().isoformat()] * 5,
        opened_at=timezone.now(),
        probe_at=timezone.now() + timedelta(minutes=2),
    )
    login(factories.support_user())
    page.set_viewport_size({"width": width, "height": 1000})
    page.goto("/staff/jobs/")
    page.wait_for_selector(f'tr[data-queue="{LONG_QUEUE}"]')
    page.wait_for_selector(f'#open-breakers tr[data-type="{LONG_TYPE}"]')
    assert page.evaluate(OVERFLOWS) == []
