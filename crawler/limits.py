"""How fast a client may go: one shared limiter for every request of a :class:`CivitaiClient`.

Three things adapt to what the server answers, for all workers together:

* **The pause after 429s without Retry-After.** A 429 after some success pauses nobody: the
  interval below is the reaction. 429s with no success between them (the server lets nothing
  through) pause every worker, first briefly (``FIRST_PAUSE``), then twice as long each time
  while they continue, up to ``ceiling`` (``--sleep-429``); every success halves the pause. Only a
  429 to a request sent *after* the last new one counts: the other answers of a burst do not.
  A crawl hit by an occasional 429 keeps its speed; one that keeps hitting a limit waits longer
  and longer, up to the ceiling. ``Retry-After`` is honoured as given.
* **The request interval.** A new 429 sets it to at least the interval the successes were coming
  at, and ``1 / CUT`` times the current one; each success shortens it by ``RELAX`` again. It
  converges on a server's real rate limit (about one request in ten answered 429 there), while
  random 429s below that share leave it near zero. ``max_rps`` is a floor.
* **How soon another failure is retried** (5xx, timeouts, bad bodies): while other requests keep
  succeeding (fewer consecutive failures than workers) a failure is a fluke and is retried within
  ``QUICK_RETRY`` seconds (doubling); when everything fails the client waits the long back-off.
"""
from __future__ import annotations

import asyncio
import math
import time
from email.utils import parsedate_to_datetime

FIRST_PAUSE = 0.1  # seconds: the first pause of everybody after a 429 without Retry-After
QUICK_RETRY = 0.02  # seconds: the first back-off of a failure while other requests succeed
MAX_PENALTY = 2.0  # seconds: the widest request interval a 429 sets
CUT = 0.85  # a new 429 slows the requests to this share of their rate
RELAX = 0.98  # and each success shortens the request interval by this factor
MIN_PENALTY = 0.0001  # seconds: a 429 caps the rate at 10,000 requests a second at least
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
        if not new:  # one more answer of a burst that a pause or an interval already reacts to
            if retry_after is not None:
                self._pause_until(now + retry_after)
            return
        self.epoch += 1
        # the rate of successes since the last new 429, not counting the time paused
        when, count, paused = self._mark
        active = now - when - (self.paused_seconds - paused)
        done = self.successes - count
        self._mark = (now, self.successes, self.paused_seconds)
        # The interval: at least the one the successes came at (the rate that met the 429), and a
        # CUT slower than the current one. Random 429s do not ratchet it up: successes relax it
        # faster than they come (CUT ** f == RELAX ** (1 - f) at f = 11 % of the requests).
        measured = active / done if done >= 2 and active > 0 else 0.0  # too few successes: no measure
        self.penalty = min(max(self.penalty / CUT, measured, MIN_PENALTY), MAX_PENALTY)
        if retry_after is not None:
            self._pause_until(now + retry_after)
        elif done == 0 or self.pause:  # 429s with no success between them: pause everybody
            self.pause = min(max(self.pause * 2, FIRST_PAUSE), self.ceiling)
            self._pause_until(now + self.pause)
        # else a 429 after some success since the last one: the wider interval is the whole reaction

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
            self.penalty = self.penalty * RELAX if self.penalty > MIN_PENALTY / 2 else 0.0
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
