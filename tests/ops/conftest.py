import re
import subprocess
import sys
import urllib.request

import pytest

from tests.utils import BASE_DIR, subprocess_env, wait_for


@pytest.fixture
def live_shop(tmp_path):
    """The shop served by a real gunicorn on a free port of 127.0.0.1, against the test database;
    yields its base URL."""
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "shop.wsgi:application", "-b", "127.0.0.1:0", "-w", "2"],
            cwd=BASE_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=subprocess_env(
                MEDIA_ROOT=str(tmp_path / "media"), EMAIL_URL=f"filemail://{tmp_path / 'mail'}"
            ),
        )
    try:
        found = wait_for(
            lambda: re.search(
                r"Listening at: (http://127\.0\.0\.1:\d+)", log_path.read_text(errors="replace")
            ),
            timeout=60,
            message="gunicorn listening",
        )
        base_url = found[1]
        wait_for(lambda: _answers(base_url + "/healthz"), timeout=60, message="gunicorn answering")
        yield base_url
    finally:
        web.terminate()
        try:
            web.wait(30)
        except subprocess.TimeoutExpired:
            web.kill()
            web.wait(10)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:  # not listening yet, or a worker still booting
        return False
