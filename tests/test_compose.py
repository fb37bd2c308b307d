"""docker-compose.yml puts the proxy in front of the API: the only published port is nginx's,
with the repository's template, and gunicorn is reachable from the compose network only; its
workers consume the queues of the lanes table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from channels import lanes
from devtools import proxy

ROOT = Path(__file__).resolve().parent.parent


def _services() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])


def test_the_proxy_publishes_the_api_port_with_the_repository_template() -> None:
    services = _services()
    proxy_service = services["proxy"]
    assert proxy_service["image"].startswith("nginx:")
    assert proxy_service["ports"] == ["127.0.0.1:8000:8000"]
    template, main = (mount.split(":") for mount in proxy_service["volumes"])
    assert (ROOT / template[0]).resolve() == proxy.TEMPLATE
    assert template[1].startswith("/etc/nginx/templates/") and template[1].endswith(".template")
    assert (ROOT / main[0]).resolve() == ROOT / "config" / "nginx.main.conf"
    assert main[1] == "/etc/nginx/nginx.conf"
    # The worker settings are the ones `make run` uses.
    main_conf = (ROOT / main[0]).read_text()
    assert f"worker_connections {proxy.WORKER_CONNECTIONS};" in main_conf
    assert f"worker_rlimit_nofile {2 * proxy.WORKER_CONNECTIONS};" in main_conf
    assert "worker_processes auto;" in main_conf
    # Every name the template uses is set, as devtools/proxy.py sets them for `make run`.
    used = set(proxy._NAME.findall(proxy.TEMPLATE.read_text()))
    assert used == {
        "PROXY_LISTEN",
        "PROXY_UPSTREAM",
        "PROXY_STREAM_UPSTREAM",
        "PROXY_MAX_BODY_SIZE",
        "PROXY_CONN_PER_ADDRESS",
    }
    assert used <= set(proxy_service["environment"])
    assert proxy_service["environment"]["PROXY_CONN_PER_ADDRESS"] == str(proxy.CONN_PER_ADDRESS)
    assert proxy_service["depends_on"]["api"]["condition"] == "service_healthy"
    assert proxy_service["depends_on"]["stream"]["condition"] == "service_healthy"
    assert "healthcheck" in proxy_service


def test_no_other_service_publishes_a_port_and_the_api_trusts_the_proxy() -> None:
    services = _services()
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"proxy"}
    api = services["api"]
    assert api["environment"]["NOTIFY_BEHIND_PROXY"] == "1"
    assert "config/gunicorn.conf.py" in " ".join(api["command"])
    assert "healthcheck" in api


def test_the_stream_runs_the_asgi_application_where_the_proxy_sends_it() -> None:
    services = _services()
    stream = services["stream"]
    command = stream["command"]
    assert command[:2] == ["uvicorn", "config.asgi:application"]
    port = command[command.index("--port") + 1]
    assert services["proxy"]["environment"]["PROXY_STREAM_UPSTREAM"] == f"stream:{port}"
    assert stream["expose"] == [port] and "healthcheck" in stream


def _queues_of(service: dict[str, Any]) -> str:
    command = list(service["command"])
    assert command[:4] == ["celery", "-A", "config", "worker"], command
    return str(command[command.index("-Q") + 1])


def test_the_workers_consume_the_queues_of_the_lanes_table() -> None:
    """docker-compose.yml cannot import the table (channels/lanes.py): its -Q lists are held
    to it here, so a channel or lane added there without a worker here fails."""
    workers = {
        name: _queues_of(service)
        for name, service in _services().items()
        if name.startswith("worker-")
    }
    expected = {f"worker-{name}": queues for name, queues in lanes.worker_queues().items()}
    # A transactional-only worker per channel too (docs/lanes.md, layout f).
    expected |= {f"worker-{row.channel}-transactional": row.queue for row in lanes.LANES.values()}
    assert workers == expected
    consumed = {queue for queues in workers.values() for queue in queues.split(",")}
    assert consumed == set(lanes.all_queues())


def test_the_workers_on_a_bulk_lane_yield_the_cpu_and_the_others_keep_their_weight() -> None:
    """Inside a container nice ranks only the container's own processes (config/
    worker_priority.py): across containers the CPU weight does it."""
    workers = {name: service for name, service in _services().items() if name.startswith("worker-")}
    for name, service in workers.items():
        weight = service.get("cpu_shares")
        if lanes.serves_bulk(set(_queues_of(service).split(","))):
            assert weight is not None and weight < 1024, name
        else:
            assert weight is None, name


APP_SERVICES = ("api", "stream", "beat")


def test_the_migrations_run_once_and_everything_of_the_app_waits_for_them() -> None:
    services = _services()
    migrate = services["migrate"]
    assert migrate["restart"] == "no"
    assert "manage.py migrate --noinput" in " ".join(migrate["command"])
    waiting = [name for name in services if name.startswith("worker-") or name in APP_SERVICES]
    for name in waiting:
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name
    assert "migrate" not in " ".join(services["api"]["command"])  # only the one-shot migrates


def test_every_worker_is_bounded_and_checked_and_beat_is_checked() -> None:
    """Unbounded, a worker starts a process per core: on a 16-core host the workers alone would
    take more connections than PostgreSQL's 100."""
    services = _services()
    connections = 0
    for name, service in services.items():
        if not name.startswith("worker-"):
            continue
        command = list(service["command"])
        concurrency = int(command[command.index("-c") + 1])
        assert 1 <= concurrency <= 4, name
        connections += concurrency
        node = command[command.index("-n") + 1].removesuffix("@%h")
        assert f"inspect ping -d {node}@$$HOSTNAME" in " ".join(service["healthcheck"]["test"])
    assert connections <= 30
    assert "celerybeat-schedule" in " ".join(services["beat"]["healthcheck"]["test"])


def test_every_variable_the_compose_file_sets_is_one_the_settings_read() -> None:
    settings_source = (ROOT / "config" / "settings.py").read_text()
    environment = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["x-app-env"]
    for name in environment:
        secret_file = name.endswith("_FILE") and f'env_secret("{name.removesuffix("_FILE")}"'
        assert (
            f'"{name}"' in settings_source
            or (secret_file and secret_file in settings_source)
            or name.startswith("ANYMAIL_")  # every ANYMAIL_* goes to anymail as it is
        ), name


def test_the_env_example_names_only_what_reaches_the_containers_and_secrets_stay_out() -> None:
    environment = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["x-app-env"]
    example = (ROOT / ".env.example").read_text()
    named = re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example, flags=re.MULTILINE)
    assert "SECRET_KEY" in named and len(named) > 10
    assert set(named) <= set(environment)
    for ignore_file in (".gitignore", ".dockerignore"):
        ignored = (ROOT / ignore_file).read_text().split()
        assert ".env" in ignored and "secrets/" in ignored, ignore_file


def test_the_image_leaves_out_the_fakes_the_benchmarks_and_their_dependencies() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"bench", "devtools", "tests"} <= set(ignored)
    production = (ROOT / "requirements.txt").read_text()
    assert "aiosmtpd" not in production and "hypercorn" not in production
    for app in ("config", "notifications", "preferences", "channels"):
        for module in (ROOT / app).rglob("*.py"):
            imports = re.findall(r"^\s*(?:from|import) (\w+)", module.read_text(), re.MULTILINE)
            assert not {"devtools", "bench", "aiosmtpd", "hypercorn"} & set(imports), module
