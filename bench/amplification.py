#!/usr/bin/env python3
"""DNS amplification of a Cairn node: bytes out / bytes in over UDP, for the query that gets the
largest in-zone answer and for relayed ones, with response rate limiting (RRL) off and on.

    flock /tmp/cairn-build.lock python3 bench/amplification.py --cairn-bin target/release/cairn

Everything runs on 127.0.0.1 and stops by itself. The tool starts
  * a stand-in upstream resolver (in this process) with two names: `fits.example.` answers with
    as many A records as the query's advertised UDP size allows (512 bytes without EDNS), as a
    well-behaved upstream with a large record set does; `huge.example.` always answers with
    about 4000 bytes, as a careless or hostile upstream may;
  * a Cairn node (`cairn agent --bootstrap`, port 0 listeners, a temporary data folder) with
    --recursors pointing at it, and registers `big` with --instances instances, so that
    `big.service.cairn. SRV` with EDNS 1232 is the largest answer the zone gives over UDP
    (every SRV brings its target's address in the additional section; ANY is not answered).
Each query is sent once (the single answer's factor), then from one socket at --flood-rate
queries a second for --flood-seconds, once with RRL off and once with
`--dns-rrl-rate R --dns-rrl-slip S`: the flood factor is the bytes of every answer that came
back over the bytes of every query sent.

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

UPSTREAM_HUGE = 4000


def build_query(qid: int, name: str, qtype: int, edns: int | None) -> bytes:
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    qname = b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".")) + b"\0"
    msg = header + qname + struct.pack(">HH", qtype, 1)
    if edns:
        msg += b"\0" + struct.pack(">HHIH", 41, edns, 0, 0)
    return msg


def question_end(msg: bytes) -> int:
    i = 12
    while msg[i] != 0:
        i += msg[i] + 1
    return i + 5


def advertised(msg: bytes) -> int:
    """The UDP size a query advertises: its OPT's class, else 512."""
    end = question_end(msg)
    if len(msg) >= end + 11 and msg[end] == 0 and msg[end + 1 : end + 3] == b"\x00\x29":
        return max(512, struct.unpack(">H", msg[end + 3 : end + 5])[0])
    return 512


def upstream_answer(query: bytes) -> bytes:
    end = question_end(query)
    qid = struct.unpack(">H", query[:2])[0]
    name = query[12:end - 4].lower()
    size = UPSTREAM_HUGE if b"huge" in name else min(advertised(query), UPSTREAM_HUGE)
    question = query[12:end]
    count = max(0, (size - 12 - len(question)) // 16)
    # A records owned by the question name (a pointer to offset 12): 16 bytes each.
    records = b"".join(
        b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([198, 51, i // 256, i % 256])
        for i in range(count)
    )
    header = struct.pack(">HHHHHH", qid, 0x8180, 1, count, 0, 0)
    return header + question + records


def serve_upstream(sock: socket.socket, stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data, peer = sock.recvfrom(4096)
        except socket.timeout:
            continue
        except OSError:
            return
        try:
            sock.sendto(upstream_answer(data), peer)
        except (IndexError, struct.error, OSError):
            continue


class Node:
    """A `cairn agent` on port 0 listeners; killed by stop()."""

    def __init__(self, binary: str, data_dir: str, extra: list[str]):
        log = open(os.path.join(data_dir, "cairn.log"), "ab")
        self.proc = subprocess.Popen(
            [binary, "agent", "--node-id", "1", "--data-dir", os.path.join(data_dir, "data"),
             "--bootstrap", "--http-addr", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0",
             "--dns-addr", "127.0.0.1:0", *extra],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        self.http = self.dns = None
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise SystemExit("cairn exited before listening; see " + log.name)
            m = re.match(r"cairn listening node_id=\d+ http=(\S+) dns=(\S+)", line)
            if m:
                self.http, dns = m.group(1), m.group(2)
                host, port = dns.rsplit(":", 1)
                self.dns = (host, int(port))
                break
        if self.dns is None:
            self.stop()
            raise SystemExit("cairn printed no listening line within 30 s")
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.http}/v1/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit("cairn was not ready within 30 s")

    def put(self, path: str, body: dict) -> None:
        req = urllib.request.Request(f"http://{self.http}{path}", data=json.dumps(body).encode(),
                                     method="PUT", headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200, r.status

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def once(server: tuple[str, int], query: bytes) -> tuple[int, bool]:
    """Bytes of the answer to `query`, and whether it came truncated (TC)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(query, server)
        data = s.recv(65535)
        return len(data), bool(data[2] & 0x02)


def flood(server: tuple[str, int], query: bytes, rate: int, seconds: float) -> dict:
    """Sends `query` `rate` times a second for `seconds` from one socket, reading concurrently."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("127.0.0.1", 0))
    received = {"bytes": 0, "answers": 0, "truncated": 0}
    done = threading.Event()

    def reader() -> None:
        s.settimeout(0.5)
        while True:
            try:
                data = s.recv(65535)
            except socket.timeout:
                if done.is_set():
                    return
                continue
            received["bytes"] += len(data)
            received["answers"] += 1
            received["truncated"] += bool(data[2] & 0x02)

    t = threading.Thread(target=reader)
    t.start()
    count = int(rate * seconds)
    sent = 0
    start = time.monotonic()
    body = bytearray(query)
    while sent < count:
        # Paced, so that neither the node nor the stand-in upstream falls behind.
        ahead = start + sent / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        body[0:2] = struct.pack(">H", sent & 0xFFFF)
        s.sendto(body, server)
        sent += 1
    elapsed = time.monotonic() - start
    done.set()
    t.join()
    s.close()
    return {"sent": sent, "bytes_in": sent * len(query), "seconds": elapsed, **received}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cairn-bin", required=True)
    ap.add_argument("--instances", type=int, default=60)
    ap.add_argument("--flood-rate", type=int, default=2000, help="queries a second [2000]")
    ap.add_argument("--flood-seconds", type=float, default=5.0, help="[5]")
    ap.add_argument("--rrl-rate", type=int, default=100)
    ap.add_argument("--rrl-slip", type=int, default=1)
    args = ap.parse_args()

    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", 0))
    stop = threading.Event()
    ut = threading.Thread(target=serve_upstream, args=(upstream, stop), daemon=True)
    ut.start()
    recursors = "127.0.0.1:%d" % upstream.getsockname()[1]

    cases = [
        ("in-zone: `big.service.cairn.` SRV, EDNS 1232", "big.service.cairn.", 33, 1232),
        ("in-zone: the same, no EDNS", "big.service.cairn.", 33, None),
        ("relayed: an answer that fits (EDNS 1232)", "fits.example.", 1, 1232),
        ("relayed: upstream answers 4000 B to EDNS 4096", "fits.example.", 1, 4096),
        ("relayed: upstream answers 4000 B, no EDNS", "huge.example.", 1, None),
    ]
    modes = [("off", []), (f"rate {args.rrl_rate}, slip {args.rrl_slip}",
                           ["--dns-rrl-rate", str(args.rrl_rate),
                            "--dns-rrl-slip", str(args.rrl_slip)])]
    rows = []
    try:
        for mode, extra in modes:
            with tempfile.TemporaryDirectory(prefix="cairn-amp-") as tmp:
                node = Node(args.cairn_bin, tmp, ["--recursors", recursors, *extra])
                try:
                    for i in range(args.instances):
                        node.put(f"/v1/services/big/instances/b{i}",
                                 {"address": f"10.9.{i // 250}.{i % 250 + 1}", "port": 9000})
                    for label, name, qtype, edns in cases:
                        q = build_query(0x4242, name, qtype, edns)
                        time.sleep(1.1)  # a full bucket for each case
                        size, tc = once(node.dns, q)
                        time.sleep(1.1)
                        f = flood(node.dns, q, args.flood_rate, args.flood_seconds)
                        rows.append((mode, label, len(q), size, tc, f))
                        print(f"[amplification] RRL {mode}: {label}: {len(q)} -> {size} B"
                              f"{' TC' if tc else ''}; flood {f}", file=sys.stderr)
                finally:
                    node.stop()
    finally:
        stop.set()

    print("| RRL | query | query B | answer B | factor | flood: answers / sent | flood factor |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for mode, label, qlen, size, tc, f in rows:
        factor = size / qlen
        ffactor = f["bytes"] / f["bytes_in"] if f["bytes_in"] else 0
        shown = f"{size}{' (TC)' if tc else ''}"
        answers = f"{f['answers']} / {f['sent']}"
        if f["truncated"]:
            answers += f" ({f['truncated']} TC)"
        print(f"| {mode} | {label} | {qlen} | {shown} | {factor:.1f} | {answers} | {ffactor:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
