"""How fast a client may go: one shared limiter for every request of a :class:`CivitaiClient`.

Three things adapt to what the server answers, for all workers together:

* **The pause after a 429 without Retry-After.** The first one is short (``FIRST_PAUSE``); it
  doubles while 429s continue (a 429 to a request sent *after* the last pause began; the other
  answers of the same burst do not count) up to ``ceiling`` (``--sleep-429``), and halves with
  every success. A crawl hit by an occasional 429 loses a fraction of a second; one that keeps
  hitting a limit waits longer and longer, up to the ceiling. ``Retry-After`` is honoured as given.
* **The request interval.** A new 429 sets it to a little more than the interval the successes
  were coming at (so the crawl slows to about 3/4 of the rate that tripped the limit) and each
  success shortens it by 3 %; it converges on a server's real rate limit. ``max_rps`` is a floor.
* **How soon another failure is retried** (5xx, timeouts, bad bodies): while other requests keep
  succeeding (fewer consecutive failures than workers) a failure is a fluke and is retried after
  ``QUICK_RETRY`` seconds; when everything fails the client waits the long back-off.
"""
from __future__ import annotations

import asyncio
import math
import time
from email.utils import parsedate_to_datetime

FIRST_PAUSE = 0.1  # seconds: the first pause of everybody after a 429 without Retry-After
QUICK_RETRY = 0.05  # seconds: the first back-off of a failure while other requests succeed
MAX_PENALTY = 2.0  # seconds: the widest request interval a 429 sets
MAX_RETRY_AFTER = 600.0


class RateLimiter:
    """One request interval and one pause shared by every request of a client."""

    def __init__(self, max_rps: float | None = None, ceiling: float = 30.0, threads: int = 5):
        self.base_interval = 1.0 / max_rps if max_rps else 0.0
        self.penalty = 0.0  # the interval 429s set, relaxed by successes
        self.paused_until = 0.0
        self.next_slot = 0.0
        self.engaged = bool(self.base_interval)  # see busy()
        self.ceiling = max(ceiling, 0.0)
        self.threads = max(1, threads)
        self.pause = 0.0  # the adaptive pause: the length of the next one is min(2 * pause, ceiling)
        self.epoch = 0  # bumped when a pause begins; a request remembers the epoch it was sent in
        self.failures = 0  # consecutive failed attempts, all requests together, since the last success
        self.successes = 0
        self._mark = (time.monotonic(), 0, 0.0)  # (time, successes, paused seconds) at the last new 429
        # what it did, for the summary and the bench
        self.pauses = 0
        self.paused_seconds = 0.0
        self.longest_pause = 0.0

    @property
    def interval(self) -> float:
        return max(self.base_interval, self.penalty)

    @property
    def steps(self) -> int:
        """How many doublings take the pause from its first length to the ceiling (the 429s a
        request may see on top of its retries before it gives up)."""
        if self.ceiling <= FIRST_PAUSE:
            return 1
        return math.ceil(math.log2(self.ceiling / FIRST_PAUSE)) + 1

    def busy(self) -> bool:
        """Whether :meth:`acquire` may have to wait (no interval, no pause: it would return at once).
        ``engaged`` stays False until a rate cap, a pause or a slot exists, so the check costs one
        attribute read on the path of every request of an unthrottled crawl."""
        return self.engaged and (bool(self.base_interval or self.penalty)
                                 or time.monotonic() < max(self.paused_until, self.next_slot))

    async def acquire(self) -> None:
        self.engaged = True
        while True:
            now = time.monotonic()
            start = max(now, self.paused_until, self.next_slot)
            self.next_slot = start + self.interval
            if start > now:
                await asyncio.sleep(start - now)
            if time.monotonic() >= self.paused_until:
                return

    def too_many_requests(self, retry_after: float | None = None, epoch: int | None = None) -> None:
        """A 429 came back to a request sent in ``epoch`` (None: count it as a new one)."""
        self.engaged = True
        self.failures += 1
        now = time.monotonic()
        new = epoch is None or epoch == self.epoch
        if new:  # not one more answer of a burst a pause already reacts to
            self.epoch += 1
            # the rate of successes since the last new 429, not counting the time paused
            when, count, paused = self._mark
            active = now - when - (self.paused_seconds - paused)
            done = self.successes - count
            self._mark = (now, self.successes, self.paused_seconds)
            if done >= 2 and active > 0:
                self.penalty = max(self.penalty, active / (0.75 * done))
            else:  # too few successes to measure: halve the rate
                self.penalty = max(self.penalty * 2, 0.01)
            self.penalty = min(self.penalty, MAX_PENALTY)
        if retry_after is not None:
            self._pause_until(now + retry_after)
        elif new:
            self.pause = min(max(self.pause * 2, FIRST_PAUSE), self.ceiling)
            self._pause_until(now + self.pause)

    def _pause_until(self, until: float) -> None:
        now = time.monotonic()
        if until > max(self.paused_until, now):
            self.paused_seconds += until - max(self.paused_until, now)
            self.pauses += 1
            self.longest_pause = max(self.longest_pause, until - now)
            self.paused_until = until

    def failed(self) -> bool:
        """Another attempt failed (not a 429); whether the others still succeed (a fluke)."""
        self.failures += 1
        return self.failures <= self.threads

    def success(self) -> None:
        self.failures = 0
        self.successes += 1
        if self.penalty or self.pause:
            self.penalty = self.penalty * 0.97 if self.penalty > 0.0005 else 0.0
            self.pause = self.pause / 2 if self.pause > FIRST_PAUSE / 2 else 0.0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
