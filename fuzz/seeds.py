#!/usr/bin/env python3
"""Writes the hand-made seed inputs of each fuzz target into corpus/<target>/seed-*.

Seeds give libFuzzer valid inputs of each shape to mutate from; the inputs a run finds go to
corpus/<target>/ too (run.sh, then `cargo fuzz cmin` before committing). Run from anywhere."""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def name(dotted):
    out = b""
    for label in dotted.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def query(qname, qtype, edns=None, rd=True, qid=0x1234, do=False, extra=b"", an=0):
    flags = 0x0100 if rd else 0
    ar = 1 if edns is not None else 0
    msg = struct.pack(">HHHHHH", qid, flags, 1, an, 0, ar)
    msg += name(qname) + struct.pack(">HH", qtype, 1) + extra
    if edns is not None:
        msg += b"\0" + struct.pack(">HHIH", 41, edns, 0x8000 if do else 0, 0)
    return msg


A, NS, CNAME, SOA, AAAA, SRV, ANY, AXFR = 1, 2, 5, 6, 28, 33, 255, 252
dns = {
    "a": query("web.service.cairn.", A),
    "aaaa": query("web.service.cairn.", AAAA, qid=0x1235),
    "srv-edns": query("web.service.cairn.", SRV, edns=4096, do=True),
    "srv-tcp": query("_web._tcp.service.cairn.", SRV, qid=0x0001),
    "tag": query("v1.web.service.cairn.", A, edns=1232),
    "rfc2782-tag": query("_web._v6.service.cairn.", SRV),
    "cname": query("db.service.cairn.", A),
    "big-udp": query("big.service.cairn.", SRV),
    "big-tcp": query("big.service.cairn.", SRV, qid=0x4321),
    "fail-open": query("sick.service.cairn.", A),
    "addr4": query("0a000001.addr.cairn.", A),
    "addr6": query("20010db8000000000000000000000001.addr.cairn.", AAAA),
    "node": query("node-1.node.cairn.", A),
    "node-noaddr": query("node-3.node.cairn.", A),
    "soa": query("cairn.", SOA, edns=512),
    "ns": query("cairn.", NS, qid=0x0003),
    "any": query("web.service.cairn.", ANY),
    "axfr": query("cairn.", AXFR),
    "nxdomain": query("nope.service.cairn.", A, edns=1232),
    "outside": query("example.com.", A),
    # The longest name there is: 255 bytes in wire form.
    "longest-name": query(".".join(["a" * 63] * 3 + ["b" * 61]) + ".", A, edns=1232),
    "mixed-case": query("WeB.SeRvIcE.CaIrN.", A),
    "edns-v1": query("web.service.cairn.", A, edns=1232)[:-6] + b"\x01\x00\x00\x00\x00\x00",
    "answer-record": query("web.service.cairn.", A, an=1,
                           extra=b"\xc0\x0c" + struct.pack(">HHIH", A, 1, 5, 4) + b"\x0a\0\0\x01"),
}

registration = {
    "minimal": {"address": "10.0.0.7", "port": 8080},
    "full": {
        "address": "10.0.0.7", "port": 8080, "tags": ["v1", "primary"],
        "meta": {"version": "1.2.3"}, "weight": 10,
        "checks": [
            {"kind": "http", "url": "http://10.0.0.7:8080/health", "method": "GET",
             "headers": {"Authorization": "Bearer x"}, "interval": "10s", "timeout": "2s",
             "rise": 2, "fall": 3, "initial_status": "passing", "deregister_after": "1m"},
            {"kind": "tcp", "target": "10.0.0.7:5432", "interval": "1.5s"},
            {"kind": "ttl", "ttl": "30s", "id": "heartbeat"},
        ],
    },
    "ipv6": {"address": "2001:db8::7", "port": 443, "checks": [{"kind": "tcp"}]},
    "host": {"address": "db.example.com", "port": 5432, "checks": [{"kind": "http", "url": "https://db.example.com/"}]},
    "durations": {"address": "10.0.0.8", "port": 1, "checks": [
        {"kind": "http", "url": "http://x/", "interval": "1h30m", "timeout": "250ms"},
        {"kind": "ttl", "ttl": "1d"}]},
}

consul = {
    "minimal": {"Name": "web", "Address": "10.0.0.7", "Port": 8080},
    "full": {
        "ID": "web-1", "Name": "Web", "Address": "10.0.0.7", "Port": 8080, "Tags": ["v1"],
        "Meta": {"version": "1"}, "Weights": {"Passing": 3, "Warning": 1},
        "Check": {"HTTP": "http://10.0.0.7:8080/health", "Interval": "10s", "Timeout": "1s",
                  "Header": {"X-Token": ["a"]}, "Method": "HEAD", "TLSSkipVerify": True,
                  "DeregisterCriticalServiceAfter": "90m", "SuccessBeforePassing": 2,
                  "FailuresBeforeCritical": 0, "Status": "passing"},
    },
    "snake": {"name": "db", "id": "db-1", "address": "db.example.com", "port": 5432,
              "checks": [{"tcp": "db.example.com:5432", "interval": 5000000000},
                         {"ttl": "15s", "check_id": "hb"}]},
    "unsupported": {"Name": "x", "Address": "10.0.0.1", "Port": 1, "Check": {"Args": ["true"]}},
}


def instance(iid, address="10.0.0.1", checks=()):
    return {"id": iid, "address": address, "port": 80, "tags": ["v1"], "meta": {"k": "v"},
            "weight": 1, "checks": list(checks)}


TTL_CHECK = {"id": "ttl", "kind": {"kind": "ttl", "ttl_ms": 10000}, "interval_ms": 10000,
             "timeout_ms": 5000, "rise": 1, "fall": 1, "initial_status": "critical"}

ops = {
    "register": {"op": "register", "service": "web", "instance": instance("web-2")},
    "register-checks": {"op": "register", "service": "web",
                        "instance": instance("web-1", checks=[TTL_CHECK])},
    "deregister": {"op": "deregister", "service": "web", "id": "web-1"},
    "settings": {"op": "set_settings", "service": "web", "settings": {"fail_open": True, "dns_ttl_s": 30}},
    "check-status": {"op": "set_check_status", "service": "web", "id": "web-1", "check": "ttl",
                     "status": "passing", "output": "ok"},
    "maintenance": {"op": "set_maintenance", "service": "web", "id": "web-1", "reason": "upgrade"},
    "health": {"op": "set_health", "service": "web", "id": "web-1", "status": "warning", "output": "slow"},
    "policy": {"op": "acl_set_policy", "policy": {"name": "web", "description": "", "rules": {"service": {"web": "write"}}}},
    "token": {"op": "acl_set_token", "token": {"accessor": "a-1", "secret_hash": "00" * 32,
                                               "description": "", "policies": ["web"], "ttl_ms": 60000}},
    "delete-token": {"op": "acl_delete_token", "accessor": "a-1"},
}

rpc = {}
for k, op in ops.items():
    write = dict(op)
    op_name = write.pop("op")
    rpc[f"forward-{k}"] = b"\0" + json.dumps({"write": dict(op=op_name, **write, by="a-1")}).encode()
rpc["forward-join"] = b"\0" + json.dumps({"join": {"id": 4, "rpc_addr": "10.0.0.4:7001"}}).encode()
rpc["forward-remove"] = b"\0" + json.dumps({"remove": {"id": 4}}).encode()
vote = {"vote": {"leader_id": {"term": 2, "node_id": 1}, "committed": False},
        "last_log_id": {"leader_id": {"term": 1, "node_id": 1}, "index": 7}}
rpc["vote"] = b"\2" + json.dumps(vote).encode()
entry = {"log_id": {"leader_id": {"term": 2, "node_id": 1}, "index": 8},
         "payload": {"Normal": {"time_ms": 5000, "ops": list(ops.values())}}}
blank = {"log_id": {"leader_id": {"term": 2, "node_id": 1}, "index": 9}, "payload": "Blank"}
append = {"vote": vote["vote"], "prev_log_id": vote["last_log_id"], "entries": [entry, blank],
          "leader_commit": {"leader_id": {"term": 2, "node_id": 1}, "index": 7}}
rpc["append"] = b"\1" + json.dumps(append).encode()
chunk = {"vote": vote["vote"], "meta": {"last_log_id": vote["last_log_id"],
                                        "last_membership": {"log_id": None, "membership": {"configs": [[1]], "nodes": {"1": {"rpc_addr": "a:1"}}}},
                                        "snapshot_id": "1-1-7"},
         "offset": 0, "data": [123, 125], "done": True}
rpc["snapshot-chunk"] = b"\3" + json.dumps(chunk).encode()
rpc["reply"] = b"\4" + json.dumps({"Ok": {"index": 9, "result": {"result": "ok"}}}).encode()
rpc["reply-error"] = b"\4" + json.dumps({"Err": {"error": "no_leader", "message": "none"}}).encode()

snapshot = {
    "golden": json.load(open(os.path.join(HERE, "../registry/tests/golden/snapshot.json"))),
    "empty": {"format": 1, "list_index": 0, "services": []},
    "one": {"format": 1, "list_index": 3, "services": [
        {"name": "web", "create_index": 2, "modify_index": 3, "instances": {
            "web-1": {"spec": instance("web-1", checks=[TTL_CHECK]),
                      "checks": [{"status": "critical", "output": "", "changed_at_ms": 0}],
                      "custom_health": None, "create_index": 2, "modify_index": 3}}}],
        "settings": {"web": {"fail_open": True, "dns_ttl_s": None, "modify_index": 3}},
        "down_nodes": [2]},
}


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if not isinstance(data, bytes):
        data = json.dumps(data, indent=None).encode()
    with open(os.path.join(d, f"seed-{name}"), "wb") as f:
        f.write(data)


for n, q in dns.items():
    write("dns_query", n, q)
    write("dns_answer", n, q)
for n, b in registration.items():
    write("registration", n, b)
for n, b in consul.items():
    write("consul_registration", n, b)
for n, b in rpc.items():
    write("rpc", n, b)
for n, b in snapshot.items():
    write("snapshot", n, b)
