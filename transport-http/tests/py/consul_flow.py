"""The py-consul flow against Muster nodes (driven by transport-http/tests/consul.rs).

usage: consul_flow.py NAME HOST:PORT [HOST:PORT ...]

Registers a service with a TTL check through the first node, passes it, finds it
through /v1/health/service with `passing` on the last node, follows a change
(made on another node) through a blocking query, sees it go critical when the
TTL lapses, warns, and deregisters it through another node. Every wait is
bounded; any failed expectation exits non-zero with a message. Prints one JSON
line of what it saw at the end.
"""

import json
import sys
import threading
import time

import consul


def client(addr):
    host, port = addr.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port))


def expect(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def wait_for(what, f, within=10.0):
    deadline = time.monotonic() + within
    while True:
        value = f()
        if value:
            return value
        expect(time.monotonic() < deadline, f"timed out after {within}s waiting for {what}")
        time.sleep(0.05)


def status_of(entries, service_id):
    for e in entries:
        if e["Service"]["ID"] == service_id:
            return [c["Status"] for c in e["Checks"] if c["ServiceID"] == service_id]
    return None


def main():
    name, addrs = sys.argv[1], sys.argv[2:]
    writer, reader, other = client(addrs[0]), client(addrs[-1]), client(addrs[len(addrs) // 2])
    sid = f"{name}-1"
    check_id = f"service:{sid}"
    seen = {}

    index, entries = reader.health.service(name)
    expect(entries == [] and int(index) > 0, f"an empty service answers [] with an index, got {index} {entries}")

    ok = writer.agent.service.register(
        name,
        service_id=sid,
        address="127.0.0.51",
        port=9051,
        tags=["v1", "drive"],
        meta={"version": "1.2.3", "zone": "z1"},
        check=consul.Check.ttl("2s"),
        weights={"Passing": 7, "Warning": 1},
    )
    expect(ok is True, "register answers 200")

    # Registered with a TTL check: critical until the first pass.
    entries = wait_for("the registration on the reader", lambda: reader.health.service(name)[1])
    expect(status_of(entries, sid) == ["critical"], f"a new TTL check is critical, got {entries}")
    expect(reader.health.service(name, passing=True)[1] == [], "a critical service is not passing")

    expect(writer.agent.check.ttl_pass(check_id, notes="alive") is True, "pass answers 200")
    entries = wait_for("a passing instance", lambda: reader.health.service(name, passing=True)[1])
    e = entries[0]
    svc = e["Service"]
    expect(svc["ID"] == sid and svc["Service"] == name, f"ID and name round-trip: {svc}")
    expect(svc["Tags"] == ["v1", "drive"], f"tags round-trip: {svc['Tags']}")
    expect(svc["Meta"] == {"version": "1.2.3", "zone": "z1"}, f"Meta round-trips: {svc['Meta']}")
    expect((svc["Address"], svc["Port"]) == ("127.0.0.51", 9051), f"address and port: {svc}")
    expect(svc["Weights"]["Passing"] == 7, f"weights: {svc['Weights']}")
    expect(e["Node"]["Node"] and e["Node"]["Datacenter"] == "dc1", f"a synthesized Node: {e['Node']}")
    expect([c["CheckID"] for c in e["Checks"]] == ["serfHealth", check_id], f"checks: {e['Checks']}")
    expect(reader.health.service(name, tag="v1", passing=True)[1] != [], "tag filter keeps a tagged instance")
    expect(reader.health.service(name, tag="nope")[1] == [], "tag filter drops an untagged instance")
    expect(reader.health.service(name, dc="dc1")[1] != [], "dc=dc1 is Muster's datacenter")

    # A blocking query on the reader follows a fail made on another node.
    index, entries = reader.health.service(name)
    beat_stop = threading.Event()

    def fail_later():
        time.sleep(0.5)
        other.agent.check.ttl_fail(check_id, notes="broken")

    t = threading.Thread(target=fail_later)
    start = time.monotonic()
    t.start()
    new_index, entries = reader.health.service(name, index=index, wait="20s")
    took = time.monotonic() - start
    t.join()
    expect(status_of(entries, sid) == ["critical"], f"the blocking query sees the fail: {entries}")
    expect(int(new_index) > int(index), f"the index rose: {index} -> {new_index}")
    expect(took < 10, f"the blocking query returned on the change, took {took:.1f}s")
    seen["blocking_query_s"] = round(took, 2)

    # A blocking query without a change returns after its wait with the same index.
    index, _ = reader.health.service(name)
    start = time.monotonic()
    same_index, _ = reader.health.service(name, index=index, wait="1s")
    expect(same_index == index, f"no change: the index stays {index}, got {same_index}")
    expect(time.monotonic() - start >= 0.9, "a blocking query without a change waits")

    # Passes keep it passing; silence longer than the TTL makes it critical.
    def beat():
        while not beat_stop.is_set():
            writer.agent.check.ttl_pass(check_id)
            beat_stop.wait(0.5)

    beater = threading.Thread(target=beat)
    beater.start()
    wait_for("passing again", lambda: reader.health.service(name, passing=True)[1])
    time.sleep(3)
    expect(reader.health.service(name, passing=True)[1] != [], "passes every 0.5s keep a 2s TTL passing")
    beat_stop.set()
    beater.join()
    lapsed = time.monotonic()
    wait_for("the TTL to lapse", lambda: reader.health.service(name, passing=True)[1] == [], within=15)
    seen["critical_after_s"] = round(time.monotonic() - lapsed, 2)
    expect(status_of(reader.health.service(name)[1], sid) == ["critical"], "a lapsed TTL is critical")

    # Warning: alive, not passing.
    expect(writer.agent.check.ttl_warn(check_id, notes="slow") is True, "warn answers 200")
    wait_for("warning", lambda: status_of(reader.health.service(name)[1], sid) == ["warning"])
    expect(reader.health.service(name, passing=True)[1] == [], "a warning is not passing")
    writer.agent.check.ttl_pass(check_id)
    wait_for("passing after the warning", lambda: reader.health.service(name, passing=True)[1])

    # The catalog and agent reads.
    _, services = reader.catalog.services()
    expect(sorted(services.get(name, [])) == ["drive", "v1"], f"catalog services: {services}")
    _, nodes = reader.catalog.service(name)
    expect(nodes and nodes[0]["ServiceID"] == sid and nodes[0]["ServicePort"] == 9051, f"catalog service: {nodes}")
    expect(nodes[0]["ServiceMeta"] == {"version": "1.2.3", "zone": "z1"}, "catalog ServiceMeta")
    expect(sid in writer.agent.services(), "agent services lists the registration")
    expect(check_id in writer.agent.checks(), "agent checks lists its check")
    expect(reader.agent.self()["Config"]["Datacenter"] == "dc1", "agent self names the datacenter")
    expect(reader.status.leader(), "a leader")
    peers = reader.status.peers()
    expect(len(peers) == len(addrs), f"peers: {peers}")
    _, checks = reader.health.checks(name)
    expect([c["CheckID"] for c in checks] == [check_id], f"health checks: {checks}")
    _, cnodes = reader.catalog.nodes()
    expect(any(n["Address"] == "127.0.0.51" for n in cnodes), f"catalog nodes: {cnodes}")

    # Unknown IDs are refused as Consul refuses them; nothing changes.
    expect(writer.agent.service.deregister("no-such-id") is False, "deregistering an unknown ID answers 404")
    expect(writer.agent.check.ttl_pass("service:no-such-id") is False, "passing an unknown check answers 404")
    expect(reader.health.service(name, passing=True)[1] != [], "refused calls changed nothing")

    # Deregistered through another node: gone everywhere.
    expect(other.agent.service.deregister(sid) is True, "deregister answers 200")
    for c in (writer, reader, other):
        wait_for("the deregistration everywhere", lambda c=c: c.health.service(name)[1] == [])
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
