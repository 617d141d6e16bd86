"""Drives the real nacos-sdk-python client (nacos.NacosClient, HTTP v1 naming)
against running Muster nodes; run by transport-http/tests/nacos.rs.

usage: nacos_flows.py CLIENT_ADDR WRITER_ADDR SERVICE REMOVE_AFTER_S [USERNAME PASSWORD]

The consumer (a NacosClient on CLIENT_ADDR) subscribes twice: with the
client's own polling `subscribe`, and to UDP pushes the way Nacos 1.x Java
clients do (`udpPort` and `clientIP` on /instance/list, a socket that answers
each push with a push-ack), because nacos-sdk-python itself does not open a
push socket. The provider (a NacosClient on WRITER_ADDR, the same node or
another one) registers, heartbeats, modifies and deregisters. Every step
asserts what the consumer sees; any failure exits non-zero with the reason.
"""

import gzip
import json
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request

import nacos
from nacos.listener import SubscribeListener

CLIENT, WRITER, SERVICE, REMOVE_AFTER_S = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
AUTH = {"username": sys.argv[5], "password": sys.argv[6]} if len(sys.argv) > 6 else {}
IP, PORT = "127.0.0.21", 8081


def step(msg):
    print("OK", msg, flush=True)


def wait_for(what, cond, within=15.0):
    deadline = time.time() + within
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


class PushReceiver:
    """A Nacos 1.x push receiver: decodes (gunzips) pushes and acks each."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.pushes = []
        self.lock = threading.Lock()
        self.running = True
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while self.running:
            try:
                data, addr = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            packet = json.loads(data.decode("utf-8"))
            ack = {"type": "push-ack", "lastRefTime": str(packet["lastRefTime"]), "data": ""}
            self.sock.sendto(json.dumps(ack).encode(), addr)
            if packet["type"] == "dom":
                with self.lock:
                    self.pushes.append(json.loads(packet["data"]))

    def latest(self):
        with self.lock:
            return self.pushes[-1] if self.pushes else None

    def subscribe(self, token=None):
        """Lists the service with udpPort and clientIP, as the Java client does."""
        q = {"serviceName": SERVICE, "groupName": "DEFAULT_GROUP", "udpPort": self.port, "clientIP": "127.0.0.1"}
        if token:
            q["accessToken"] = token
        url = "http://%s/nacos/v1/ns/instance/list?%s" % (CLIENT, urllib.parse.urlencode(q))
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["cacheMillis"] == 10000, body
        return body


def hosts_of(answer):
    return [h for h in answer["hosts"] if h["ip"] == IP and h["port"] == PORT]


def main():
    consumer = nacos.NacosClient(CLIENT, **AUTH)
    provider = nacos.NacosClient(WRITER, **AUTH)
    push = PushReceiver()
    token = None
    if AUTH:
        consumer.get_access_token()
        token = consumer.token
    first = push.subscribe(token)
    assert first["name"] == "DEFAULT_GROUP@@" + SERVICE and first["hosts"] == [], first
    events = []
    consumer.subscribe(
        [SubscribeListener(lambda event, slc: events.append((event, slc.instance)), "flows")],
        1,
        service_name=SERVICE,
    )
    time.sleep(1.5)
    step("subscribed by polling and by UDP push")

    meta = {"version": "1.2.3", "zone": "z1"}
    assert provider.add_naming_instance(SERVICE, IP, PORT, "DEFAULT", 2.5, meta, heartbeat_interval=1)
    listed = wait_for("the registration in the consumer's list", lambda: hosts_of(consumer.list_naming_instance(SERVICE)))
    h = listed[0]
    assert h["weight"] == 2.5 and h["metadata"] == meta and h["healthy"] and h["enabled"], h
    assert h["instanceId"] == "%s#%d#DEFAULT#DEFAULT_GROUP@@%s" % (IP, PORT, SERVICE), h
    assert h["serviceName"] == "DEFAULT_GROUP@@" + SERVICE and h["clusterName"] == "DEFAULT", h
    step("registered with metadata and weight; listed")
    pushed = wait_for("a UDP push with the instance", lambda: push.latest() and hosts_of(push.latest()))
    assert pushed[0]["weight"] == 2.5, pushed
    step("UDP push of the registration")
    wait_for("the ADDED event", lambda: any(e == "ADDED" for e, _ in events))
    step("subscriber notified of ADDED")
    got = consumer.get_naming_instance(SERVICE, IP, PORT, "DEFAULT")
    assert got["ip"] == IP and got["port"] == PORT and got["weight"] == 2.5, got

    # Beats keep it healthy well past the removal time.
    deadline = time.time() + REMOVE_AFTER_S + 2
    while time.time() < deadline:
        now = hosts_of(consumer.list_naming_instance(SERVICE, healthy_only=True))
        assert now and now[0]["healthy"], "instance lost or unhealthy while beating: %s" % now
        time.sleep(0.5)
    step("heartbeats kept it healthy past the removal time")

    assert provider.modify_naming_instance(SERVICE, IP, PORT, "DEFAULT", weight=5.0, metadata={"version": "1.2.4"})
    wait_for("the new weight in the list",
             lambda: [h for h in hosts_of(consumer.list_naming_instance(SERVICE)) if h["weight"] == 5.0])
    wait_for("a UDP push with the new weight", lambda: [h for h in hosts_of(push.latest()) if h["weight"] == 5.0])
    wait_for("the MODIFIED event", lambda: any(e == "MODIFIED" and i["weight"] == 5.0 for e, i in events))
    step("modify changed the weight; pushed and notified")

    # Keep the push subscription fresh, as the Java client re-lists every cacheMillis.
    push.subscribe(token)
    assert provider.remove_naming_instance(SERVICE, IP, PORT, "DEFAULT")
    wait_for("the removal in the list", lambda: not hosts_of(consumer.list_naming_instance(SERVICE)))
    wait_for("a UDP push without the instance", lambda: push.latest() is not None and not hosts_of(push.latest()))
    wait_for("the DELETED event", lambda: any(e == "DELETED" for e, _ in events))
    step("deregistered; removal listed, pushed and notified")

    # A beat that carries the instance registers it again (the client's
    # answer to a server that lost it).
    answer = provider.send_heartbeat(SERVICE, IP, PORT, "DEFAULT", 1.5, {"k": "v"})
    assert answer["code"] == 10200 and answer["clientBeatInterval"] > 0, answer
    wait_for("the re-registration by beat", lambda: hosts_of(consumer.list_naming_instance(SERVICE)))
    assert provider.remove_naming_instance(SERVICE, IP, PORT, "DEFAULT")
    step("a beat with the instance re-registered it")
    consumer.stop_subscribe()
    push.running = False
    step("done")


if __name__ == "__main__":
    main()
