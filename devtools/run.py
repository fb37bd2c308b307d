"""`make run`: the whole service on this machine, and one notification sent through it.

Prepares the database (migrate, collectstatic, the demo catalog and recipient, an API key),
starts the fake SMTP relay, the API (gunicorn), one Celery worker per queue and beat, each in
its own process group with its output prefixed by its name, waits until they all answer, sends
a demo notification with curl and shows it delivered. Ctrl-C (or SIGTERM) stops every process
it started. With --smoke it stops after the demo: exit 0 if the notification went through.
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
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from subprocess import PIPE, STDOUT
from typing import IO, Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
QUEUES = ("push", "email", "sms", "inapp", "maintenance")
DEMO = '{"userId":"demo-user","event":"order_shipped","data":{"orderId":"9912","eta":"tomorrow"}}'
# Push has no provider yet: its delivery is skipped (channel_not_configured), by design.
MUST_BE_SENT = ("email", "inapp")
START_TIMEOUT, DELIVERY_TIMEOUT, STOP_GRACE = 60.0, 60.0, 10.0

sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
_output = threading.Lock()


class RunError(Exception):
    """Something did not start or the demo did not go through; the message says what."""


def say(text: str = "", name: str = "") -> None:
    with _output:
        print(f"{name:>18} | {text}" if name else text, flush=True)


def _pump(name: str, stream: IO[str]) -> None:
    for line in stream:
        say(line.rstrip(), name)


class Supervisor:
    """Children in their own process groups, so stopping one stops everything it forked."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: list[tuple[str, subprocess.Popen[str]]] = []
        self.readers: list[threading.Thread] = []

    def start(self, name: str, argv: Sequence[str]) -> None:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=PIPE, stderr=STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        self.children.append((name, proc))
        self.readers.append(threading.Thread(target=_pump, args=(name, proc.stdout), daemon=True))
        self.readers[-1].start()

    def check_alive(self) -> None:
        for name, proc in self.children:
            if proc.poll() is not None:
                raise RunError(f"{name} exited with code {proc.returncode}; see its output above")

    def stop(self) -> None:
        """SIGTERM every group, wait for the leaders, then SIGKILL whatever is left."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan children
        if self.children:
            say(f"stopping {len(self.children)} processes ...")
        for _, proc in self.children:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for _, proc in self.children:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _, proc in self.children:
            # Also catches group members a leader left behind (gunicorn or Celery pool children).
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        for reader in self.readers:
            reader.join(timeout=1.0)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


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


def manage(env: dict[str, str], *args: str) -> str:
    cmd = [sys.executable, "manage.py", *args]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    for line in (result.stderr + result.stdout).splitlines():
        say(line, args[0])
    if result.returncode != 0:
        raise RunError(
            f"manage.py {' '.join(args)} failed (exit {result.returncode}); are PostgreSQL and "
            "Redis running and does the database exist? (`make services` creates it)"
        )
    return result.stdout


def start_all(sup: Supervisor, api_port: int, smtp_port: int, smtp_log: Path) -> None:
    python = sys.executable
    smtp = ["--port", str(smtp_port), "--log", str(smtp_log)]
    sup.start("smtp", [python, "-m", "devtools.fakes.smtp", *smtp])
    # No control socket: it sits at a fixed path in $HOME that a second gunicorn would share.
    bind = f"127.0.0.1:{api_port}"
    gunicorn = ["config.wsgi", "--bind", bind, "--workers", "2", "--no-control-socket"]
    sup.start("api", [python, "-m", "gunicorn", *gunicorn])
    # --quiet drops the start-up banner (20 lines per worker) that would bury the demo.
    celery = [python, "-m", "celery", "-A", "config", "--quiet"]
    for queue in QUEUES:
        worker = ["-Q", queue, "-n", f"{queue}@%h", "--concurrency", "1"]
        sup.start(f"worker-{queue}", [*celery, "worker", *worker, "--loglevel", "WARNING"])
    schedule = str(RUN_DIR / "celerybeat-schedule")
    sup.start("beat", [*celery, "beat", "--schedule", schedule, "--loglevel", "WARNING"])


def wait_ready(sup: Supervisor, api: str, smtp_port: int) -> None:
    from config.celery import app

    wait_until("the fake SMTP relay", lambda: port_answers(smtp_port), sup, START_TIMEOUT)
    health = (0, "")

    def healthy() -> bool:
        nonlocal health
        health = http(f"{api}/healthz")
        return health[0] == 200

    try:
        wait_until(f"{api}/healthz", healthy, sup, START_TIMEOUT)
    except RunError as exc:
        raise RunError(f"{exc}; it last answered {health[0] or 'nothing'} {health[1]}") from None
    names = {f"{queue}@{socket.gethostname()}" for queue in QUEUES}  # what %h expands to
    answered: set[str] = set()

    def all_answer() -> bool:
        try:
            replies = app.control.ping(destination=sorted(names - answered), timeout=1.0)
        except Exception:  # the broker blinked: try again until the deadline
            return False
        answered.update(name for reply in replies for name in reply)
        return answered >= names

    wait_until(f"workers {', '.join(sorted(names))}", all_answer, sup, START_TIMEOUT)
    say(f"API, SMTP relay, beat and {len(names)} workers are up; sending a notification:\n")


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


def wait_for_delivery(api: str, key: str, notification_id: str, sup: Supervisor) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def states() -> dict[str, str]:
        return {d["channel"]: d["status"] for d in seen.get("deliveries", [])}

    def settled() -> bool:
        status, body = http(f"{api}/api/notifications/{notification_id}", key)
        if status == 200:
            seen.update(json.loads(body))
        return all(states().get(c) not in ("queued", "sending", None) for c in MUST_BE_SENT)

    try:
        wait_until(f"the {' and '.join(MUST_BE_SENT)} deliveries", settled, sup, DELIVERY_TIMEOUT)
    except RunError as exc:
        raise RunError(f"{exc}; last seen:\n{json.dumps(seen, indent=2)}") from None
    if any(states()[channel] != "sent" for channel in MUST_BE_SENT):
        raise RunError(f"the demo notification was not sent:\n{json.dumps(seen, indent=2)}")
    return seen


def relayed_subject(log: Path, message_id: str) -> str:
    for line in log.read_text().splitlines() if log.exists() else []:
        record = json.loads(line)
        if record.get("messageId") == message_id:
            return f"{record['subject']!r} to {', '.join(record['to'])}"
    raise RunError(f"the fake SMTP relay has no message {message_id} in {log}")


def print_usage(api: str, key: str, notification_id: str) -> None:
    auth = f'-H "Authorization: Api-Key {key}"'
    json_type = '-H "Content-Type: application/json"'
    database_url = os.environ.get("DATABASE_URL")
    env_prefix = f"DATABASE_URL={database_url} " if database_url else ""
    say(f"""
The service is running. API key (only its hash is stored; make more with
`.venv/bin/python manage.py create_api_key <name>`):

  {key}

Try it:
  curl -sS -X POST {api}/api/notify {auth} {json_type} -H "Idempotency-Key: order:9913" \\
    -d '{{"userId":"demo-user","event":"order_shipped","data":{{"orderId":"9913"}}}}'
  curl -sS {api}/api/notifications/{notification_id} {auth}
  curl -sS "{api}/api/notifications?userId=demo-user&status=sent" {auth}
  curl -sS -X PUT {api}/api/recipients/u-42 {auth} {json_type} \\
    -d '{{"email":"u42@example.com","locale":"pt-BR"}}'
  curl -sS {api}/api/recipients/u-42 {auth}

API docs (OpenAPI): {api}/api/docs/
Admin:              {api}/admin/   (a login: {env_prefix}.venv/bin/python manage.py createsuperuser)
Mail received by the fake SMTP relay: {RUN_DIR / "smtp.jsonl"}

Ctrl-C stops everything.""")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-port", type=int, default=8000)
    parser.add_argument("--smtp-port", type=int, default=2525)
    parser.add_argument("--smoke", action="store_true", help="stop after the demo; exit 0 if sent")
    args = parser.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: it is ignored in background jobs
        signal.signal(sig, _interrupt)

    import django
    from django.conf import settings

    django.setup()  # the settings the children get: read from the same environment
    database = settings.DATABASES["default"]
    say(f"database {database['NAME']} on {database['HOST']}:{database['PORT']}, "
        f"broker {settings.CELERY_BROKER_URL}")  # fmt: skip
    for port, option in ((args.api_port, "--api-port"), (args.smtp_port, "--smtp-port")):
        if port_answers(port):
            say(f"make run failed: port {port} is in use; choose another with {option}")
            return 1
    env = {
        **os.environ,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "EMAIL_URL": f"smtp://127.0.0.1:{args.smtp_port}",
        "PYTHONUNBUFFERED": "1",
    }
    api = f"http://127.0.0.1:{args.api_port}"
    smtp_log = RUN_DIR / "smtp.jsonl"
    RUN_DIR.mkdir(exist_ok=True)
    smtp_log.unlink(missing_ok=True)
    sup = Supervisor(env)
    demo_done = False
    try:
        manage(env, "migrate", "--noinput")
        manage(env, "collectstatic", "--noinput")
        manage(env, "seed_demo")
        key = manage(env, "create_api_key", "demo").strip().splitlines()[-1]
        start_all(sup, args.api_port, args.smtp_port, smtp_log)
        wait_ready(sup, api, args.smtp_port)
        accepted = send_demo(api, key)
        notification = wait_for_delivery(api, key, accepted["id"], sup)
        say(f"\nGET /api/notifications/{accepted['id']}\n{json.dumps(notification, indent=2)}")
        email = next(d for d in notification["deliveries"] if d["channel"] == "email")
        received = relayed_subject(smtp_log, email["providerMessageId"])
        say(f"\nThe fake SMTP relay received {received}")
        demo_done = True
        if args.smoke:
            say("smoke run passed: the demo notification was sent")
            return 0
        print_usage(api, key, accepted["id"])
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
