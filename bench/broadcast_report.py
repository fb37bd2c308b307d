"""The broadcast benchmark's evidence: what the provider fakes or sinks received, and the chart.

Every fake appends one JSON line per request it served (devtools/fakes/*.py, ``--log``), with
``at``, the wall-clock time it took the request (``time.time()``; on this one machine the same
clock as the benchmark's). The Postmark fake stamps ``at`` when it answers, i.e. after its
``--latency-ms``; the others when the request arrives. The nginx sinks (bench/provider_sinks.py)
write one JSON line per request too, ``at`` being nginx's ``$msec`` once it has answered. A
transactional message is told apart from the broadcast's by its sign-in code, unique per
request, found in the SMS body (the Twilio sink logs it) or the e-mail's text body.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.accept import percentile

CHANNEL_OF_FAKE = {"apns": "push", "fcm": "push", "postmark": "email", "twilio": "sms"}
CHANNELS = ("push", "email", "sms")
_CODE = re.compile(r"sign-in code is (\w+)")


@dataclass
class Received:
    """What the fakes received: broadcast sends per channel (wall times) and, per
    transactional code, when each channel's message arrived."""

    broadcast: dict[str, list[float]]
    transactional: dict[str, dict[str, float]]  # channel -> code -> at
    statuses: dict[str, dict[str, int]]  # fake -> HTTP status -> count (broadcast sends)
    other: dict[str, int]  # fake -> requests that are not sends (FCM OAuth tokens)
    # fake -> broadcast sends to a destination (token, number, address) that had one already
    repeated: dict[str, int]


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open() as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def read_fake_logs(logs: dict[str, Path]) -> Received:
    got = Received(
        broadcast={channel: [] for channel in CHANNELS},
        transactional={channel: {} for channel in CHANNELS},
        statuses={name: defaultdict(int) for name in logs},
        other=dict.fromkeys(logs, 0),
        repeated=dict.fromkeys(logs, 0),
    )
    for fake, path in logs.items():
        channel = CHANNEL_OF_FAKE[fake]
        seen: set[str] = set()
        for record in _lines(path):
            for at, text, status, destination in _sends(fake, record):
                if text is None:
                    got.other[fake] += 1
                    continue
                code = _CODE.search(text)
                if code:
                    got.transactional[channel].setdefault(code[1], at)
                    continue
                got.broadcast[channel].append(at)
                got.statuses[fake][str(status)] += 1
                if destination in seen:
                    got.repeated[fake] += 1
                seen.add(destination)
    for times in got.broadcast.values():
        times.sort()
    got.statuses = {name: dict(counts) for name, counts in got.statuses.items()}
    return got


def logged_requests(paths: list[Path], since: float) -> int:
    """Requests in these logs at or after ``since``, whatever they were."""
    return sum(1 for path in paths for record in _lines(path) if float(record["at"]) >= since)


def _sends(fake: str, record: dict[str, Any]) -> Iterator[tuple[float, str | None, Any, str]]:
    """(at, text to look for a code in, HTTP status, destination) per message in one logged
    request; text None for a request that is not a send."""
    at, status = float(record["at"]), record.get("status")
    if "sink" in record:
        yield _sink_send(fake, record, at, status)
    elif fake == "apns":
        token = str(record.get("token") or "")
        yield at, "" if token else None, status, token
    elif fake == "fcm":
        kind = record.get("kind")
        yield at, "" if kind == "send" else None, status, str(record.get("token") or "")
    elif fake == "twilio":
        form = record.get("form", {})
        if record.get("kind") == "requests":
            yield at, str(form.get("Body", "")), status, str(form.get("To", ""))
        else:
            yield at, None, status, ""  # a status callback it posted (only with --receipts)
    else:
        body = record.get("json")
        messages = body if isinstance(body, list) else [body] if isinstance(body, dict) else []
        if not messages:
            yield at, None, status, ""
        for message in messages:
            yield at, str(message.get("TextBody", "")), status, str(message.get("To", ""))


def _sink_send(
    fake: str, record: dict[str, Any], at: float, status: Any
) -> tuple[float, str | None, Any, str]:
    """One request in an nginx sink's log (bench/sinks/nginx.conf.in): its URI, and for FCM
    and Twilio its body, as the client sent it."""
    uri, body = str(record.get("uri", "")), str(record.get("body", ""))
    if fake == "apns":
        token = uri.removeprefix("/3/device/") if uri.startswith("/3/device/") else ""
        return at, "" if token else None, status, token
    if fake == "fcm":
        if not uri.endswith("/messages:send"):
            return at, None, status, ""  # google-auth's token request
        try:
            token = str(json.loads(body)["message"].get("token") or "")
        except (ValueError, KeyError, TypeError, AttributeError):
            token = ""
        return at, "", status, token
    form = urllib.parse.parse_qs(body)
    if not uri.endswith("/Messages.json"):
        return at, None, status, ""
    return at, form.get("Body", [""])[0], status, form.get("To", [""])[0]


# --- rates ---------------------------------------------------------------------------------


def per_second(times: list[float], t0: float, seconds: int) -> list[int]:
    bins = [0] * max(1, seconds)
    for at in times:
        index = int(at - t0)
        if 0 <= index < len(bins):
            bins[index] += 1
    return bins


def sustained_rate(times: list[float]) -> float | None:
    """Messages per second between the 5th and the 95th percentile of arrival times: the
    steady state, without the ramp-up while the fan-out starts and the tail of the last
    batches."""
    if len(times) < 20:
        return None
    lo, hi = int(len(times) * 0.05), int(len(times) * 0.95) - 1
    span = times[hi] - times[lo]
    return (hi - lo) / span if span > 0 else None


def channel_rates(received: Received, t0: float) -> dict[str, dict[str, Any]]:
    rates: dict[str, dict[str, Any]] = {}
    everything = sorted(at for times in received.broadcast.values() for at in times)
    for name, times in [*received.broadcast.items(), ("total", everything)]:
        if not times:
            rates[name] = {"received": 0}
            continue
        span = times[-1] - t0
        window = per_second(times, t0, int(span) + 1)
        peak10 = max(sum(window[i : i + 10]) for i in range(max(1, len(window) - 9))) / 10
        sustained = sustained_rate(times)
        rates[name] = {
            "received": len(times),
            "first_s": round(times[0] - t0, 2),
            "last_s": round(span, 2),
            "mean_per_s": round(len(times) / span, 1) if span > 0 else None,
            "sustained_per_s": round(sustained, 1) if sustained else None,
            "peak_10s_per_s": round(peak10, 1),
        }
    return rates


# --- transactional latency -----------------------------------------------------------------


def latency_stats(latencies: list[float], missing: int) -> dict[str, Any]:
    ordered = sorted(latencies)
    if not ordered:
        return {"received": 0, "missing": missing}
    return {
        "received": len(ordered),
        "missing": missing,
        "p50_ms": round(percentile(ordered, 50) * 1000, 1),
        "p90_ms": round(percentile(ordered, 90) * 1000, 1),
        "p99_ms": round(percentile(ordered, 99) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 1),
    }


def transactional_figures(
    sent: list[dict[str, Any]], received: Received, channels: list[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Accept-to-provider latency per phase and channel, and one point per message.

    The clock starts just before the request is written (the accept time as the caller sees
    it) and stops at the fake's ``at``. A message the API refused or that never reached its
    fake counts as missing, never as fast.
    """
    points: list[dict[str, Any]] = []
    by_phase: dict[str, dict[str, Any]] = {}
    for phase in sorted({item["phase"] for item in sent}):
        items = [item for item in sent if item["phase"] == phase]
        every: list[float] = []
        missing_all = 0
        stats: dict[str, Any] = {
            "requests": len(items),
            "accepted": sum(1 for item in items if item["status"] == 202),
            "api_p50_ms": round(percentile(sorted(i["api_s"] for i in items), 50) * 1000, 1),
            "api_p99_ms": round(percentile(sorted(i["api_s"] for i in items), 99) * 1000, 1),
        }
        for channel in channels:
            arrivals = received.transactional[channel]
            latencies, missing = [], 0
            for item in items:
                at = arrivals.get(item["code"])
                if at is None:
                    missing += 1
                    continue
                latency = at - item["t"]
                latencies.append(latency)
                points.append({"phase": phase, "channel": channel, "t": item["t"], "s": latency})
            stats[channel] = latency_stats(latencies, missing)
            every += latencies
            missing_all += missing
        stats["all"] = latency_stats(every, missing_all)
        by_phase[phase] = stats
    return by_phase, points


# --- chart ---------------------------------------------------------------------------------


def draw_chart(
    path: Path,
    *,
    t0: float,
    received: Received,
    fanout_per_second: list[tuple[int, int, int]],
    tx_points: list[dict[str, Any]],
    memory: list[dict[str, Any]],
    target_per_s: float,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    last = max((times[-1] for times in received.broadcast.values() if times), default=t0 + 1)
    seconds = int(last - t0) + 2
    fig, axes = plt.subplots(3, 1, figsize=(11, 11), sharex=True, height_ratios=[3, 2, 1.4])
    ax = axes[0]
    xs = list(range(seconds))
    total = [0] * seconds
    for channel in CHANNELS:
        bins = per_second(received.broadcast[channel], t0, seconds)
        total = [a + b for a, b in zip(total, bins, strict=True)]
        ax.plot(xs, _smooth(bins), label=f"{channel} (received by the fakes)", linewidth=1.2)
    ax.plot(xs, _smooth(total), label="total", color="black", linewidth=2)
    if fanout_per_second:
        # A page's rows share one timestamp (its transaction's), so whole pages land in one
        # second: smoothed like the rest, not as bars.
        written = [0] * seconds
        for second, _, deliveries in fanout_per_second:
            written[min(seconds - 1, max(0, int(second - t0)))] += deliveries
        ax.plot(xs, _smooth(written), color="grey", linestyle=":", linewidth=1.5,
                label="deliveries written by the fan-out")  # fmt: skip
    ax.axhline(target_per_s, color="red", linestyle="--", linewidth=1,
               label=f"target {target_per_s:,.0f}/s (10M/hour)")  # fmt: skip
    ax.set_ylabel("deliveries / s (5 s mean)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[1]
    for channel in sorted({p["channel"] for p in tx_points}):
        mine = [p for p in tx_points if p["channel"] == channel]
        ax.scatter([p["t"] - t0 for p in mine], [p["s"] * 1000 for p in mine], s=6,
                   label=f"transactional {channel}")  # fmt: skip
    ax.axhline(1000, color="red", linestyle="--", linewidth=1, label="target p99 1 s")
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("accept → provider (ms)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3, which="both")

    ax = axes[2]
    groups = sorted({name for sample in memory for name in sample["rss_mb"]})
    for name in groups:
        ax.plot([m["t"] - t0 for m in memory], [m["rss_mb"].get(name, 0) for m in memory],
                label=name, linewidth=1)  # fmt: skip
    ax.set_ylabel("RSS (MB)")
    ax.set_xlabel("seconds since POST /api/broadcasts (before 0: transactional baseline)")
    ax.legend(loc="upper right", fontsize=7, ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _smooth(bins: list[int], width: int = 5) -> list[float]:
    out, running = [], 0
    for i, value in enumerate(bins):
        running += value
        if i >= width:
            running -= bins[i - width]
        out.append(running / min(width, i + 1))
    return out


def hours(seconds: float | None) -> str:
    if seconds is None or math.isinf(seconds):
        return "n/a"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
