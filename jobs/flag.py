"""A threading.Event that costs nothing until a thread waits on it."""

import threading


class Flag:
    """A threading.Event for the flags every unit carries (cancel requested, abandoned): ``set``,
    ``is_set`` and ``wait``, but the Event (a Condition and its lock, 2.6 us to build, two per job) is
    built only when a thread first waits on it; almost every unit is only ever asked ``is_set()``."""

    __slots__ = ("_set", "_event")
    _building = threading.Lock()

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        with self._building:
            if self._event is None:
                self._event = threading.Event()
                if self._set:  # set() ran before the Event existed
                    self._event.set()
        return self._event.wait(timeout)
