"""The scope's keys in Consul's KV store, against a stand-in of Consul's HTTP API on 127.0.0.1
(no Consul binary exists on these machines; etcd3 runs for real in the cluster tier's
test_dcs.py): the prefix Patroni uses, the ACL token as a header, what an unreachable DCS
says."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from bakery.cloud.dcs import Dcs, DcsError, by_hand
from bakery.config import load_settings
from tests.helpers import base_config, merged, serving

TOKEN = "b1gs3cr3t-acl-token"


class ConsulKv(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        self.keys = {"terra42/patroni42/initialize", "terra42/patroni42/leader", "other/x"}
        self.tokens: list[str | None] = []
        super().__init__(("127.0.0.1", 0), KvHandler)


class KvHandler(BaseHTTPRequestHandler):
    server: ConsulKv

    def log_message(self, *args):
        pass

    def _prefix(self) -> tuple[str, dict]:
        url = urlsplit(self.path)
        self.server.tokens.append(self.headers.get("X-Consul-Token"))
        return url.path.removeprefix("/v1/kv/"), parse_qs(url.query, keep_blank_values=True)

    def do_GET(self):
        prefix, query = self._prefix()
        found = sorted(k for k in self.server.keys if k.startswith(prefix))
        if "keys" not in query or not found:
            self.send_response(404)  # Consul's answer for no such key
            self.end_headers()
            return
        body = json.dumps(found).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_DELETE(self):
        prefix, query = self._prefix()
        assert "recurse" in query
        self.server.keys = {k for k in self.server.keys if not k.startswith(prefix)}
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"true")


@pytest.fixture
def consul():
    with serving(ConsulKv()) as server:
        yield server


def settings(tmp_path, url: str):
    (tmp_path / "consul").mkdir()
    token = tmp_path / "consul/acl.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return load_settings(merged(base_config(tmp_path), **{"lifecycle.dcs_url": url}))


def test_consul_keys_of_the_scope_are_listed_and_cleared_with_the_token(tmp_path, consul):
    dcs = Dcs(settings(tmp_path, f"http://127.0.0.1:{consul.server_address[1]}"))
    found = dcs.keys()
    assert found.prefix == "terra42/patroni42/"
    assert found.initialized and len(found.keys) == 2
    assert len(dcs.clear().keys) == 2
    assert consul.keys == {"other/x"}
    assert dcs.keys().keys == []  # 404: nothing left
    assert set(consul.tokens) == {TOKEN}
    assert by_hand(dcs.settings) == "consul kv delete -recurse terra42/patroni42/"


def test_an_unreachable_dcs_is_one_clear_error_without_the_token(tmp_path):
    dcs = Dcs(settings(tmp_path, "http://127.0.0.1:9"))
    with pytest.raises(DcsError) as error:
        dcs.keys()
    assert str(error.value).startswith("DCS at http://127.0.0.1:9: not reachable (")
    assert TOKEN not in str(error.value)
