"""The chaos suite: notifications accepted through the API while faults hit the stack, then
every one of them accounted for.

    .venv/bin/python bench/chaos.py [--short] [--notifications N] [--recipients R]
        [--only kill,redis,...] [--api-port 18300] [--redis-port 16391] [--pg-port 15432]
        [--out bench/results/chaos.json] [--keep]

Starts devtools/chaos_stack.py (its own PostgreSQL and Redis, gunicorn, one worker per
channel queue, beat, the provider fakes with 25 ms latency and 2 % transient failures),
creates recipients (email, phone, an APNs and an FCM device each) and a topic, then runs each
scenario on it in turn: N notifications to all four channels through ``POST /api/notify`` (a
client that retries with the same idempotency key on 5xx or no answer, as callers should),
some scenarios a broadcast to the topic as well, and while they drain, the scenario's fault:

- ``kill``: SIGKILL of worker pool processes and of whole workers (restarted at once), repeatedly;
- ``redis``: Redis killed and started empty (every queued message lost);
- ``flush``: ``FLUSHALL`` on the running Redis (every message lost, every connection kept);
- ``postgres``: ``pg_ctl restart`` (fast; long mode adds immediate);
- ``outage``: every provider answers 503; ``throttle``: 429 with Retry-After;
  ``hang``: providers stop answering (longer than the client timeout).

Then it waits (with a deadline) until none of the scenario's deliveries is queued or sending
and accounts for them (bench/chaos_ledger.py): lost, duplicated, dead-lettered, time to drain
after the last fault, time to recover (``recoverSeconds``: from the end of the fault to the
moment the last of the deliveries then queued or sending left those states, i.e. was sent,
failed or skipped; ``inFlightAtFault`` counts them), and the fault's evidence (kills, the
fakes' fault answers, Redis run ids and key counts, the postmaster pid). Prints a table,
writes JSON, exits 1 if anything was lost, a duplicate exceeds its bound or a fault did not
happen. ``--short``: one scenario of each kind,
small N, a few minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import chaos_ledger as ledger  # noqa: E402
from devtools import chaos_stack  # noqa: E402
from devtools.chaos_stack import CHANNELS, ChaosStack, StackConfig, StackError  # noqa: E402
from devtools.fakes.apns import device_token  # noqa: E402

KINDS = ("kill", "redis", "flush", "postgres", "outage", "throttle", "hang")
# After the broker lost its messages, what was in flight goes out within this (docs/reliability.md).
RECOVER_TARGET_SECONDS = 30.0
TOPIC = "chaos"


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str
    fault_seconds: float
    broadcast: bool = False
    restarts: tuple[str, ...] = ()  # postgres: the pg_ctl modes, in order
    redis_restarts: int = 1


def plan(short: bool) -> list[Scenario]:
    if short:
        return [
            Scenario("kill", "kill", 10),
            Scenario("redis", "redis", 0, broadcast=True),
            Scenario("flush", "flush", 0, broadcast=True),
            Scenario("postgres", "postgres", 0, restarts=("fast",)),
            Scenario("outage", "outage", 8),
            Scenario("throttle", "throttle", 8),
            Scenario("hang", "hang", 8),
        ]
    return [
        Scenario("kill", "kill", 60),
        Scenario("redis", "redis", 20, broadcast=True, redis_restarts=2),
        Scenario("flush", "flush", 0, broadcast=True),
        Scenario("postgres", "postgres", 20, broadcast=True, restarts=("fast", "immediate")),
        Scenario("outage", "outage", 30),
        Scenario("throttle", "throttle", 30),
        Scenario("hang", "hang", 30),
    ]


def say(text: str) -> None:
    print(text, flush=True)


# --- the client --------------------------------------------------------------------------


def call(stack: ChaosStack, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """(status, JSON answer); status 0 when nothing answered."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{stack.api}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Api-Key {stack.api_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"null")
        except ValueError:
            return exc.code, raw.decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, None


def call_until_accepted(
    stack: ChaosStack, method: str, path: str, body: Any, *, timeout: float = 90.0
) -> tuple[int, Any]:
    """Retry 5xx, 429 and no answer until a 2xx or another 4xx (same body, same key)."""
    deadline = time.monotonic() + timeout
    while True:
        status, answer = call(stack, method, path, body)
        retryable = status == 0 or status == 429 or status >= 500
        if not retryable or time.monotonic() > deadline:
            return status, answer
        time.sleep(0.5)


def _apns(user: str) -> str:
    """The user's APNs token: 64 hex digits the fake answers 200 (devtools/fakes/apns.py)."""
    return device_token(tail=hashlib.sha256(user.encode()).hexdigest())


def create_recipients(stack: ChaosStack, count: int) -> list[str]:
    users = [f"chaos-{i}" for i in range(count)]

    def one(i: int) -> None:
        user = users[i]
        profile = {"email": f"{user}@example.com", "phone": f"+1415555{i:04d}", "locale": "en"}
        steps: list[tuple[str, str, Any]] = [
            ("PUT", f"/api/recipients/{user}", profile),
            ("POST", f"/api/recipients/{user}/devices", {"platform": "apns", "token": _apns(user)}),
            ("POST", f"/api/recipients/{user}/devices", {"platform": "fcm", "token": f"{user}-f"}),
        ]
        for method, path, body in steps:
            status, answer = call_until_accepted(stack, method, path, body)
            if status not in (200, 201):
                raise StackError(f"{method} {path} answered {status}: {answer}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(count)))
    status, answer = call_until_accepted(stack, "PUT", f"/api/topics/{TOPIC}", {"name": "Chaos"})
    if status not in (200, 201):
        raise StackError(f"PUT /api/topics/{TOPIC} answered {status}: {answer}")
    for start in range(0, count, 1000):
        chunk = {"userIds": users[start : start + 1000]}
        status, answer = call_until_accepted(
            stack, "POST", f"/api/topics/{TOPIC}/subscribers", chunk
        )
        if status not in (200, 201):
            raise StackError(f"subscribing to {TOPIC} answered {status}: {answer}")
    return users


class Sender:
    """Accepts ``count`` notifications in the background, 4 requests at a time."""

    def __init__(self, stack: ChaosStack, scenario: str, users: list[str], count: int) -> None:
        self.stack, self.scenario, self.users, self.count = stack, scenario, users, count
        self.accepted: list[str] = []
        self.refused: list[tuple[int, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sender:
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(self._one, range(self.count)))

    def _one(self, i: int) -> None:
        body = {
            "userId": self.users[i % len(self.users)],
            "event": "order_shipped",
            "channels": list(CHANNELS),
            "data": {"orderId": f"{self.scenario}-{i}", "eta": "soon"},
            "idempotencyKey": f"chaos:{self.scenario}:{i}",
        }
        status, answer = call_until_accepted(self.stack, "POST", "/api/notify", body)
        with self._lock:
            if status in (200, 202):
                self.accepted.append(str(answer["id"]))
            else:
                self.refused.append((status, answer))


def post_broadcast(stack: ChaosStack, scenario: str) -> str:
    body = {
        "event": "order_shipped",
        "audience": {"topic": TOPIC},
        "channels": list(CHANNELS),
        "data": {"orderId": f"{scenario}-broadcast", "eta": "soon"},
        "idempotencyKey": f"chaos:{scenario}:broadcast",
    }
    status, answer = call_until_accepted(stack, "POST", "/api/broadcasts", body)
    if status not in (200, 202):
        raise StackError(f"POST /api/broadcasts answered {status}: {answer}")
    return str(answer["id"])


# --- faults ------------------------------------------------------------------------------


@dataclass
class Injected:
    # Crash windows opened: pool processes killed, or (PostgreSQL) cut from the database; each
    # may have been between a provider's acceptance and the commit: one duplicate at most.
    kills: int = 0
    worker_kills: int = 0  # whole workers (parent and pool) killed and started again
    evidence: dict[str, Any] = field(default_factory=dict)
    happened: bool = False


def inject(stack: ChaosStack, scenario: Scenario) -> Injected:
    done = Injected()
    if scenario.kind == "kill":
        deadline = time.monotonic() + scenario.fault_seconds
        round_ = 0
        while time.monotonic() < deadline:
            channel = random.choice(CHANNELS)
            round_ += 1
            if round_ % 4 == 0:  # every fourth: the whole worker, parent included
                done.kills += stack.kill_worker(channel)
                done.worker_kills += 1
            else:
                done.kills += stack.kill_worker_child(channel)
            time.sleep(random.uniform(0.8, 1.6))
        done.happened = done.kills > 0
        done.evidence = {"poolProcessesKilled": done.kills, "workersKilled": done.worker_kills}
    elif scenario.kind == "redis":
        run_ids = []
        for i in range(scenario.redis_restarts):
            if i:
                time.sleep(scenario.fault_seconds / scenario.redis_restarts)
            run_ids.append(stack.restart_redis_empty())
        done.happened = all(before != after for before, after in run_ids)
        done.evidence = {"runIds": run_ids}
    elif scenario.kind == "flush":
        done.evidence = stack.flush_redis()
        done.happened = done.evidence["keysBefore"] > 0
    elif scenario.kind == "postgres":
        pids = [stack.postgres_pid()]
        for i, mode in enumerate(scenario.restarts):
            if i:
                time.sleep(scenario.fault_seconds / len(scenario.restarts))
            stack.restart_postgres(mode)
            pids.append(stack.postgres_pid())
        # Each pool process may be between a provider's acceptance and its commit when the
        # connection is cut: the commit fails and the delivery is sent again (a crash window).
        done.kills = stack.config.concurrency * len(CHANNELS) * len(scenario.restarts)
        done.happened = len(set(pids)) == len(pids)
        done.evidence = {"postmasterPids": pids, "modes": list(scenario.restarts)}
    else:
        before = stack.fault_states()
        stack.set_fault(scenario.kind, retry_after=2)
        time.sleep(scenario.fault_seconds)
        after = stack.set_fault("none")
        answered = {
            name: after[name]["answered"].get(scenario.kind, 0)
            - before[name]["answered"].get(scenario.kind, 0)
            for name in after
        }
        done.happened = sum(answered.values()) > 0
        done.evidence = {"faultAnswers": answered}
    return done


# --- one scenario ------------------------------------------------------------------------


def run_scenario(
    stack: ChaosStack, scenario: Scenario, users: list[str], n: int, settle_timeout: float
) -> dict[str, Any]:
    say(f"\n== {scenario.name}: {n} notifications x {len(CHANNELS)} channels"
        + (f" + a broadcast to {len(users)} recipients" if scenario.broadcast else ""))  # fmt: skip
    started, revived_before = time.monotonic(), sum(stack.revived.values())
    sender = Sender(stack, scenario.name, users, n).start()
    broadcasts = [post_broadcast(stack, scenario.name)] if scenario.broadcast else []
    _wait(lambda: len(sender.accepted) >= n // 4, 60.0)  # faults hit a system at work
    injected = inject(stack, scenario)
    last_fault, fault_ended = time.monotonic(), time.time()  # the database's clock is this one
    say(f"   fault done after {last_fault - started:.1f}s: {injected.evidence}")
    conn = _connect(stack)
    try:
        in_flight = _in_flight(conn, list(sender.accepted), broadcasts)
        # Every request answered before the books are read: one still being retried when they
        # are would be left out of the accounting, neither accepted nor refused.
        sender.join(timeout=settle_timeout)
        ids = list(sender.accepted)

        def settled() -> bool:
            if not _broadcasts_done(conn, broadcasts):
                return False
            return ledger.pending(conn, notification_ids=ids, broadcast_ids=broadcasts) == 0

        drained = _wait(settled, settle_timeout)
        drained_at = time.monotonic()
        recovered_at = ledger.left_pending_at(conn, in_flight)
        time.sleep(1.0)  # the last answers reach the fakes' logs
        book = ledger.account(
            conn, notification_ids=ids, broadcast_ids=broadcasts, got=ledger.received(stack.logs)
        )
        ledger.explain(book, stack.logs)
    finally:
        conn.close()
    bound = injected.kills  # crash windows opened: kills, or connections cut by a restart
    result = {
        "scenario": scenario.name,
        "kind": scenario.kind,
        "acceptedThroughNotify": len(set(ids)),
        "refused": len(sender.refused),
        "unanswered": n - len(sender.accepted) - len(sender.refused),
        "broadcasts": broadcasts,
        "faultSeconds": scenario.fault_seconds,
        "injected": injected.happened,
        "evidence": injected.evidence,
        "kills": injected.kills,
        # Workers that exited by themselves (not killed by us) and were started again.
        "workersRevived": sum(stack.revived.values()) - revived_before,
        "settled": drained,
        "drainSeconds": round(drained_at - last_fault, 1),
        "inFlightAtFault": len(in_flight),
        "recoverSeconds": (
            None if recovered_at is None else round(max(0.0, recovered_at - fault_ended), 1)
        ),
        "duplicateBound": bound,
        **book.as_json(),
    }
    result["accepted"] = book.notifications  # through /api/notify and the broadcasts
    result["passed"] = bool(
        drained
        and injected.happened
        and book.lost == 0
        and book.duplicated <= bound
        and result["unanswered"] == 0
    )
    return result


def _connect(stack: ChaosStack) -> Any:
    deadline = time.monotonic() + 30
    while True:
        try:
            return stack.db()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _in_flight(conn: Any, notification_ids: list[str], broadcast_ids: list[str]) -> list[int]:
    """The deliveries queued or sending as the fault ended (asked again while PostgreSQL is
    coming back from its own restart)."""
    found: list[int] = []

    def read() -> bool:
        found[:] = ledger.in_flight(
            conn, notification_ids=notification_ids, broadcast_ids=broadcast_ids
        )
        return True

    _wait(read, 60.0)
    return found


def _broadcasts_done(conn: Any, broadcast_ids: list[str]) -> bool:
    if not broadcast_ids:
        return True
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM notifications_broadcast WHERE id = ANY(%s::uuid[])"
            " AND status NOT IN ('fanned_out', 'cancelled')",
            [broadcast_ids],
        )
        return int(cursor.fetchone()[0]) == 0


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except Exception as exc:  # the database restarting under us: ask again
            say(f"   (waiting: {type(exc).__name__})")
        time.sleep(0.5)
    return False


# --- report ------------------------------------------------------------------------------

COLUMNS = (
    ("scenario", "scenario"), ("accepted", "accepted"), ("deliveries", "deliveries"),
    ("delivered", "delivered"), ("skipped", "skipped"), ("lost", "lost"),
    ("duplicated", "duplicated"), ("dead_lettered", "dead-lettered"), ("kills", "kills"),
    ("drainSeconds", "drain s"), ("recoverSeconds", "recover s"), ("passed", "ok"),
)  # fmt: skip


def table(results: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|---" + "|---:" * (len(COLUMNS) - 1) + "|"
    rows = ["| " + " | ".join(_cell(r[key]) for key, _ in COLUMNS) + " |" for r in results]
    return "\n".join([head, rule, *rows])


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return f"{value:,}" if isinstance(value, int) else str(value)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="small N, a few minutes")
    parser.add_argument("--notifications", type=int, help="per scenario (3000; short 120)")
    parser.add_argument("--recipients", type=int, help="and broadcast size (300; short 40)")
    parser.add_argument("--only", default="", help=f"comma-separated kinds of {KINDS}")
    parser.add_argument("--settle-timeout", type=float, help="seconds (600; short 120)")
    parser.add_argument("--api-port", type=int, default=18300, help="the fakes take the next 4")
    parser.add_argument("--redis-port", type=int, default=16391)
    parser.add_argument("--pg-port", type=int, default=15432)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/chaos.json")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the stack's folder (logs, the fakes' request logs, PostgreSQL's data)",
    )
    args = parser.parse_args(argv)
    args.notifications = args.notifications or (120 if args.short else 3000)
    args.recipients = args.recipients or (40 if args.short else 300)
    args.settle_timeout = args.settle_timeout or (120.0 if args.short else 600.0)
    unknown = set(filter(None, args.only.split(","))) - set(KINDS)
    if unknown:
        parser.error(f"--only: unknown kinds {sorted(unknown)}")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a timeout's SIGTERM still stops the stack
    chaos_stack.scrub_service_settings()  # the stack's settings are its own, not the caller's
    scenarios = [s for s in plan(args.short) if not args.only or s.kind in args.only.split(",")]
    config = StackConfig(api_port=args.api_port, redis_port=args.redis_port, pg_port=args.pg_port)
    began = time.monotonic()
    results: list[dict[str, Any]] = []
    stack = ChaosStack(config)
    try:
        say(f"chaos stack in {stack.dir} ...")
        stack.start()
        stack.supervise()
        say(f"stack up in {time.monotonic() - began:.0f}s; {args.recipients} recipients ...")
        users = create_recipients(stack, args.recipients)
        for scenario in scenarios:
            result = run_scenario(stack, scenario, users, args.notifications, args.settle_timeout)
            results.append(result)
            say(table([result]).splitlines()[-1])
            if not result["passed"]:
                examples = result["lost_examples"], result["duplicate_examples"]
                say(f"   lost, e.g. {examples[0]}; duplicated, e.g. {examples[1]}")
    except StackError as exc:
        say(f"chaos failed: {exc}")
        return 2
    except KeyboardInterrupt:
        say("interrupted: stopping the stack")
        return 130
    finally:
        stack.stop(keep=args.keep)
        if args.keep:
            say(f"kept {stack.dir} (pg_ctl -D {stack.pg_dir / 'data'} start to query it)")
    report = {
        "mode": "short" if args.short else "long",
        "notificationsPerScenario": args.notifications,
        "recipients": args.recipients,
        "stack": {
            "latencyMs": config.latency_ms,
            "failRate": config.fail_rate,
            "poolProcessesPerChannel": config.concurrency,
        },
        "seconds": round(time.monotonic() - began, 1),
        "scenarios": results,
        "passed": all(r["passed"] for r in results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    say("\n" + table(results))
    say(f"\n{report['seconds']:.0f}s in all; wrote {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
