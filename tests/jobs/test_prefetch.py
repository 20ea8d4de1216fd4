"""Prefetch sizing as a pure function of the recent handler durations, and the pause between tries
while the database is away (no database, no worker)."""

from jobs import prefetch


def test_the_buffer_is_the_floor_until_a_trusted_mean_says_jobs_are_short():
    assert prefetch.size(4, 4, None) == 4  # nothing trusted yet
    assert prefetch.size(4, 4, 1.0) == 4  # long jobs: the threads' number
    assert prefetch.size(4, 4, 0.001) == 200  # 4 threads x 50 ms / 1 ms = 200, the cap
    assert prefetch.size(4, 4, 0.005) == 40  # 4 x 0.05 / 0.005
    assert prefetch.size(2, 10, 0.05) == 10  # never below a configured floor
    assert prefetch.size(4, 4, 0.0) == 200  # a zero mean does not divide by zero


def test_the_mean_needs_several_samples_weighs_new_ones_a_fifth_and_is_forgotten_after_a_pause():
    now = [0.0]
    durations = prefetch.RecentDurations(min_samples=3, memory=2.0, clock=lambda: now[0])
    durations.add([0.001])  # one 1 ms cron tick says nothing yet
    assert durations.mean() is None
    durations.add([0.001, 0.001])
    assert durations.mean() == 0.001
    durations.add([0.006])
    assert abs(durations.mean() - (0.8 * 0.001 + 0.2 * 0.006)) < 1e-12
    now[0] = 2.5  # an idle spell longer than the memory
    assert durations.mean() is None
    durations.add([2.0])  # the two-second jobs after it start a new mean, untrusted until 3 samples
    assert durations.mean() is None
    durations.add([2.0, 2.0])
    assert durations.mean() == 2.0
    durations.add([])  # nothing finished: nothing changes
    assert durations.mean() == 2.0


def test_every_loop_waiting_for_the_database_pauses_in_one_rhythm():
    from jobs.retry import Pause

    pause = Pause()
    assert [pause.next() for _ in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert abs(pause.waited - 16.2) < 1e-9
    pause.reset()
    assert (pause.next(), pause.waited) == (0.2, 0.2)
