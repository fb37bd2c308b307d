"""`make run`: the whole service on this machine, and one notification sent through it.

Starts the local provider fakes (APNs, FCM, Twilio, Postmark; see devtools/fakes_env.py for
the keys and settings they share with the service under .run/), runs `manage.py check` with the
providers aimed at them, prepares the database (migrate, collectstatic, the demo catalog and
recipient, an API key), starts the API (gunicorn on a unix socket behind nginx on the API port,
devtools/proxy.py), one Celery worker per queue and beat, each in its own process group with
its output prefixed by its name (devtools/supervisor.py: one that dies is reported and
restarted with a back-off), waits until they all answer, sends a demo notification to all four
channels with curl and shows the receipts: push and in-app `sent`, email and SMS `delivered` by
the fakes' webhooks. Ctrl-C (or SIGTERM) stops every process it started: SIGTERM to each main
process, so a worker finishes its tasks in flight. With --smoke it stops after the demo: exit 0
if every channel got there.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
DEMO = (
    '{"userId":"demo-user","event":"order_shipped","channels":["push","email","sms","inapp"],'
    '"data":{"orderId":"9912","eta":"tomorrow"}}'
)
# Where each channel ends: APNs, FCM and the in-app inbox have no receipts, so "sent" is the
# last word; Postmark and Twilio call back, so email and SMS must reach "delivered".
EXPECTED = {"push": "sent", "email": "delivered", "sms": "delivered", "inapp": "sent"}
START_TIMEOUT, DELIVERY_TIMEOUT = 60.0, 60.0
# How long each process may take to stop: a Celery worker finishes its tasks in flight (a
# delivery: the provider timeout plus a rate-limit wait), gunicorn and nginx their requests.
STOP_GRACE = 30.0

sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from channels import lanes  # noqa: E402 (needs ROOT on sys.path)
from devtools import fakes_env, proxy  # noqa: E402
from devtools.supervisor import RunError, Supervisor, say  # noqa: E402

__all__ = ["RunError", "Supervisor", "say"]  # what the benchmarks use from here too

# One worker per channel (both its lanes) and the maintenance one, named after the table's
# channels (channels/lanes.py).
WORKERS = tuple(lanes.worker_queues())


def _interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def wait_until(what: str, ready: Callable[[], bool], sup: Supervisor, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sup.check_alive()
        if ready():
            return
        time.sleep(0.25)
    raise RunError(f"timed out after {timeout:.0f}s waiting for {what}")


def http(url: str, key: str = "", body: str | None = None) -> tuple[int, str]:
    """(status, body); status 0 when nothing answers."""
    headers = {"Authorization": f"Api-Key {key}"} if key else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, body.encode() if body else None, headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""


def port_answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def manage(env: dict[str, str], *args: str, failed: str = "") -> str:
    cmd = [sys.executable, "manage.py", *args]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    for line in (result.stderr + result.stdout).splitlines():
        say(line, args[0])
    if result.returncode != 0:
        raise RunError(
            f"manage.py {' '.join(args)} failed (exit {result.returncode}); "
            + (
                failed
                or "are PostgreSQL and Redis running and does the database exist? "
                "(`make services` creates it)"
            )
        )
    return result.stdout


def start_fakes(sup: Supervisor, fakes: list[fakes_env.Fake]) -> None:
    started = [(fake, sup.start(fake.name, fake.argv, fake.ready)) for fake in fakes]
    for fake, ready in started:
        # The APNs fake writes its CA before it prints this line; the workers need that file.
        wait_until(
            f"the {fake.name} fake to print {fake.ready!r}", ready.is_set, sup, START_TIMEOUT
        )


def api_argv(api_port: int) -> list[str]:
    """gunicorn alone on 127.0.0.1:``api_port`` (the chaos stack); `make run` puts nginx in
    front of it (devtools/proxy.py)."""
    return proxy.gunicorn_argv(f"127.0.0.1:{api_port}")


# --quiet drops the start-up banner (20 lines per worker) that would bury the demo.
CELERY = [sys.executable, "-m", "celery", "-A", "config", "--quiet"]


def worker_argv(worker: str, *, concurrency: int | None = None, node: str = "") -> list[str]:
    """``celery worker`` for one channel (its transactional queue, then its bulk lane) or
    maintenance, named ``<node or worker>@<host>``."""
    # Each channel's worker serves its transactional queue first, then its bulk lane
    # (queue_order_strategy "priority" in settings); maintenance has no bulk twin.
    queues = lanes.worker_queues()[worker]
    # Maintenance runs a broadcast's fan-out chains at once (NOTIFY_FANOUT_CHAINS), and at
    # least 2: a long retention purge must not hold up the stuck-delivery sweep.
    if concurrency is None:
        from django.conf import settings

        maintenance = max(2, int(settings.NOTIFY_FANOUT_CHAINS))
        concurrency = maintenance if worker == lanes.MAINTENANCE_QUEUE else 1
    worker_args = ["-Q", queues, "-n", f"{node or worker}@%h", "--concurrency", str(concurrency)]
    return [*CELERY, "worker", *worker_args, "--loglevel", "WARNING"]


def beat_argv(run_dir: Path) -> list[str]:
    schedule = str(run_dir / "celerybeat-schedule")
    return [*CELERY, "beat", "--schedule", schedule, "--loglevel", "WARNING"]


def start_service(sup: Supervisor, api_port: int, run_dir: Path) -> None:
    proxy.start(sup, run_dir, api_port)
    for worker in WORKERS:
        sup.start(f"worker-{worker}", worker_argv(worker))
    sup.start("beat", beat_argv(run_dir))


def wait_ready(sup: Supervisor, api: str) -> None:
    from config.celery import app

    health = (0, "")

    def healthy() -> bool:
        nonlocal health
        health = http(f"{api}/healthz")
        return health[0] == 200

    try:
        wait_until(f"{api}/healthz", healthy, sup, START_TIMEOUT)
    except RunError as exc:
        raise RunError(f"{exc}; it last answered {health[0] or 'nothing'} {health[1]}") from None
    names = {f"{worker}@{socket.gethostname()}" for worker in WORKERS}  # what %h expands to
    answered: set[str] = set()

    def all_answer() -> bool:
        try:
            replies = app.control.ping(destination=sorted(names - answered), timeout=1.0)
        except Exception:  # the broker blinked: try again until the deadline
            return False
        answered.update(name for reply in replies for name in reply)
        return answered >= names

    wait_until(f"workers {', '.join(sorted(names))}", all_answer, sup, START_TIMEOUT)
    say(
        f"4 fakes, the API behind nginx, beat and {len(names)} workers are up; "
        "sending a notification:\n"
    )


def send_demo(api: str, key: str) -> dict[str, Any]:
    argv = ["curl", "-sS", "-X", "POST", f"{api}/api/notify", "-H", f"Authorization: Api-Key {key}",
            "-H", "Content-Type: application/json", "-d", DEMO]  # fmt: skip
    say(f"$ {shlex.join(argv)}")
    if shutil.which("curl"):
        done = subprocess.run([*argv, "-w", "\n%{http_code}"], capture_output=True, text=True)
        if done.returncode != 0:
            raise RunError(f"curl failed: {done.stderr.strip()}")
        body, _, code = done.stdout.rpartition("\n")
        status = int(code)
    else:
        say("(curl is not installed; sending the same request with urllib)")
        status, body = http(f"{api}/api/notify", key, DEMO)
    say(f"HTTP {status} {body}")
    if status != 202:
        raise RunError(f"POST /api/notify answered {status}, expected 202")
    return dict(json.loads(body))


def _states(notification: dict[str, Any]) -> dict[str, str]:
    return {d["channel"]: d["status"] for d in notification.get("deliveries", [])}


def wait_for_receipts(api: str, key: str, notification_id: str, sup: Supervisor) -> dict[str, Any]:
    """The notification once every channel reached its expected status or gave up (failed,
    skipped), or as last seen when DELIVERY_TIMEOUT runs out."""
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while time.monotonic() < deadline:
        sup.check_alive()
        status, body = http(f"{api}/api/notifications/{notification_id}", key)
        if status == 200:
            seen = json.loads(body)
        states = _states(seen)
        if all(states.get(c) in (want, "failed", "skipped") for c, want in EXPECTED.items()):
            break
        time.sleep(0.25)
    return seen


def compact(notification_id: str, notification: dict[str, Any]) -> str:
    """The notification as JSON, one line per delivery: status, provider, message id, and for
    push the outcome per device."""
    from notifications.models import Delivery

    # The API does not show the per-device outcomes; the delivery row keeps them.
    devices = (
        Delivery.objects.filter(notification_id=notification_id, channel="push")
        .values_list("results", flat=True)
        .first()
    )
    order = list(EXPECTED)
    lines = []
    for d in sorted(notification.get("deliveries", []), key=lambda d: order.index(d["channel"])):
        shown = {k: d[k] for k in ("channel", "status", "provider", "providerMessageId")}
        shown.update({k: d[k] for k in ("reason", "lastError") if d.get(k)})
        if d["channel"] == "push":
            shown["devices"] = devices or {}
        lines.append(json.dumps(shown, ensure_ascii=False))
    head = "".join(
        f"  {json.dumps(k)}: {json.dumps(notification.get(k))},\n" for k in ("id", "event")
    )
    return "{\n" + head + '  "deliveries": [\n    ' + ",\n    ".join(lines) + "\n  ]\n}"


def check_receipts(notification: dict[str, Any]) -> None:
    states = _states(notification)
    unmet = [
        f"{channel} is {states.get(channel, 'missing')!r} (expected {want!r})"
        for channel, want in EXPECTED.items()
        if states.get(channel) != want
    ]
    if unmet:
        gave_up = any(states.get(channel) in ("failed", "skipped") for channel in EXPECTED)
        within = "" if gave_up else f" within {DELIVERY_TIMEOUT:.0f}s"
        raise RunError(
            f"the demo notification did not go through{within}: {'; '.join(unmet)}. The "
            "notification as last seen is above; the fakes' output and JSONL logs say what "
            "they were asked and answered."
        )


def print_usage(api: str, key: str, notification_id: str, wiring: fakes_env.Wiring) -> None:
    auth = f'-H "Authorization: Api-Key {key}"'
    json_type = '-H "Content-Type: application/json"'
    database_url = os.environ.get("DATABASE_URL")
    env_prefix = f"DATABASE_URL={database_url} " if database_url else ""
    fake_logs = "\n".join(f"  {fake.name:<9} {_shown(fake.log)}" for fake in wiring.fakes)
    say(f"""
The service is running. API key (only its hash is stored; make more with
`.venv/bin/python manage.py create_api_key <name>`):

  {key}

Try it:
  curl -sS -X POST {api}/api/notify {auth} {json_type} -H "Idempotency-Key: order:9913" \\
    -d '{{"userId":"demo-user","event":"order_shipped","data":{{"orderId":"9913"}}}}'
  curl -sS {api}/api/notifications/{notification_id} {auth}
  curl -sS "{api}/api/notifications?userId=demo-user&status=delivered" {auth}
  curl -sS -X PUT {api}/api/recipients/u-42 {auth} {json_type} \\
    -d '{{"email":"u42@example.com","locale":"pt-BR"}}'

Inbox demo:         {api}/demo/inbox   (the web component as demo-user, live)
API docs (OpenAPI): {api}/api/docs/
Admin:              {api}/admin/   (a login: {env_prefix}.venv/bin/python manage.py createsuperuser)
What each fake received (JSONL; the address or token picks its answer, see docs/providers/):
{fake_logs}
The provider settings, for a shell of your own: set -a; . {_shown(wiring.env_file)}

Ctrl-C stops everything.""")


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-port", type=int, default=8000)
    for name, port in fakes_env.PORTS.items():
        parser.add_argument(f"--{name}-port", type=int, default=port, help=f"the {name} fake")
    parser.add_argument(
        "--run-dir", type=Path, default=RUN_DIR, help="keys, logs and settings (default .run/)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="stop after the demo; exit 0 if it went through"
    )
    args = parser.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: it is ignored in background jobs
        signal.signal(sig, _interrupt)

    import django
    from django.conf import settings

    django.setup()  # the settings the children get: read from the same environment
    database = settings.DATABASES["default"]
    say(f"database {database['NAME']} on {database['HOST']}:{database['PORT']}, "
        f"broker {settings.CELERY_BROKER_URL}")  # fmt: skip
    ports = {"api": args.api_port} | {
        name: getattr(args, f"{name}_port") for name in fakes_env.PORTS
    }
    for name, port in ports.items():
        if list(ports.values()).count(port) > 1 or port_answers(port):
            taken = "given twice" if list(ports.values()).count(port) > 1 else "in use"
            say(f"make run failed: port {port} is {taken}; choose another with --{name}-port")
            return 1
    run_dir = args.run_dir.resolve()
    wiring = fakes_env.prepare(run_dir, api_port=args.api_port, ports=ports)
    env = {
        **os.environ,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "PYTHONUNBUFFERED": "1",
        "NOTIFY_DEMO_PAGE": "1",  # /demo/inbox: the web component as the demo recipient
        **wiring.env,
    }
    api = f"http://127.0.0.1:{args.api_port}"
    sup = Supervisor(env, grace=STOP_GRACE)
    demo_done = False
    try:
        start_fakes(sup, wiring.fakes)
        manage(env, "check", failed="a provider is misconfigured; the check says which setting")
        manage(env, "migrate", "--noinput")
        manage(env, "collectstatic", "--noinput")
        manage(env, "seed_demo")
        key = manage(env, "create_api_key", "demo").strip().splitlines()[-1]
        start_service(sup, args.api_port, run_dir)
        wait_ready(sup, api)
        accepted = send_demo(api, key)
        notification_id = accepted["id"]
        notification = wait_for_receipts(api, key, notification_id, sup)
        shown = compact(notification_id, notification)
        say(f"\nGET /api/notifications/{notification_id} (in short)\n{shown}\n")
        for name, line in fakes_env.received(wiring.fakes):
            say(f"The {name} fake received {line}")
        check_receipts(notification)
        demo_done = True
        if args.smoke:
            say("smoke run passed: push and in-app sent, email and SMS delivered")
            return 0
        print_usage(api, key, notification_id, wiring)
        while True:
            sup.check_alive()
            time.sleep(0.5)
    except RunError as exc:
        say(f"make run failed: {exc}")
        return 1
    except KeyboardInterrupt:
        return 0 if demo_done else 130
    finally:
        sup.stop()


if __name__ == "__main__":
    sys.exit(main())
