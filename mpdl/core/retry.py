"""The retry policy: given a failed attempt and a task's history, what to do next.

Modelled on urllib3's ``Retry``: the policy is an immutable value, a task's history
(``Attempts``) is an immutable value too, and ``RetryPolicy.decide`` returns a decision that
carries the next history. Nothing here sends, sleeps or reads the clock: the scheduler turns a
decision into state, and ``backoff`` is a pure function of the failure count and a jitter
value the caller draws.

The rules (the README's "What happens when things go wrong" table):
- transient failures (connection, timeout, 5xx, 429, short body) back off exponentially with
  jitter, honour Retry-After up to a cap, rotate mirrors, and give up after ``max_attempts``;
- a mirror that lacks the object (404, 410, 416, another length) is not asked again for it;
  when every mirror lacks it, give up;
- 401/403 asks the caller for a fresh URL (a signed URL may have expired), ``refreshes`` times
  at most, and gives up at once when the caller cannot help;
- bytes that fail their hash are fetched once more (on the next mirror); a merged request is
  then split file by file, anything else gives up;
- a server that ignores Range gets its object streamed once;
- a refused TLS certificate stops the run at once: every request to that server would be
  refused too, and a mirror is not tried instead (a missing CA or an attack is for the user to
  see, not to route around);
- a worker that died under a task counts as a transient failure, retried at once;
- the history is a range's, not a request's: every attempt at its bytes charges it (the
  scheduler shares it between a range's pieces, states.Budget). A range raced because its
  connection stalled has failed that attempt (``stalled``), and a contest (a race, a steal)
  starts only while the budget keeps one more attempt beyond it (``can_contest``), so a
  server that never finishes a range spends its budget and the file fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .messages import FailKind

BACKOFF_BASE = 0.25  # seconds before the first retry; doubles each time
BACKOFF_MAX = 10.0
RETRY_AFTER_MAX = 120.0  # a server's Retry-After is honoured up to this
CORRUPT_ATTEMPTS = 2  # bytes that fail their hash are fetched once more, then the file fails
REFRESHES = 2  # times one task may ask the caller for a fresh URL after a 401/403
MAX_ATTEMPTS = 5


def backoff(failures: int, jitter: float, retry_after: float | None = None, *,
            base: float = BACKOFF_BASE, cap: float = BACKOFF_MAX,
            retry_after_max: float = RETRY_AFTER_MAX) -> float:
    """Seconds to wait after ``failures`` transient failures. ``jitter`` in [0, 1) spreads
    the second half of the wait, so many tasks that failed together do not return in one
    wave; a server's ``retry_after`` is a floor, up to ``retry_after_max``."""
    wait = min(cap, base * 2 ** (failures - 1))
    wait = wait / 2 + jitter * wait / 2
    if retry_after is not None:
        wait = max(wait, min(retry_after, retry_after_max))
    return wait


@dataclass(frozen=True, slots=True)
class Attempts:
    """A task's history: what failed so far, and which mirror to ask next."""

    failures: int = 0  # transient ones, and workers that died under it
    corrupt: int = 0  # attempts whose bytes did not match their hash
    refreshed: int = 0  # fresh URLs asked of the caller after a 401/403
    mirror: int = 0  # index of the mirror to ask next
    missing: frozenset[int] = field(default_factory=frozenset)  # mirrors without the object

    def next_mirror(self, mirrors: int) -> Attempts:
        """Rotate to the next mirror that has not said it lacks the object."""
        for step in range(1, mirrors + 1):
            candidate = (self.mirror + step) % mirrors
            if candidate not in self.missing:
                return replace(self, mirror=candidate)
        return self


# -- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again after ``delay`` seconds on mirror ``attempts.mirror``."""

    delay: float
    attempts: Attempts


@dataclass(frozen=True, slots=True)
class Refresh:
    """Ask the caller for a fresh URL for this mirror, then try it again."""

    attempts: Attempts


@dataclass(frozen=True, slots=True)
class Split:
    """The merged request keeps failing its checks: try its files one request each."""


@dataclass(frozen=True, slots=True)
class Stream:
    """The server ignores Range: fetch the whole object once and cut the ranges from it."""


@dataclass(frozen=True, slots=True)
class GiveUp:
    """No attempt can succeed: the task's files fail with ``reason``."""

    reason: str


@dataclass(frozen=True, slots=True)
class StopRun:
    """No request of the run can succeed: the task's files fail with ``reason``, and the run
    stops (its other files stay staged for a re-run)."""

    reason: str


Decision = Retry | Refresh | Split | Stream | GiveUp | StopRun


@dataclass(frozen=True, slots=True)
class Failure:
    """What a failed attempt said: its kind, a reason for people, the server's Retry-After."""

    kind: FailKind
    reason: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = MAX_ATTEMPTS  # transient failures per task, over all mirrors
    corrupt_attempts: int = CORRUPT_ATTEMPTS
    refreshes: int = REFRESHES
    backoff_base: float = BACKOFF_BASE
    backoff_max: float = BACKOFF_MAX
    retry_after_max: float = RETRY_AFTER_MAX

    def decide(self, attempts: Attempts, failure: Failure, *, mirrors: int, splittable: bool,
               can_refresh: bool, jitter: float) -> Decision:
        """The next step after ``failure``. ``splittable``: the request carries several files
        and can be cut into one request per file; ``can_refresh``: the caller gave a hook for
        fresh URLs; ``jitter`` in [0, 1), drawn by the caller."""
        kind = failure.kind
        if kind is FailKind.STOP:
            return StopRun(failure.reason)
        if kind is FailKind.RANGES:
            return Stream()
        if kind is FailKind.MIRROR:
            missing = attempts.missing | {attempts.mirror}
            if len(missing) >= mirrors:
                return GiveUp(f"not on any mirror ({failure.reason})")
            return Retry(0.0, replace(attempts, missing=missing).next_mirror(mirrors))
        if kind is FailKind.AUTH:
            if not can_refresh or attempts.refreshed >= self.refreshes:
                return GiveUp(failure.reason)
            return Refresh(replace(attempts, refreshed=attempts.refreshed + 1))
        if kind is FailKind.CORRUPT:
            corrupt = attempts.corrupt + 1
            if corrupt >= self.corrupt_attempts:
                if splittable:
                    return Split()
                return GiveUp(f"{failure.reason} (on {corrupt} attempts)")
            return Retry(0.0, replace(attempts, corrupt=corrupt).next_mirror(mirrors))
        if kind is FailKind.RETRY:
            failures = attempts.failures + 1
            if failures >= self.max_attempts:
                return GiveUp(f"gave up after {failures} attempts (last: {failure.reason})")
            wait = backoff(failures, jitter, failure.retry_after, base=self.backoff_base,
                           cap=self.backoff_max, retry_after_max=self.retry_after_max)
            return Retry(wait, replace(attempts, failures=failures).next_mirror(mirrors))
        return GiveUp(failure.reason)  # FATAL: a manifest that lies, an internal error

    def can_contest(self, attempts: Attempts) -> bool:
        """Whether a range may be raced or stolen from: a contest is one more attempt, which
        may fail, and the range's last attempt is its own (its failure then ends the file)."""
        return attempts.failures + 1 < self.max_attempts

    def stalled(self, attempts: Attempts, mirrors: int) -> Attempts:
        """The range's connection stopped delivering and is raced: that attempt failed (a
        transient failure, charged now whatever it does next), and the race asks the next
        mirror. Only after ``can_contest``."""
        return replace(attempts, failures=attempts.failures + 1).next_mirror(mirrors)

    def after_death(self, attempts: Attempts) -> Retry | GiveUp:
        """The worker running the task died: retry at once on the same mirror, within the
        same budget as transient failures (a task that kills its worker every time fails)."""
        failures = attempts.failures + 1
        if failures >= self.max_attempts:
            return GiveUp(f"worker processes died {failures} times on it")
        return Retry(0.0, replace(attempts, failures=failures))
