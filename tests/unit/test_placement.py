"""Placement in the relay tree (pure) and the in-memory registry."""

from __future__ import annotations

import pytest

from webrtc_cast.sfu_tree.placement import (
    BadReport,
    NodeLoad,
    choose_parent,
    choose_viewer_node,
    descendants,
)
from webrtc_cast.sfu_tree.registry import MemoryRegistry
from webrtc_cast.sfu_tree.tree import LoadMeter

NOW = 1_000_000.0
TTL = 3.0


def node(id: str, depth: int = 1, viewers: int = 0, max_viewers: int = 100, **kw) -> NodeLoad:  # noqa: A002
    kw.setdefault("root", "o")
    kw.setdefault("reported_at", NOW)
    kw.setdefault("streams", ("s",))
    return NodeLoad(id=id, url=f"http://{id}:8080", depth=depth, viewers=viewers, max_viewers=max_viewers, **kw)


ORIGIN = node("o", depth=0, max_viewers=10, parent=None)


def test_shallowest_node_with_headroom_serves_first():
    nodes = [ORIGIN, node("a"), node("b"), node("c", depth=2, parent="http://a:8080")]
    assert choose_viewer_node(nodes, "s", now=NOW, ttl=TTL).id == "o"
    full_origin = node("o", depth=0, viewers=10, max_viewers=10)
    assert choose_viewer_node([full_origin, *nodes[1:]], "s", now=NOW, ttl=TTL).id == "a"


def test_least_loaded_at_the_same_depth():
    nodes = [node("o", depth=0, max_viewers=0), node("a", viewers=50), node("b", viewers=20)]
    assert choose_viewer_node(nodes, "s", now=NOW, ttl=TTL).id == "b"


def test_egress_and_cpu_limits_are_headroom_too():
    nodes = [
        node("o", depth=0, max_viewers=0),
        node("a", viewers=10, egress_bps=9.5e6, max_egress_bps=10e6),  # one more viewer (~1 Mbit/s) does not fit
        node("b", viewers=50, cpu=0.95, max_cpu=0.9),
        node("c", depth=2, viewers=90),
    ]
    assert choose_viewer_node(nodes, "s", now=NOW, ttl=TTL).id == "c"


def test_pending_redirects_spread_a_burst_between_reports():
    nodes = [node("o", depth=0, max_viewers=0), node("a", viewers=10), node("b", viewers=12)]
    assert choose_viewer_node(nodes, "s", now=NOW, ttl=TTL, pending={"a": 5}).id == "b"
    assert choose_viewer_node(nodes, "s", now=NOW, ttl=TTL, pending={"a": 90}).id == "b"
    assert choose_viewer_node(nodes, "s", now=NOW, ttl=TTL, pending={"a": 90, "b": 88}) is None


def test_locality_label_is_preferred_over_depth_and_load():
    nodes = [ORIGIN, node("a", viewers=50, locality="eu"), node("b", locality="us")]
    assert choose_viewer_node(nodes, "s", now=NOW, ttl=TTL, locality="eu").id == "a"
    assert choose_viewer_node(nodes, "s", now=NOW, ttl=TTL, locality="mars").id == "o"


def test_stale_avoided_and_full_nodes_are_skipped_and_a_full_tree_is_none():
    stale = node("a", reported_at=NOW - TTL - 0.1)
    nodes = [node("o", depth=0, max_viewers=0), stale, node("b"), node("c")]
    assert choose_viewer_node(nodes, "s", now=NOW, ttl=TTL, avoid=["http://b:8080"]).id == "c"
    assert choose_viewer_node(nodes, "s", now=NOW, ttl=TTL, avoid=["b", "c"]) is None
    full = [node("o", depth=0, max_viewers=0), node("a", viewers=100)]
    assert choose_viewer_node(full, "s", now=NOW, ttl=TTL) is None


def test_only_trees_where_the_stream_is_live_serve_it():
    nodes = [
        node("o1", depth=0, root="o1", max_viewers=0, streams=()),
        node("o2", depth=0, root="o2", max_viewers=0, streams=("s",)),
        node("a", root="o1", streams=()),
        node("b", root="o2", viewers=60, streams=()),
    ]
    assert choose_viewer_node(nodes, "s", now=NOW, ttl=TTL, home_root="o1").id == "b"
    # live nowhere: the asking origin's own tree (viewers may wait for the broadcast there)
    assert choose_viewer_node(nodes, "other", now=NOW, ttl=TTL, home_root="o1").id == "a"


def test_a_relay_never_re_attaches_to_itself_its_descendants_or_the_dead_parent():
    nodes = [
        node("o", depth=0),
        node("a"),
        node("b", viewers=90),
        node("c", depth=2, parent="http://a:8080"),
        node("d", depth=3, parent="http://c:8080"),
    ]
    assert descendants(nodes, "http://a:8080") == {"http://c:8080", "http://d:8080"}
    # c's parent a died: not a, not d (its own child), not c itself; the origin is shallowest
    assert choose_parent(nodes, child_url="http://c:8080", now=NOW, ttl=TTL, avoid=["http://a:8080"]).id == "o"
    assert choose_parent(nodes[1:], child_url="http://c:8080", now=NOW, ttl=TTL, avoid=["http://a:8080"]).id == "b"
    assert choose_parent(nodes, child_url="http://a:8080", now=NOW, ttl=TTL, avoid=["http://o:8080"]).id == "b"


def test_reports_from_the_network_are_validated():
    good = {"id": "n1", "url": "http://10.0.0.2:8080/", "depth": 1, "viewers": 3, "max_viewers": 10,
            "egress_bps": 1.5e6, "streams": ["s"], "parent": "http://10.0.0.1:8080"}
    load = NodeLoad.from_mapping(good, reported_at=5.0)
    assert (load.url, load.streams, load.reported_at) == ("http://10.0.0.2:8080", ("s",), 5.0)
    for bad in (
        [], {"url": "http://x"}, {**good, "url": "javascript:alert(1)"}, {**good, "viewers": -1},
        {**good, "depth": True}, {**good, "streams": "s"}, {**good, "id": "x" * 65}, {**good, "cpu": "1"},
        {**good, "url": "http://a b"}, {**good, "locality": "\x00"},
    ):
        with pytest.raises(BadReport):
            NodeLoad.from_mapping(bad)


def test_load_meter_rates():
    m = LoadMeter()
    m.sample(10.0, 0, 1.0)
    m.sample(12.0, 1_000_000, 2.0)
    assert m.egress_bps == 4_000_000 and m.cpu == 0.5


async def test_memory_registry_expires_nodes_that_stop_reporting():
    clock = [NOW]
    reg = MemoryRegistry(ttl=TTL, clock=lambda: clock[0])
    await reg.report(node("a"))
    await reg.report(node("b", reported_at=NOW + 2))
    assert {n.id for n in await reg.nodes()} == {"a", "b"}
    clock[0] = NOW + 3.5
    assert {n.id for n in await reg.nodes()} == {"b"}
    await reg.remove("b")
    assert await reg.nodes() == []


def test_worker_command_lines():
    from webrtc_cast.settings import Settings
    from webrtc_cast.workers import worker_argv, worker_env

    origin = Settings(host="0.0.0.0", port=8080, ice_hosts=["203.0.113.7"], public_url="http://203.0.113.7:8080",
                      view_tokens=["v"], publish_tokens=["p"])
    argv = worker_argv(origin, 2)
    joined = " ".join(argv)
    assert "relay --parent http://127.0.0.1:8080 --host 0.0.0.0 --port 8082" in joined
    assert "--public-url http://203.0.113.7:8082" in joined and "--ice-host 203.0.113.7" in joined
    assert "--parent-token v" in joined and "--origin" not in joined
    assert "p" not in argv  # publish tokens travel in the environment
    assert worker_env(origin)["WEBRTC_CAST_PUBLISH_TOKENS"] == "p"
    relay = Settings(host="10.0.0.2", port=9000, parent_url="http://10.0.0.1:8080")
    joined = " ".join(worker_argv(relay, 1))
    assert "--parent http://10.0.0.2:9000" in joined and "--origin http://10.0.0.1:8080" in joined
