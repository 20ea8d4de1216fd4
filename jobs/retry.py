"""One rhythm for every loop that waits for the database to answer again (the worker's claim loop, its
LISTEN connection, the batched completer, recording an outcome, registration and shutdown): wait
0.2 s, then twice as long each time, at most 5 s, so a worker is back soon after the database is."""

FIRST = 0.2  # seconds
CAP = 5.0


class Pause:
    """The waits between tries: ``next()`` is the next one, ``waited`` what they added up to since the
    last ``reset()`` (a loop that gives up after so long asks it)."""

    def __init__(self, first: float = FIRST, cap: float = CAP):
        self.first, self.cap = first, cap
        self.reset()

    def next(self) -> float:
        seconds = self._next
        self._next = min(self._next * 2, self.cap)
        self.waited += seconds
        return seconds

    def reset(self) -> None:
        self._next = self.first
        self.waited = 0.0
