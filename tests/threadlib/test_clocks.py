"""The two clocks of threadlib.lowlevel, as api.md describes them: real
time that idles by sleeping, and simulated time that jumps, never goes
back, and gives a date from its epoch."""

import datetime
import time

import pytest

import threadlib
from threadlib.lowlevel import MonotonicClock, Scheduler, VirtualClock


def test_a_virtual_clock_starts_at_its_start_and_moves_only_forward():
    assert VirtualClock().now() == 0.0
    clock = VirtualClock(start=7.5)
    assert clock.now() == 7.5
    clock.advance_to(10.0)
    assert clock.now() == 10.0
    clock.advance_to(4.0)  # never back
    assert clock.now() == 10.0
    clock.advance_to(10.0)
    assert clock.now() == 10.0
    assert clock.virtual is True


def test_a_virtual_clock_idles_by_jumping_ahead_and_never_back():
    clock = VirtualClock(start=1.0)
    clock.idle(2.5)
    assert clock.now() == 3.5
    clock.idle(0.25)
    assert clock.now() == 3.75
    clock.idle(0.0)
    assert clock.now() == 3.75
    clock.idle(-2.0)  # a deadline already past is no reason to go back
    assert clock.now() == 3.75
    clock.idle(-0.5)
    assert clock.now() == 3.75


def test_a_virtual_clocks_date_is_its_epoch_plus_its_time():
    clock = VirtualClock()
    assert datetime.datetime.fromtimestamp(clock.wall(), datetime.timezone.utc) == \
        datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    clock.advance_to(90.0)
    assert clock.wall() == VirtualClock().wall() + 90.0
    other = VirtualClock(start=3.0, epoch=1_000_000.0)
    assert other.wall() == 1_000_003.0


def test_the_date_inside_a_virtual_run_is_the_epoch_plus_the_slept_time():
    def main():
        yield from threadlib.sleep(60)
        return threadlib.now(), threadlib.wall_time()

    now, date = threadlib.run(main(), scheduler=Scheduler(clock=VirtualClock(start=5.0)))
    assert now == 65.0
    assert date == VirtualClock().wall() + 65.0


def test_the_monotonic_clock_reads_real_time_and_its_date_is_the_time_of_day():
    clock = MonotonicClock()
    assert clock.virtual is False
    before_now, before_wall = time.monotonic(), time.time()
    now, wall = clock.now(), clock.wall()
    assert before_now <= now <= time.monotonic()
    assert before_wall <= wall <= time.time()
    clock.advance_to(now + 1000.0)  # real time cannot be moved
    assert clock.now() < now + 1000.0


def test_the_monotonic_clock_idles_by_sleeping_and_not_for_a_past_deadline():
    clock = MonotonicClock()
    began = time.monotonic()
    clock.idle(0.05)
    assert time.monotonic() - began >= 0.05  # a lower bound only
    clock.idle(0.0)
    clock.idle(-1.0)  # a deadline already past: no sleep, no error
    clock.idle(-0.5)


@pytest.mark.parametrize("seconds", [0.02, 0.3])
def test_a_real_time_sleep_without_a_poller_waits_at_least_that_long(seconds):
    # A scheduler whose workers watch no fd has no poller: it idles in the
    # clock itself.
    sched = Scheduler(workers=[threadlib.lowlevel.TimerWorker()])

    def main():
        began = threadlib.now()
        yield from threadlib.sleep(seconds)
        return threadlib.now() - began

    assert threadlib.run(main(), scheduler=sched) >= seconds
