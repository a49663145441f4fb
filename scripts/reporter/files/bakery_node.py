#!/usr/bin/python3
"""bakery-node: what a node says about itself to whoever can read only its console.

usage: bakery-node report | bakery-node handover

  report    bakery-reporter.service: one `BAKERY-NODE {json}` line on stdout (the unit sends
            it to the journal and the serial console) at every change of the node's state
            and as a heartbeat (format: docs/node-report.md)
  handover  ExecStop of patroni.service: on the leader, switch over to a streaming replica
            (in synchronous mode to the synchronous standby) and wait, boundedly, until this
            node has stepped down, so that a graceful stop of the server is a controlled
            handover. A replica, or a leader nobody can take over from, stops as it is.

Standard library only: it runs with the image's /usr/bin/python3. Settings come from the
environment: /etc/bakery/node.env of the node bundle (name, REST API URL, lag threshold,
heartbeat) and, for the handover, Patroni's PATRONI_RESTAPI_USERNAME/PASSWORD from
/etc/patroni/patroni.env. Nothing secret is ever printed.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

MARKER = "BAKERY-NODE"
VERSION = 1
SYNC_ROLES = ("sync_standby", "quorum_standby")


def setting(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        sys.exit(f"bakery-node: {name} is not set (it comes from /etc/bakery/node.env)")
    return value


def number(name: str, default: str) -> float:
    raw = setting(name, default)
    try:
        return float(raw)
    except ValueError:
        sys.exit(f"bakery-node: {name}={raw!r} is not a number")


# -- the local REST API -----------------------------------------------------------------------


class Api:
    """Patroni's REST API on this node, over TLS verified against the cluster CA."""

    def __init__(self, client_cert: bool = False):
        self.url = setting("BAKERY_RESTAPI_URL").rstrip("/")
        if not self.url.startswith("https://"):  # only TLS to Patroni: no other scheme opens
            sys.exit(f"bakery-node: BAKERY_RESTAPI_URL={self.url!r} is not an https:// URL")
        self.context = ssl.create_default_context(
            cafile=setting("BAKERY_CA_FILE", "/etc/patroni/tls/ca.pem")
        )
        if client_cert:  # unsafe endpoints want the node's certificate (patroni.yml `ctl:`)
            self.context.load_cert_chain(
                setting("BAKERY_CERT_FILE", "/etc/patroni/tls/node.pem"),
                setting("BAKERY_KEY_FILE", "/etc/patroni/tls/node.key"),
            )

    def get(self, path: str, timeout: float = 3) -> dict:
        url = self.url + path  # https:// (checked above)
        with urllib.request.urlopen(url, timeout=timeout, context=self.context) as r:  # noqa: S310
            answer = json.load(r)
        if not isinstance(answer, dict):
            raise ValueError("not a JSON object")
        return answer

    def post(self, path: str, body: dict, timeout: float) -> tuple[int, str]:
        """POST with the REST API's credentials; (HTTP status, first line of the answer)."""
        user = os.environ.get("PATRONI_RESTAPI_USERNAME", "")
        password = os.environ.get("PATRONI_RESTAPI_PASSWORD", "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request = urllib.request.Request(  # noqa: S310 - https:// (checked above)
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.context) as r:  # noqa: S310
                status, text = r.status, r.read()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read()
        return status, text.decode(errors="replace").strip().split("\n")[0][:160]


def why(error: BaseException) -> str:
    """A short reason for a failed call: never a URL, a credential or a traceback."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason
    if isinstance(error, ssl.SSLCertVerificationError):
        return "TLS certificate not trusted"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ValueError):
        return "answer is not JSON"
    return type(error).__name__


# -- report -----------------------------------------------------------------------------------


def build_id() -> str | None:
    path = Path(setting("BAKERY_MANIFEST", "/etc/bakery/manifest.json"))
    try:
        value = json.loads(path.read_text()).get("build_id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def failed_jobs() -> list[str]:
    """Jobs whose status file (/var/lib/bakery/status/<job>.json) does not say ok: true; a
    file that cannot be read or parsed counts as failed."""
    directory = Path(setting("BAKERY_STATUS_DIR", "/var/lib/bakery/status"))
    try:
        files = sorted(p for p in directory.iterdir() if p.suffix == ".json")
    except OSError:
        return []
    failed = []
    for path in files:
        try:
            ok = json.loads(path.read_text()).get("ok")
        except (OSError, ValueError, AttributeError):
            ok = False
        if ok is not True:
            failed.append(path.stem[:32])
    return failed


def observe(api: Api, name: str) -> dict:
    """The node's state: one report without its sequence number and time."""
    state = {
        "n": name,
        "b": build_id(),
        "r": None,
        "s": None,
        "tl": None,
        "rs": None,
        "lag": None,
        "sy": False,
        "pr": False,
        "f": failed_jobs(),
        "e": None,
    }
    try:
        patroni = api.get("/patroni")
    except Exception as error:  # noqa: BLE001 - whatever fails, the report says so and goes on
        state["e"] = f"api: {why(error)}"
        return state
    state.update(
        r=patroni.get("role"),
        s=patroni.get("state"),
        tl=patroni.get("timeline"),
        rs=patroni.get("replication_state"),
        sy=any(bool(patroni.get(role)) for role in SYNC_ROLES),
        pr=bool(patroni.get("pending_restart")),
    )
    if state["r"] == "primary":
        state["lag"] = 0
        return state
    try:  # a replica's lag behind the leader, in bytes, as Patroni computes it from the DCS
        members = api.get("/cluster").get("members", [])
    except Exception as error:  # noqa: BLE001
        state["e"] = f"cluster: {why(error)}"
        return state
    mine = next((m for m in members if m.get("name") == name), {})
    lag = mine.get("lag")
    state["lag"] = lag if isinstance(lag, int) and not isinstance(lag, bool) else None
    return state


def news_key(state: dict, max_lag: int) -> str:
    """What makes a report news: any change but the lag's exact value, which moves at every
    poll while clients write; the lag is news when it crosses the threshold."""
    lag = state["lag"]
    side = None if lag is None else lag <= max_lag
    return json.dumps({**state, "lag": side}, sort_keys=True)


def line(state: dict, seq: int) -> str:
    head = {"v": VERSION, "q": seq, "t": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return f"{MARKER} {json.dumps(head | state, separators=(',', ':'))}"


def report() -> int:
    name = setting("BAKERY_NODE_NAME")
    poll = number("BAKERY_REPORT_POLL", "5")
    heartbeat = number("BAKERY_REPORT_HEARTBEAT", "180")
    max_lag = int(number("BAKERY_MAX_LAG", "1048576"))
    api = Api()
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    seq, last_key, last_at = 0, "", 0.0
    while not stopping:
        state = observe(api, name)
        key = news_key(state, max_lag)
        if key != last_key or time.monotonic() - last_at >= heartbeat:
            seq += 1
            print(line(state, seq), flush=True)
            last_key, last_at = key, time.monotonic()
        deadline = time.monotonic() + poll
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.2)
    # The last word, so that a reader does not take the previous line for the present.
    print(line({**observe(api, name), "e": "reporter stopped"}, seq + 1), flush=True)
    return 0


# -- handover ---------------------------------------------------------------------------------


def pick_candidate(members: list[dict], me: str, config: dict) -> str | None:
    """The replica Patroni accepts for a switchover: streaming, not tagged nofailover, within
    maximum_lag_on_failover, and in synchronous mode a synchronous standby (Patroni answers
    412 for any other); the least lagging first."""
    max_lag = config.get("maximum_lag_on_failover", 1048576)
    fit = [
        m
        for m in members
        if m.get("name") != me
        and m.get("state") in ("streaming", "running")
        and not (m.get("tags") or {}).get("nofailover")
        and isinstance(m.get("lag", 0), int)
        and m.get("lag", 0) <= max_lag
    ]
    if config.get("synchronous_mode"):
        fit = [m for m in fit if m.get("role") in SYNC_ROLES]
    fit.sort(key=lambda m: (m.get("lag", 0), m.get("name", "")))
    return fit[0]["name"] if fit else None


def stepped_down(api: Api) -> bool:
    try:
        return api.get("/patroni", timeout=2).get("role") != "primary"
    except Exception:  # noqa: BLE001 - not answering is no proof of a handover
        return False


def handover() -> int:
    """Never fails the stop: every outcome is logged and the exit status is 0."""
    name = setting("BAKERY_NODE_NAME")
    timeout = number("BAKERY_HANDOVER_TIMEOUT", "40")
    deadline = time.monotonic() + timeout

    def say(text: str) -> None:
        print(f"bakery-node handover: {text}", flush=True)

    try:
        api = Api(client_cert=True)
        if api.get("/patroni").get("role") != "primary":
            say("not the leader: nothing to hand over")
            return 0
    except Exception as error:  # noqa: BLE001 - Patroni is down already: nothing to do
        say(f"REST API not readable ({why(error)}): nothing to hand over")
        return 0
    candidate = None
    while time.monotonic() < deadline:
        try:
            members = api.get("/cluster").get("members", [])
            candidate = pick_candidate(members, name, api.get("/config"))
        except Exception as error:  # noqa: BLE001
            say(f"cluster not readable ({why(error)})")
        if candidate is None:
            # In synchronous mode a standby may be between two HA loops: ask again, briefly.
            if deadline - time.monotonic() < timeout - 10:
                say("no replica can take over: stopping as the leader")
                return 0
            time.sleep(2)
            continue
        left = max(1.0, deadline - time.monotonic())
        try:
            status, text = api.post(
                "/switchover", {"leader": name, "candidate": candidate}, timeout=left
            )
        except Exception as error:  # noqa: BLE001
            status, text = 0, why(error)
        say(f"switchover to {candidate}: {status} {text}")
        if status == 200 or stepped_down(api):
            break
        time.sleep(2)
    while time.monotonic() < deadline:
        if stepped_down(api):
            say(f"stepped down; {candidate} leads")
            return 0
        time.sleep(1)
    say(f"still the leader after {timeout:.0f} s: stopping anyway")
    return 0


def main(argv: list[str]) -> int:
    if argv[1:] == ["report"]:
        return report()
    if argv[1:] == ["handover"]:
        return handover()
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
