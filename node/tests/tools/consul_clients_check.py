"""Drives the Consul endpoints Go, .NET and Java clients call with a Python Consul client:
py-consul, or Debian's python3-consul2 when run with Debian's /usr/bin/python3. Both offer only
the older `check/pass|warn|fail` calls for TTL checks (no `check/update`), so those keep the TTL
check alive here.

usage: consul_clients_check.py HTTP_HOST:PORT DNS_HOST:PORT
exits non-zero (with the reason) on any wrong result
"""
import os
import random
import socket
import struct
import sys
import threading
import time

import consul


def dns_a(server, name):
    """The IPv4 addresses of an A query for `name`, over UDP."""
    qid = random.randrange(65536)
    msg = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        msg += bytes([len(label)]) + label.encode()
    msg += b"\x00" + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(msg, server)
        data, _ = s.recvfrom(4096)
    ancount = struct.unpack(">H", data[6:8])[0]
    pos = len(msg)  # the question is echoed as sent

    def skip_name(p):
        while True:
            n = data[p]
            if n == 0:
                return p + 1
            if n & 0xC0 == 0xC0:
                return p + 2
            p += n + 1

    out = []
    for _ in range(ancount):
        pos = skip_name(pos)
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1:
            out.append(socket.inet_ntoa(data[pos:pos + rdlen]))
        pos += rdlen
    return out


def eventually(what, check, timeout=10):
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            sys.exit(f"{what}: not in time")
        time.sleep(0.2)


def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    dns_host, dns_port = sys.argv[2].rsplit(":", 1)
    dns = (dns_host, int(dns_port))
    lib = os.path.dirname(consul.__file__)
    c = consul.Consul(host=host, port=int(port))

    # Members: tools probe them to see that they talk to a live agent.
    members = c.agent.members()
    assert len(members) >= 1 and all(m["Status"] == 1 for m in members), members

    # A service with a TTL check kept alive only by TTL calls: passing, and in DNS.
    assert c.agent.service.register(
        "pay", service_id="pay-1", address="10.0.7.1", port=8443,
        check=consul.Check.ttl("2s"),
    ), "register pay-1"
    assert c.agent.check.ttl_pass("service:pay-1", notes="up"), "ttl_pass"
    eventually("pay in DNS", lambda: dns_a(dns, "pay.service.cairn.") == ["10.0.7.1"])
    until = time.time() + 5
    while time.time() < until:
        assert c.agent.check.ttl_pass("service:pay-1"), "ttl_pass"
        _, checks = c.health.checks("pay")
        assert [k["Status"] for k in checks] == ["passing"], checks
        assert dns_a(dns, "pay.service.cairn.") == ["10.0.7.1"], "left DNS"
        time.sleep(0.5)

    # A check added to the existing service.
    assert c.agent.check.register(
        "pay-ttl", check=consul.Check.ttl("30s"), check_id="pay-ttl", service_id="pay-1"
    ), "agent.check.register"
    # Reads are served by this node's replica, which may apply the write a moment after the
    # leader acknowledged it (Consul's default, stale-allowed reads behave alike).
    checks = eventually("pay-ttl listed", lambda: c.agent.checks().get("pay-ttl"))
    assert checks["ServiceID"] == "pay-1", checks

    # Node views.
    index, node = c.catalog.node("10.0.7.1")
    assert index and node["Services"]["pay-1"]["Service"] == "pay", node
    checks = eventually("health.node", lambda: (lambda r: r[1] if len(r[1]) == 2 else None)(c.health.node("10.0.7.1")))
    assert sorted(k["CheckID"] for k in checks) == ["pay-ttl", "service:pay-1"], checks

    # A blocking read of the service woken by a TTL status change.
    index, _ = c.health.service("pay")
    result = {}

    def watch():
        result["index"], result["nodes"] = c.health.service("pay", index=index, wait="20s")

    t = threading.Thread(target=watch)
    started = time.time()
    t.start()
    time.sleep(0.5)
    assert c.agent.check.ttl_warn("pay-ttl", notes="degraded"), "ttl_warn"
    t.join(25)
    if t.is_alive() or time.time() - started > 15:
        sys.exit("blocking query did not return on the check's change")
    assert int(result["index"]) > int(index), result
    statuses = {k["CheckID"]: k["Status"] for k in result["nodes"][0]["Checks"]}
    assert statuses["pay-ttl"] == "warning", statuses

    # An external service, with the health its registration states, resolves in DNS.
    assert c.catalog.register(
        "saas-db", "10.0.7.9",
        service={"Service": "extdb", "ID": "extdb-1", "Port": 5432},
        check={"CheckID": "extdb-alive", "Status": "passing", "ServiceID": "extdb-1"},
    ), "catalog.register"
    eventually("extdb in DNS", lambda: dns_a(dns, "extdb.service.cairn.") == ["10.0.7.9"])
    assert c.catalog.deregister("10.0.7.9", service_id="extdb-1"), "catalog.deregister"
    eventually("extdb gone from DNS", lambda: dns_a(dns, "extdb.service.cairn.") == [])

    assert c.agent.check.deregister("pay-ttl"), "agent.check.deregister"
    eventually("pay-ttl gone", lambda: "pay-ttl" not in c.agent.checks())
    print(f"{lib}: all checks passed")


if __name__ == "__main__":
    main()
