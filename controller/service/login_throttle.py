"""Failed log-ins slow a guesser down, per user name and per client address: after
``free_failures`` failures within ``window_s``, every further attempt is refused unchecked
for a lockout that doubles with each failure (``base_lockout_s`` up to ``max_lockout_s``).
A success clears the name's and the address's count. The memory is bounded (the oldest
entries go first), so a flood of made-up names cannot grow it."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

FREE_FAILURES = 5
WINDOW_S = 300.0
BASE_LOCKOUT_S = 2.0
MAX_LOCKOUT_S = 300.0
MAX_KEYS = 10_000


@dataclass
class _Failures:
    count: int
    first_at: float
    locked_until: float


class LoginThrottle:
    def __init__(self, *, free_failures: int = FREE_FAILURES, window_s: float = WINDOW_S,
                 base_lockout_s: float = BASE_LOCKOUT_S, max_lockout_s: float = MAX_LOCKOUT_S,
                 max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic) -> None:
        self.free_failures = free_failures
        self.window_s = window_s
        self.base_lockout_s = base_lockout_s
        self.max_lockout_s = max_lockout_s
        self.max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def retry_after(self, keys: Iterable[str]) -> float | None:
        """Seconds until these keys may try again; None if they may now."""
        now = self._clock()
        waits = [f.locked_until - now for key in keys
                 if (f := self._failures.get(key)) is not None and f.locked_until > now]
        return max(waits) if waits else None

    def failed(self, keys: Iterable[str]) -> None:
        now = self._clock()
        for key in keys:
            entry = self._failures.pop(key, None)
            if entry is None or now - entry.first_at > self.window_s:
                entry = _Failures(0, now, 0.0)
            entry.count += 1
            beyond = entry.count - self.free_failures
            if beyond >= 0:
                lockout = min(self.max_lockout_s, self.base_lockout_s * 2 ** min(beyond, 30))
                entry.locked_until = now + lockout
            self._failures[key] = entry
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._failures.pop(key, None)
