"""The worker's LISTEN thread (PostgreSQL): a NOTIFY for one of its queues wakes the claim loop at
once instead of at the next poll; a lost LISTEN connection is said once and retried while the loop
polls."""

import logging
import threading

from jobs import db, retry

log = logging.getLogger("jobs.worker")


class Listener:
    def __init__(
        self,
        worker_id: str,
        queues: list[str] | None,
        stopping: threading.Event,
        notified: threading.Event,
        wakeup: threading.Event,
    ):
        self.worker_id = worker_id
        self.queues = queues
        self.stopping = stopping
        self.notified = notified  # set on a NOTIFY for our queues (the loop's peek clears it)
        self.wakeup = wakeup

    def start(self) -> None:
        threading.Thread(target=self._main, name="jobs-listen", daemon=True).start()

    def _main(self) -> None:
        pause, lost = retry.Pause(), False
        errors = db.listen_errors()

        def listening() -> None:
            nonlocal lost
            pause.reset()
            lost = False
            self.notified.set()  # anything enqueued while we were not listening
            self.wakeup.set()

        def notified(queue: str) -> None:
            if self.queues is None or queue in self.queues:
                self.notified.set()
                self.wakeup.set()

        while not self.stopping.is_set():
            try:
                db.listen(self.stopping, notified, listening)
            except errors as exc:
                if not lost:  # once per loss, not once per reconnect attempt
                    log.warning(
                        "worker %s: LISTEN connection lost (%s); polling until it is back",
                        self.worker_id,
                        exc,
                    )
                lost = True
                self.stopping.wait(pause.next())
