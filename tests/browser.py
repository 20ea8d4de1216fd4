"""Browser fixtures: Debian chromium driven by Playwright (never a downloaded browser).

tests/conftest.py registers them once (``pytest_plugins``): a test just asks for ``page`` or
``login`` (do not import them: a module's own copy of ``browser`` would start a second Playwright
beside the first, which fails). ``browser`` lives for one module: Playwright's sync API keeps an event
loop running in the main thread, and it must not outlive the browser tests (later tests calling
``async_to_sync`` or relying on Django's async-safety checks would see it). Such tests use
``pytest-django``'s ``live_server``, need ``@pytest.mark.django_db(transaction=True)`` and are marked
``@pytest.mark.browser``.
"""

import os
import shutil

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM) and not shutil.which("chromium"):
        pytest.skip("Debian chromium is not installed (make browser)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; Django's ORM must still be usable from it.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
                headless=True,
                args=CHROMIUM_ARGS,
            )
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, live_server):
    """A fresh page (own cookies) whose relative URLs go to the live server."""
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def login(page):
    """``login(user, password="pw")``: sign in through the admin login form."""

    def sign_in(user, password: str = "pw"):
        page.goto("/admin/login/")
        page.fill("#id_username", user.get_username())
        page.fill("#id_password", password)
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/")
        return page

    return sign_in
