"""A circuit breaker per provider, its state in Redis so every worker process shares it.

closed    calls go through. ``NOTIFY_CIRCUIT_FAILURES`` transient failures in a row (each
          within ``NOTIFY_CIRCUIT_WINDOW_SECONDS`` of the first) open it; any answer from the
          provider, even a permanent error, resets the count.
open      for ``NOTIFY_CIRCUIT_COOLDOWN_SECONDS`` (or the provider's Retry-After, if longer)
          no call is made: the caller defers the delivery for the time left, which costs it
          no attempt, so an outage does not burn retry budgets in seconds.
half-open after the cool-down exactly one call, the probe, goes through (``SET NX`` with a
          TTL: if the prober dies, another process probes once the TTL runs out); the others
          keep waiting. The probe's success closes the circuit, its failure reopens it.

A Retry-After on a transient error extends an open circuit to at least that long; on its own
it does not open one (an APNs 429 is about one device token, not the whole provider).

A configuration error (a refused sender, credentials, an endpoint) opens the circuit at once,
whatever NOTIFY_CIRCUIT_BREAKER says, with its reason kept (``pause_for_configuration``): every
call would fail the same way until an operator fixes a setting, so the deliveries wait in
``queued`` instead of being dead-lettered one by one. It is logged at ERROR once per pause and
shown by /healthz. After ``NOTIFY_CIRCUIT_CONFIG_COOLDOWN_SECONDS`` one probe goes through, as
after an outage: its success (the settings were fixed and the workers restarted, or the
provider's side was fixed) closes the circuit and the waiting deliveries go out by themselves.
Redis unreachable: calls go through as if closed, rather than failing deliveries.

Suspect rejections: a device token refused in a way a wrong setting of ours produces for every
token alike (APNs BadDeviceToken from the sandbox endpoint with production tokens, FCM
SENDER_ID_MISMATCH from the wrong project) is counted per provider (``count_suspect``); a
successful send resets the count. ``channels/gate/guard.py`` turns the
``NOTIFY_PUSH_SUSPECT_REJECTIONS``-th in a row into a configuration pause. The count survives
the pause, so a probe that is refused the same way pauses again rather than retiring a device.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from enum import StrEnum

import redis
from django.conf import settings

from channels.gate import guard_redis

logger = logging.getLogger(__name__)

_PREFIX = "notify:circuit"
# How long an opened circuit is remembered without a successful probe; only a safety net
# against a key that would otherwise never go away.
_TRIPPED_TTL_MS = 24 * 3600 * 1000

# KEYS: failures, open, tripped. ARGV: threshold, window ms, cool-down ms, tripped ttl ms,
# Retry-After ms. Returns 1 when this failure opened the circuit.
_FAILURE_SCRIPT = """
local retry_after = tonumber(ARGV[5])
if redis.call('EXISTS', KEYS[3]) == 1 then
    -- open or half-open already: a late failure only stretches the pause to its Retry-After
    if retry_after > 0 and redis.call('PTTL', KEYS[2]) > 0
            and redis.call('PTTL', KEYS[2]) < retry_after then
        redis.call('SET', KEYS[2], '1', 'PX', retry_after)
    end
    return 0
end
local failures = redis.call('INCR', KEYS[1])
if failures == 1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if failures < tonumber(ARGV[1]) then
    return 0
end
redis.call('SET', KEYS[2], '1', 'PX', math.max(tonumber(ARGV[3]), retry_after))
redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
redis.call('DEL', KEYS[1])
return 1
"""


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(Exception):
    """No call now; ``cause`` is the configuration error that paused the provider, if any."""

    def __init__(self, provider: str, retry_after: float, cause: str = "") -> None:
        self.detail = (
            f"paused, misconfigured: {cause}"
            if cause
            else "paused after repeated failures (circuit open)"
        )
        super().__init__(f"{provider}: {self.detail}")
        self.retry_after = retry_after
        self.cause = cause


@dataclass(frozen=True)
class Admission:
    """A call let through; ``probe`` when it is the one call of a half-open circuit."""

    provider: str
    probe: bool = False
    # Failures in a row were counted when the call was let through: a success must clear
    # them (otherwise a success costs no write).
    failing: bool = True
    # The configuration error a probe is testing ("" after an outage).
    cause: str = ""
    # Suspect rejections were being counted when the call was let through: a successful send
    # must reset the count.
    suspect: bool = False


@dataclass(frozen=True)
class Status:
    """One provider's circuit as /healthz shows it."""

    state: State
    cause: str = ""  # the configuration error that paused it; "" for an outage
    retry_after: float = 0.0  # seconds until the next probe may go (0 when half-open)

    def describe(self) -> str:
        if self.cause:
            return f"paused: {self.cause}"
        return "open: repeated failures" if self.state == State.OPEN else "probing"


def enabled() -> bool:
    """On, and its Redis reachable (else calls go through: channels/gate/guard_redis.py)."""
    return bool(settings.NOTIFY_CIRCUIT_BREAKER) and guard_redis.available()


def _reachable() -> bool:
    """Whether to ask Redis at all: a configuration pause applies even with the breaker off."""
    return guard_redis.available()


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=guard_redis.SOCKET_TIMEOUT,
        socket_connect_timeout=guard_redis.SOCKET_TIMEOUT,
    )


def _redis() -> redis.Redis:
    return _client(settings.NOTIFY_GUARD_REDIS_URL)


def _keys(provider: str) -> tuple[str, str, str, str]:
    base = f"{_PREFIX}:{provider}"
    return f"{base}:failures", f"{base}:open", f"{base}:tripped", f"{base}:probe"


def _suspect_key(provider: str) -> str:
    """Suspect token rejections in a row, with no successful send in between."""
    return f"{_PREFIX}:{provider}:suspect"


def _cause_key(provider: str) -> str:
    """The configuration error that paused the provider; there as long as ``tripped``."""
    return f"{_PREFIX}:{provider}:config"


# KEYS: open, tripped, cause, failures, probe. ARGV: cool-down ms, tripped ttl ms, reason,
# 1 when the call was the probe. Returns 1 when the provider was not paused for its
# configuration yet (the pause starts now: worth an ERROR), else 0.
_CONFIG_SCRIPT = """
local new = redis.call('EXISTS', KEYS[3]) == 0
redis.call('SET', KEYS[1], 'config', 'PX', ARGV[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[2])
redis.call('DEL', KEYS[4])
if ARGV[4] == '1' then
    redis.call('DEL', KEYS[5])
end
if new then
    return 1
end
return 0
"""


def _probe_ttl_ms() -> int:
    # The probe may wait for the rate limit, then run into the provider timeout.
    seconds = (
        settings.NOTIFY_PROVIDER_TIMEOUT_SECONDS + settings.NOTIFY_RATE_LIMIT_MAX_WAIT_SECONDS + 5
    )
    return int(seconds * 1000)


def admit(provider: str) -> Admission:
    """Let a call through, or raise CircuitOpen with the seconds to wait."""
    if not _reachable():
        return Admission(provider)
    failures_key, open_key, tripped_key, probe_key = _keys(provider)
    try:
        client = _redis()
        pipe = client.pipeline()
        pipe.pttl(open_key)
        pipe.exists(tripped_key)
        pipe.exists(failures_key)
        pipe.get(_cause_key(provider))
        pipe.exists(_suspect_key(provider))
        open_ms, tripped, failing, raw_cause, suspect = pipe.execute()
        cause = raw_cause.decode(errors="replace") if raw_cause else ""
        if open_ms > 0:
            raise CircuitOpen(provider, open_ms / 1000, cause)
        if not tripped:
            return Admission(provider, failing=bool(failing), suspect=bool(suspect))
        if client.set(probe_key, "1", nx=True, px=_probe_ttl_ms()):
            logger.warning("circuit of %s half-open: probing", provider)
            return Admission(provider, probe=True, cause=cause, suspect=bool(suspect))
        probe_ms = int(client.pttl(probe_key))
        raise CircuitOpen(provider, max(1.0, probe_ms / 1000), cause)
    except redis.RedisError as exc:
        guard_redis.mark_unavailable(exc)
        return Admission(provider)


def record_success(admission: Admission, *, sent: bool = True) -> None:
    """The provider answered (``sent``, or refused the message or destination itself): the
    failures in a row end; a successful probe closes the circuit. Only a send resets the
    suspect rejections (with the breaker off too: they guard the devices, not the provider)."""
    if not _reachable():
        return
    reset_suspect = [_suspect_key(admission.provider)] if sent and admission.suspect else []
    if not (admission.probe or enabled()):
        if reset_suspect:
            try:
                _redis().delete(*reset_suspect)
            except redis.RedisError as exc:
                guard_redis.mark_unavailable(exc)
        return
    failures_key, open_key, tripped_key, probe_key = _keys(admission.provider)
    try:
        if admission.probe:
            _redis().delete(
                failures_key,
                open_key,
                tripped_key,
                probe_key,
                _cause_key(admission.provider),
                *reset_suspect,
            )
            if admission.cause:
                logger.warning(
                    "%s resumed: the probe succeeded, its configuration is fixed",
                    admission.provider,
                )
            else:
                logger.warning("circuit of %s closed: the probe succeeded", admission.provider)
        elif admission.failing or reset_suspect:
            _redis().delete(failures_key, *reset_suspect)
    except redis.RedisError as exc:
        guard_redis.mark_unavailable(exc)


def count_suspect(admission: Admission) -> int | None:
    """Count one suspect token rejection; returns how many in a row now, None when Redis is
    away (nothing to count with). Kept a day without a new one: a safety net only."""
    if not _reachable():
        return None
    key = _suspect_key(admission.provider)
    try:
        pipe = _redis().pipeline()
        pipe.incr(key)
        pipe.pexpire(key, _TRIPPED_TTL_MS)
        count, _ = pipe.execute()
    except redis.RedisError as exc:
        guard_redis.mark_unavailable(exc)
        return None
    return int(count)


def record_failure(admission: Admission, *, retry_after: float | None = None) -> None:
    """A transient failure: counted towards opening the circuit; a failed probe reopens it.

    A configuration probe that fails transiently found the settings fixed but the provider
    down: an outage now (with the breaker off, the circuit just closes)."""
    if not _reachable():
        return
    failures_key, open_key, tripped_key, probe_key = _keys(admission.provider)
    if admission.probe and admission.cause and not enabled():
        release(admission, close=True)
        return
    if not enabled():
        return
    cooldown_ms = int(float(settings.NOTIFY_CIRCUIT_COOLDOWN_SECONDS) * 1000)
    retry_after_ms = int((retry_after or 0) * 1000)
    try:
        client = _redis()
        if admission.probe:
            pause_ms = max(cooldown_ms, retry_after_ms)
            pipe = client.pipeline()
            pipe.set(open_key, "1", px=pause_ms)
            pipe.set(tripped_key, "1", px=_TRIPPED_TTL_MS)
            pipe.delete(probe_key, _cause_key(admission.provider))
            pipe.execute()
            logger.warning("circuit of %s reopened: the probe failed", admission.provider)
            return
        opened = client.eval(
            _FAILURE_SCRIPT,
            3,
            failures_key,
            open_key,
            tripped_key,
            int(settings.NOTIFY_CIRCUIT_FAILURES),
            int(float(settings.NOTIFY_CIRCUIT_WINDOW_SECONDS) * 1000),
            cooldown_ms,
            _TRIPPED_TTL_MS,
            retry_after_ms,
        )
        if opened:
            logger.warning("circuit of %s opened after repeated failures", admission.provider)
    except redis.RedisError as exc:
        guard_redis.mark_unavailable(exc)


def pause_for_configuration(admission: Admission, reason: str) -> float:
    """The provider refused our settings: pause it for the configuration cool-down, keeping
    the reason; returns the seconds until the probe. Logged at ERROR when the pause starts
    (not for each delivery it holds), at WARNING when a probe finds it still wrong."""
    cooldown = float(settings.NOTIFY_CIRCUIT_CONFIG_COOLDOWN_SECONDS)
    if not _reachable():
        # Nowhere to share the pause: this delivery still waits, rather than failing.
        logger.error("%s misconfigured (guard Redis away): %s", admission.provider, reason)
        return cooldown
    failures_key, open_key, tripped_key, probe_key = _keys(admission.provider)
    try:
        new = _redis().eval(
            _CONFIG_SCRIPT,
            5,
            open_key,
            tripped_key,
            _cause_key(admission.provider),
            failures_key,
            probe_key,
            int(cooldown * 1000),
            _TRIPPED_TTL_MS,
            reason[:_MAX_CAUSE],
            "1" if admission.probe else "0",
        )
    except redis.RedisError as exc:
        guard_redis.mark_unavailable(exc)
        return cooldown
    if new:
        logger.error(
            "%s PAUSED, its configuration is wrong (%s). Its deliveries wait in queued (none is "
            "failed); fix the setting and restart the workers: a probe every %gs resumes it.",
            admission.provider,
            reason,
            cooldown,
        )
    elif admission.probe:
        logger.warning("%s still misconfigured (probe refused): %s", admission.provider, reason)
    return cooldown


# A provider's reason is its own error text; bounded so a huge reply cannot fill Redis.
_MAX_CAUSE = 500


def release(admission: Admission, *, close: bool = False) -> None:
    """The admitted call was not made (rate limit, bug): let another process probe.
    ``close``: the probe settled the pause without an answer that counts (breaker off)."""
    if not (_reachable() and admission.probe):
        return
    keys = [*_keys(admission.provider), _cause_key(admission.provider)] if close else []
    try:
        _redis().delete(*(keys or [_keys(admission.provider)[3]]))
    except redis.RedisError as exc:
        guard_redis.mark_unavailable(exc)


def status(provider: str) -> Status:
    """The circuit as the next call would find it (for tests, logs, /healthz)."""
    _, open_key, tripped_key, _ = _keys(provider)
    pipe = _redis().pipeline()
    pipe.pttl(open_key)
    pipe.exists(tripped_key)
    pipe.get(_cause_key(provider))
    open_ms, tripped, raw_cause = pipe.execute()
    cause = raw_cause.decode(errors="replace") if raw_cause else ""
    if open_ms > 0:
        return Status(State.OPEN, cause, open_ms / 1000)
    return Status(State.HALF_OPEN if tripped else State.CLOSED, cause if tripped else "")


def state(provider: str) -> State:
    return status(provider).state


def not_closed() -> dict[str, Status]:
    """Every provider whose circuit is open or half-open (paused or probing), by name."""
    client = _redis()
    suffix = ":tripped"
    names = sorted(
        key.decode()[len(_PREFIX) + 1 : -len(suffix)]
        for key in client.scan_iter(match=f"{_PREFIX}:*{suffix}", count=1000)
    )
    return {name: status(name) for name in names}


def reset(provider: str) -> None:
    """Close the circuit and forget its failures (an operator's override; tests)."""
    _redis().delete(*_keys(provider), _cause_key(provider), _suspect_key(provider))
