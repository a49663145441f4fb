"""bakery's view of a cluster's DCS keys (bakery.cloud.dcs), against the run's real etcd 3.4
and the keys the real Patroni wrote: what `destroy` clears and what `launch` refuses on.

The test process is the operator's machine here: it reaches etcd from the DCS namespace.
"""

from __future__ import annotations

import base64
import json
import urllib.request

from harness import Cluster
from netns import entered

from bakery.cloud.dcs import Dcs, by_hand, scope_prefix
from bakery.config import load_settings


def settings_for(c: Cluster, scope: str):
    raw = json.loads(json.dumps(c.settings))  # a copy
    raw["cluster"]["scope"] = scope
    raw["lifecycle"] = {
        "dcs_url": f"http://{c.settings['cluster']['dcs']['members'][0]['address']}:2379"
    }
    return load_settings(raw)


def put(c: Cluster, key: str, value: str) -> None:
    body = json.dumps(
        {
            "key": base64.b64encode(key.encode()).decode(),
            "value": base64.b64encode(value.encode()).decode(),
        }
    ).encode()
    url = f"http://{c.settings['cluster']['dcs']['members'][0]['address']}:2379/v3/kv/put"
    with entered(c.infra.host.netns):
        urllib.request.urlopen(
            urllib.request.Request(url, data=body, method="POST"), timeout=10
        ).read()  # noqa: S310


def test_the_keys_patroni_writes_are_where_bakery_looks(cluster: Cluster):
    c = cluster
    leader, _ = c.heal()
    settings = settings_for(c, c.settings["cluster"]["scope"])
    with entered(c.infra.host.netns):
        found = Dcs(settings).keys()
    prefix = f"/{c.settings['cluster']['namespace']}/{c.settings['cluster']['scope']}/"
    assert scope_prefix(settings) == found.prefix == prefix
    assert found.initialized
    assert {prefix + "initialize", prefix + "leader", prefix + "config"} <= set(found.keys)
    assert {prefix + f"members/{name}" for name in c.nodes} <= set(found.keys)


def test_an_earlier_clusters_keys_are_seen_and_cleared_and_nothing_else(cluster: Cluster):
    c = cluster
    c.heal()
    old = settings_for(c, "bkt-gone")
    prefix = scope_prefix(old)
    for key in ("initialize", "config", "members/x"):
        put(c, prefix + key, "{}")
    put(c, prefix.rstrip("/") + "-other/initialize", "{}")  # a scope whose name extends it
    with entered(c.infra.host.netns):
        dcs = Dcs(old)
        assert dcs.keys().initialized and len(dcs.keys().keys) == 3
        cleared = dcs.clear()
        assert len(cleared.keys) == 3
        assert dcs.keys().keys == []
        other = Dcs(settings_for(c, "bkt-gone-other"))
        assert other.keys().initialized  # untouched
        other.clear()
        # The running cluster's keys are still there.
        assert Dcs(settings_for(c, c.settings["cluster"]["scope"])).keys().initialized
    assert by_hand(old) == f"etcdctl del --prefix {prefix}"
    assert c.wait_healthy(60)
