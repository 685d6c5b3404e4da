#!/usr/bin/env python3
"""Helper for bench/reads.sh: seeds the servers, runs the watch fan-out, records wrk runs and
writes the Markdown report. Standard library only.

Subcommands
  seed-cairn  register N instances of one service on a Cairn node, check GET returns them all.
  seed-etcd   put N keys under a prefix in etcd (JSON gateway), check a serializable range
              returns them all; writes the range request body that wrk sends.
  fanout      one fan-out run: W blocking GETs on one service, one registration, time until
              every watcher has its response; RSS of the node before and with W waiting.
  record-wrk  parse one wrk output (the BENCH_RESULT line of reads.lua), append it to a runs file.
  report      medians over the runs, print the Markdown section, replace it in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import re
import resource
import statistics
import sys
import time
from pathlib import Path

# Run as a script from any directory: find benchlib.py next to this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

START, END = benchlib.markers("reads")


def log(msg: str) -> None:
    print(f"[reads {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fail(msg: str) -> int:
    log(f"error: {msg}")
    return 1


def instance_doc(i: int) -> dict:
    """The registration of instance i (1-based)."""
    return {"address": f"10.0.0.{i}", "port": 8080}


def etcd_record(service: str, i: int) -> str:
    """What etcd stores per instance: the record Cairn returns for it in GET /v1/services/<svc>
    (same fields, same order), so both systems hand out comparable bytes per record."""
    d = instance_doc(i)
    rec = {"id": f"{service}-{i}", "address": d["address"], "port": d["port"], "tags": [],
           "meta": {}, "weight": 1, "health": "passing", "checks": [], "create_index": i + 1,
           "modify_index": i + 1}
    return json.dumps(rec, separators=(",", ":"))


def http_req(port: int, method: str, path: str, body: bytes | None = None,
             headers: dict | None = None, timeout: float = 10.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


# --------------------------------------------------------------------------------------------
# Seeding.
# --------------------------------------------------------------------------------------------
def cmd_seed_cairn(a: argparse.Namespace) -> int:
    auth = {"X-Cairn-Token": a.token} if a.token else {}
    for i in range(1, a.count + 1):
        st, _h, body = http_req(a.port, "PUT", f"/v1/services/{a.service}/instances/{a.service}-{i}",
                                json.dumps(instance_doc(i)).encode(),
                                {"Content-Type": "application/json", **auth})
        if st != 200 or b'"index"' not in body:
            return fail(f"PUT instance {i}: HTTP {st} {body[:200]!r}")
    st, h, body = http_req(a.port, "GET", f"/v1/services/{a.service}", headers=auth)
    if st != 200:
        return fail(f"GET /v1/services/{a.service}: HTTP {st} {body[:200]!r}")
    doc = json.loads(body)
    n = len(doc.get("instances", []))
    if n != a.count or "x-cairn-index" not in h:
        return fail(f"GET /v1/services/{a.service} has {n} instances (want {a.count}), "
                    f"X-Cairn-Index {h.get('x-cairn-index')!r}")
    print(json.dumps({"instances": n, "index": int(h["x-cairn-index"]), "body_bytes": len(body),
                      "sample": doc["instances"][0]}))
    return 0


def b64(s: bytes) -> str:
    return base64.b64encode(s).decode()


def prefix_end(p: bytes) -> bytes:
    """etcd's range_end for "every key with prefix p": p with its last byte incremented."""
    b = bytearray(p)
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        return b"\x00"
    b[-1] += 1
    return bytes(b)


def cmd_seed_etcd(a: argparse.Namespace) -> int:
    prefix = a.prefix.encode()
    for i in range(1, a.count + 1):
        body = json.dumps({"key": b64(prefix + f"{a.service}-{i}".encode()),
                           "value": b64(etcd_record(a.service, i).encode())}).encode()
        st, _h, out = http_req(a.port, "POST", "/v3/kv/put", body, {"Content-Type": "application/json"})
        if st != 200 or b'"header"' not in out:
            return fail(f"etcd put {i}: HTTP {st} {out[:200]!r}")
    rng = json.dumps({"key": b64(prefix), "range_end": b64(prefix_end(prefix)), "serializable": True},
                     separators=(",", ":"))
    st, _h, out = http_req(a.port, "POST", "/v3/kv/range", rng.encode(), {"Content-Type": "application/json"})
    if st != 200:
        return fail(f"etcd range: HTTP {st} {out[:200]!r}")
    doc = json.loads(out)
    kvs = doc.get("kvs", [])
    if len(kvs) != a.count or str(doc.get("count")) != str(a.count):
        return fail(f"etcd range returned {len(kvs)} kvs, count {doc.get('count')!r}, want {a.count}")
    want = etcd_record(a.service, 1)
    got = base64.b64decode(kvs[0]["value"]).decode()
    if got != want:
        return fail(f"etcd value reads back as {got!r}, want {want!r}")
    Path(a.body_out).write_text(rng)
    print(json.dumps({"instances": len(kvs), "body_bytes": len(out), "request_body": rng}))
    return 0


# --------------------------------------------------------------------------------------------
# Watch fan-out.
# --------------------------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def server_sockets(port: int) -> tuple[int, int]:
    """(established, with unread data) IPv4 TCP sockets whose local port is `port`, per
    /proc/net/tcp: the node's ends of our connections."""
    want = f":{port:04X}"
    est = unread = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[1].endswith(want) and parts[3] == "01":
                est += 1
                if int(parts[4].split(":")[1], 16):
                    unread += 1
    return est, unread


class Fan:
    """State shared by the watchers: kept in one object so each watcher stays small."""

    def __init__(self, total: int, loop: asyncio.AbstractEventLoop):
        self.total = total
        self.finished = 0
        self.changed = False  # set just before the registration is sent
        self.early = 0        # watchers that returned before that
        self.all_done = loop.create_future()

    def one_done(self) -> None:
        self.finished += 1
        if not self.changed:
            self.early += 1
        if self.finished == self.total and not self.all_done.done():
            self.all_done.set_result(None)


class Watcher(asyncio.Protocol):
    """One blocking GET with Connection: close; the response ends at EOF. Keeps only the first
    bytes (status line and headers) to check them afterwards."""

    __slots__ = ("fan", "req", "head", "t_done", "exc", "transport")

    def __init__(self, fan: Fan, req: bytes):
        self.fan = fan
        self.req = req
        self.head = b""
        self.t_done = 0.0
        self.exc = None
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.req)

    def data_received(self, data):
        if len(self.head) < 2048:
            self.head += data[: 2048 - len(self.head)]

    def eof_received(self):
        return False  # close our side too

    def connection_lost(self, exc):
        self.t_done = time.monotonic()
        self.exc = exc
        self.fan.one_done()


class Writer(asyncio.Protocol):
    """The PUT that makes the change; notes when its response is complete (Content-Length)."""

    def __init__(self, loop):
        self.buf = b""
        self.t_complete = 0.0
        self.done = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        if self.done.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", self.buf[:end])
        if m and len(self.buf) - end - 4 >= int(m.group(1)):
            self.t_complete = time.monotonic()
            self.done.set_result(None)

    def connection_lost(self, exc):
        if not self.done.done():  # no Content-Length: the response ended at EOF
            self.t_complete = time.monotonic()
            self.done.set_result(None)


def parse_head(head: bytes) -> tuple[int, int | None]:
    """(status, X-Cairn-Index or None) of a raw response head."""
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    status = int(m.group(1)) if m else 0
    m = re.search(rb"(?im)^x-cairn-index:\s*(\d+)\s*$", head)
    return status, (int(m.group(1)) if m else None)


def pct(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, round(p / 100 * (len(sorted_vals) - 1))))
    return sorted_vals[k]


async def probe(port: int, path: str, timeout: float) -> tuple[int, float]:
    """One GET on its own connection: (status, seconds)."""
    t0 = time.monotonic()
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        w.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(r.read(), timeout)
    finally:
        w.close()
    st, _ = parse_head(data)
    return st, time.monotonic() - t0


async def fanout(a: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + a.max_seconds
    port, svc, W = a.port, a.service, a.watchers
    res: dict = {"watchers": W, "run": a.run}

    # The current index of the service.
    st, h, body = await loop.run_in_executor(None, lambda: http_req(port, "GET", f"/v1/services/{svc}"))
    if st != 200 or "x-cairn-index" not in h:
        raise SystemExit(f"GET /v1/services/{svc}: HTTP {st} {body[:200]!r}")
    index = int(h["x-cairn-index"])
    res["index_before"] = index
    res["instances_before"] = len(json.loads(body).get("instances", []))

    # A blocking GET at the current index must block: otherwise nothing below means anything.
    st, took = await probe(port, f"/v1/services/{svc}?index={index}&wait=1s", 10)
    if st != 200 or took < 0.8:
        raise SystemExit(
            f"GET /v1/services/{svc}?index={index}&wait=1s answered HTTP {st} after {took * 1000:.0f} ms "
            "instead of blocking for about 1 s: this cairn binary does not implement blocking queries "
            "(built before the feature?); rebuild it")
    res["probe_block_ms"] = round(took * 1000, 1)

    await asyncio.sleep(0.5)
    rss_before = rss_kib(a.pid)
    res["rss_before_kib"] = rss_before

    # Open the watchers, at most `connect_concurrency` connects in flight (the listener's
    # backlog is finite; a dropped SYN costs a 1 s retransmit).
    fan = Fan(W, loop)
    req = (f"GET /v1/services/{svc}?index={index}&wait={a.wait} HTTP/1.1\r\n"
           f"Host: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").encode()
    watchers = [Watcher(fan, req) for _ in range(W)]
    sem = asyncio.Semaphore(a.connect_concurrency)
    connect_errors: list[str] = []

    async def connect(w: Watcher) -> None:
        async with sem:
            for attempt in range(3):
                try:
                    await asyncio.wait_for(loop.create_connection(lambda: w, "127.0.0.1", port), 15)
                    return
                except (OSError, asyncio.TimeoutError) as e:
                    if attempt == 2:
                        connect_errors.append(repr(e))
                    else:
                        await asyncio.sleep(0.1)

    t_open = time.monotonic()
    await asyncio.gather(*(connect(w) for w in watchers))
    t_opened = time.monotonic()
    res["open_s"] = round(t_opened - t_open, 3)
    if connect_errors:
        raise SystemExit(f"{len(connect_errors)} of {W} watchers could not connect, e.g. {connect_errors[0]}")
    log(f"W={W} run {a.run}: {W} blocking GETs sent in {t_opened - t_open:.2f} s; waiting until all are parked")

    # All parked? First from the kernel's side: W established connections on the node's port,
    # none with unread bytes in its receive queue, i.e. the node has accepted every connection
    # and read every request. (Probing with requests of our own here would race the watchers
    # for waiting slots.)
    parked_at = None
    polls = 0
    while time.monotonic() < deadline and fan.early == 0:
        polls += 1
        est, unread = server_sockets(port)
        if est >= W and unread == 0:
            parked_at = time.monotonic()
            break
        await asyncio.sleep(0.1)
    if fan.early:
        bad = next(w for w in watchers if w.t_done)
        raise SystemExit(f"{fan.early} of {W} watchers returned before any change "
                         f"(first response: {bad.head[:300]!r}, error {bad.exc!r})")
    if parked_at is None:
        est, unread = server_sockets(port)
        raise SystemExit(f"after {a.max_seconds:.0f} s the node had accepted {est} of {W} connections, "
                         f"{unread} with an unread request")
    res["parked_s"] = round(parked_at - t_open, 3)
    res["parked_polls"] = polls

    # Settle, then the same from the node's side: it runs with --max-waiting-per-client = W, so
    # one more blocking GET from this address must be refused with 429, which it is exactly
    # when W requests hold a waiting slot. (Were it accepted instead, it would take a slot a
    # watcher needs; that watcher's 429 would then fail the run below.)
    await asyncio.sleep(a.settle)
    st, took = await probe(port, f"/v1/services/{svc}?index={index}&wait=100ms", 10)
    if st != 429:
        raise SystemExit(f"with {W} watchers open, one more blocking GET got HTTP {st} after "
                         f"{took * 1000:.0f} ms, not 429: not every watcher holds a waiting slot "
                         f"(is --max-waiting-per-client {W} set?)")
    res["parked_check"] = "429"

    # The RSS with W waiting (the highest of a few samples), and still no early returns.
    samples = []
    for _ in range(5):
        samples.append(rss_kib(a.pid))
        await asyncio.sleep(0.1)
    rss_waiting = max(samples)
    res["rss_waiting_kib"] = rss_waiting
    res["rss_samples_kib"] = samples
    res["kib_per_watcher"] = round((rss_waiting - rss_before) / W, 3)
    if fan.early:
        raise SystemExit(f"{fan.early} of {W} watchers returned before the change (wait={a.wait} too short?)")

    # The change: one new instance in the service, on a connection opened beforehand.
    writer = Writer(loop)
    await loop.create_connection(lambda: writer, "127.0.0.1", port)
    doc = json.dumps({"address": "10.0.9.9", "port": 9090}).encode()
    put = (f"PUT /v1/services/{svc}/instances/fanout-change-{a.run} HTTP/1.1\r\n"
           f"Host: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(doc)}\r\nConnection: close\r\n\r\n").encode() + doc
    fan.changed = True
    t_sent = time.monotonic()
    writer.transport.write(put)
    await asyncio.wait_for(writer.done, 30)
    t_200 = writer.t_complete
    wst, _ = parse_head(writer.buf)
    if wst != 200:
        raise SystemExit(f"the change (PUT) answered {writer.buf[:300]!r}")
    m = re.search(rb'"index"\s*:\s*(\d+)', writer.buf)
    new_index = int(m.group(1)) if m else None
    res["write_ms"] = round((t_200 - t_sent) * 1000, 3)
    res["write_index"] = new_index

    remaining = max(1.0, deadline - time.monotonic())
    try:
        await asyncio.wait_for(asyncio.shield(fan.all_done), min(remaining, a.return_timeout))
    except asyncio.TimeoutError:
        pass
    t_end = time.monotonic()
    pending = [w for w in watchers if not w.t_done]
    for w in pending:
        if w.transport:
            w.transport.abort()

    done = [w for w in watchers if w.t_done]
    ok, bad_status, bad_index, sample_bad = 0, 0, 0, None
    for w in done:
        st, idx = parse_head(w.head)
        if st != 200:
            bad_status += 1
            sample_bad = sample_bad or w.head[:300]
        elif idx is None or idx <= index:
            bad_index += 1
            sample_bad = sample_bad or w.head[:300]
        else:
            ok += 1
    lat = sorted((w.t_done - t_200) * 1000 for w in done)
    lat_sent = sorted((w.t_done - t_sent) * 1000 for w in done)
    res.update(
        ok=ok, not_returned=len(pending), bad_status=bad_status, bad_index=bad_index,
        sample_bad=sample_bad.decode("latin-1") if sample_bad else None,
        errors=len(pending) + bad_status + bad_index,
        before_write_200=sum(1 for x in lat if x < 0),
        fanout_ms=round(lat[-1], 3) if lat else None,            # last watcher, from the write's 200
        fanout_from_sent_ms=round(lat_sent[-1], 3) if lat_sent else None,
        p50_ms=round(pct(lat, 50), 3) if lat else None,
        p99_ms=round(pct(lat, 99), 3) if lat else None,
        first_ms=round(lat[0], 3) if lat else None,
        waited_for_returns_s=round(t_end - t_sent, 3),
    )
    return res


def cmd_fanout(a: argparse.Namespace) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = a.watchers + 64
    if soft < need:
        if hard < need:
            return fail(f"open-file limit {soft}/{hard} is below the {need} this run needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else hard, hard))
    try:
        res = asyncio.run(fanout(a))
    except SystemExit as e:
        if isinstance(e.code, str):
            return fail(e.code)
        raise
    with open(a.out, "a") as f:
        f.write(json.dumps(res, sort_keys=True) + "\n")
    err = ""
    if res["errors"]:
        err = (f"  ERRORS: {res['not_returned']} not returned, {res['bad_status']} non-200, "
               f"{res['bad_index']} without a newer X-Cairn-Index; sample {res['sample_bad']!r}")
    log(f"W={res['watchers']} run {res['run']}: last watcher {res['fanout_ms']:.1f} ms after the write's 200 "
        f"({res['fanout_from_sent_ms']:.1f} ms after it was sent; p50 {res['p50_ms']:.1f} ms; write "
        f"{res['write_ms']:.1f} ms); {res['kib_per_watcher']:.2f} KiB/watcher "
        f"(RSS {res['rss_before_kib'] / 1024:.1f} -> {res['rss_waiting_kib'] / 1024:.1f} MiB){err}")
    return 0 if res["errors"] == 0 else 1


# --------------------------------------------------------------------------------------------
# wrk runs.
# --------------------------------------------------------------------------------------------
def derive(run: dict) -> dict:
    secs = run["duration_us"] / 1e6
    ok = run["requests"] - run["non2xx"] - run["bad_body"]
    sock = run["connect_errors"] + run["read_errors"] + run["write_errors"] + run["timeouts"]
    run["ok"] = ok
    run["ok_rps"] = ok / secs if secs > 0 else 0.0
    run["errors"] = run["non2xx"] + run["bad_body"] + sock
    return run


def cmd_record_wrk(a: argparse.Namespace) -> int:
    text = Path(a.wrk_output).read_text(errors="replace")
    lines = [l for l in text.splitlines() if l.startswith("BENCH_RESULT ")]
    if len(lines) != 1:
        return fail(f"expected one BENCH_RESULT line in {a.wrk_output}, found {len(lines)}")
    run = json.loads(lines[0][len("BENCH_RESULT "):])
    run.update(system=a.system, connections=a.connections, run=a.run, threads=a.threads, label=a.label)
    derive(run)
    with open(a.runs, "a") as f:
        f.write(json.dumps(run, sort_keys=True) + "\n")
    err = ""
    if run["errors"]:
        err = (f"  ERRORS={run['errors']} (non2xx={run['non2xx']} statuses={run['statuses']} "
               f"bad_body={run['bad_body']} connect={run['connect_errors']} read={run['read_errors']} "
               f"write={run['write_errors']} timeout={run['timeouts']}) sample={run['sample_error']!r}")
    log(f"{a.system:5} c={a.connections:<3} {a.label:>6}: {run['ok_rps']:9.0f} ok req/s  "
        f"p50 {run['lat_p50_us'] / 1000:6.2f} ms  p99 {run['lat_p99_us'] / 1000:6.2f} ms{err}")
    return 0


# --------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------
def load_jsonl(path: str | None) -> list[dict]:
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def fmt_ms(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def fanout_section(runs: list[dict], meta: dict) -> list[str]:
    out = ["### Watch fan-out: W blocking queries on one service, one change", ""]
    if not runs:
        return out + ["_Not run._", ""]
    out += ["| Watchers | Last return after the write's 200, ms (median) | Per run | "
            "After the write was sent, ms | Watcher p50 / p99, ms | Write, ms | Memory per watcher, KiB (median) | "
            "Per run | Node RSS idle → waiting, MiB | Errors |",
            "|---:|---:|---|---:|---|---:|---:|---|---|---:|"]
    goal_lines = []
    for W in sorted({r["watchers"] for r in runs}):
        rs = sorted((r for r in runs if r["watchers"] == W), key=lambda r: r["run"])
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        # Times from the write's 200 are below 0 when watchers were back before it: shown as 0.
        z = lambda v: fmt_ms(max(0.0, v))  # noqa: E731
        f = max(0.0, med("fanout_ms"))
        kib = med("kib_per_watcher")
        out.append(
            f"| {W:,} | {z(f)} | {' / '.join(z(r['fanout_ms']) for r in rs)} | "
            f"{fmt_ms(med('fanout_from_sent_ms'))} | {z(med('p50_ms'))} / {z(med('p99_ms'))} | "
            f"{fmt_ms(med('write_ms'))} | {kib:.1f} | {' / '.join(format(r['kib_per_watcher'], '.1f') for r in rs)} | "
            f"{med('rss_before_kib') / 1024:.1f} → {med('rss_waiting_kib') / 1024:.1f} | "
            f"{sum(r['errors'] for r in rs)} |")
        if W == 10000:
            goal_lines.append(f"Goal: all 10,000 watchers back within 1 s of the change: "
                              f"**{'met' if f < 1000 else 'not met'}** (median {fmt_ms(f)} ms).")
    if not goal_lines:
        goal_lines.append("Goal (< 1 s at 10,000 watchers): not measured in this run "
                          f"(watchers {meta.get('watchers', '?')}).")
    out += ["", *goal_lines, "",
            f"Each run starts a fresh single node (`--bootstrap`, `--max-waiting-per-client W`), registers "
            f"`{meta.get('service', 'web')}` with {meta.get('instances', '10')} instances, and opens W connections from one "
            f"Python asyncio process, each `GET /v1/services/{meta.get('service', 'web')}?index=N&wait={meta.get('wait', '?')}` "
            f"with `Connection: close` at the current index N. Once the node has accepted every connection and read every "
            f"request (no unread bytes in its sockets, per `/proc/net/tcp`), and {meta.get('settle', '?')} s later one "
            f"more blocking GET from the same address is refused with 429 (so all W hold one of the W waiting slots), "
            f"the node's RSS is read and one instance is registered over a connection opened beforehand. The fan-out time runs from "
            f"the moment that PUT's 200 is complete to the moment the last watcher's connection reaches EOF; every watcher "
            f"must answer 200 with an `X-Cairn-Index` above N. Watchers may return before the write's 200 (the change is "
            f"applied before the response is sent, and the client reads whichever socket the kernel reports first), and a time from the 200 below 0 is shown as 0; the fourth column gives the time from sending the PUT. "
            f"Memory per watcher = (VmRSS with W waiting − VmRSS before opening them) / W, of the node process only "
            f"(kernel socket buffers are not in RSS). The client shares the machine's CPUs with the node, and its time to "
            f"read {meta.get('watchers_max', 'W')} responses is part of the figure.", ""]
    return out


def reads_section(runs: list[dict], meta: dict) -> list[str]:
    out = [f"### Reads per second: a service with {meta.get('instances', '10')} instances", ""]
    if not runs:
        return out + ["_Not run._", ""]
    out += ["| System | Conns | Req/s (median) | Req/s per run | p50 ms | p99 ms | Errors |",
            "|---|---:|---:|---|---:|---:|---:|"]
    meds: dict[tuple[str, int], float] = {}
    lat: dict[tuple[str, int], tuple[float, float]] = {}
    conns = sorted({r["connections"] for r in runs})
    labels = {"cairn": "cairn", "cairn-acl": f"cairn, ACLs, {meta.get('acl_tokens_few', '?')} tokens",
              "cairn-acl-many": f"cairn, ACLs, {meta.get('acl_tokens_many', '?')} tokens", "etcd": "etcd"}
    for system in labels:
        for c in conns:
            rs = sorted((r for r in runs if r["system"] == system and r["connections"] == c),
                        key=lambda r: r["run"])
            if not rs:
                continue
            m = statistics.median(r["ok_rps"] for r in rs)
            p50 = statistics.median(r["lat_p50_us"] for r in rs) / 1000
            p99 = statistics.median(r["lat_p99_us"] for r in rs) / 1000
            meds[(system, c)] = m
            lat[(system, c)] = (p50, p99)
            out.append(f"| {labels[system]} | {c} | {m:.0f} | {' / '.join(format(r['ok_rps'], '.0f') for r in rs)} | "
                       f"{fmt_ms(p50)} | {fmt_ms(p99)} | {sum(r['errors'] for r in rs)} |")
    ratio_rows = [c for c in conns if ("cairn", c) in meds and ("etcd", c) in meds]
    if ratio_rows:
        out += ["", "| Conns | Throughput Cairn/etcd | Goal ≥ 5× | p50 etcd/Cairn | p99 etcd/Cairn |",
                "|---:|---:|---|---:|---:|"]
        for c in ratio_rows:
            r = meds[("cairn", c)] / meds[("etcd", c)] if meds[("etcd", c)] else float("inf")
            lc, le = lat[("cairn", c)], lat[("etcd", c)]
            q = lambda e, k: f"{e / k:.2f}×" if k else "n/a"  # noqa: E731
            out.append(f"| {c} | {r:.2f}× | {'met' if r >= 5 else 'not met'} | {q(le[0], lc[0])} | {q(le[1], lc[1])} |")
    acl_stats = {(benchlib.ACL_VARIANTS[i], c): {"rps": meds[(system, c)], "p50_ms": lat[(system, c)][0],
                                                 "p99_ms": lat[(system, c)][1],
                                                 "errors": sum(r["errors"] for r in runs
                                                               if r["system"] == system and r["connections"] == c)}
                 for i, system in enumerate(("cairn", "cairn-acl", "cairn-acl-many"))
                 for c in conns if (system, c) in meds}
    if any(v != "off" for v, _ in acl_stats):
        out += ["", f"#### The cost of ACLs, and {meta.get('acl_tokens_few', '?')} against "
                f"{meta.get('acl_tokens_many', '?')} tokens", "",
                *benchlib.acl_table(acl_stats, {**meta, "acl_cluster": "single node"})]
    out += ["",
            f"Cairn: `GET /v1/services/{meta.get('service', 'web')}` on a single node (`--bootstrap`), answered from "
            f"its local replica (default consistency), {meta.get('cairn_body', '?')} B of JSON per response. "
            f"etcd: a single member, the same {meta.get('instances', '10')} records (each the JSON Cairn returns for "
            f"that instance) under one key prefix, read through the JSON gateway with `POST /v3/kv/range` "
            f"`{{\"key\":…,\"range_end\":…,\"serializable\":true}}`, {meta.get('etcd_body', '?')} B per response "
            f"(keys and values base64). Same wrk, same connections and threads (min(connections, 2)), HTTP/1.1 "
            f"keep-alive, {meta.get('duration', '?')} s per run, runs per row: {meta.get('runs', '?')}, "
            f"{meta.get('warmup', '?')} s unrecorded warm-up per system; the servers run one after the other"
            f"{meta.get('pin_note', '')}. Req/s counts only responses with status 200 and all "
            f"{meta.get('instances', '10')} records in the body; p50/p99 are medians of wrk's per-run percentiles "
            f"(no coordinated-omission correction). Ratios above 1 mean Cairn is better.", ""]
    return out


def build_section(meta: dict, fan: list[dict], reads: list[dict]) -> str:
    cpu = meta.get("cpu", "unknown").strip()
    lines = [
        START,
        "## Blocking queries and watches: fan-out and reads",
        "",
        "_Written by `bench/reads.sh`; do not edit by hand, re-run the script._",
        "",
        f"- Date: {meta.get('date', '?')}",
        f"- Machine: {meta.get('nproc', '?')} CPUs ({cpu}), kernel {meta.get('kernel', '?')}, "
        f"{meta.get('os', '?')}; data dirs on {meta.get('fs', '?')}; load average at start {meta.get('load', '?')}",
        f"- Cairn commit {meta.get('cairn_commit', '?')}, binary `{meta.get('cairn_bin', '?')}` "
        f"({meta.get('cairn_bin_mtime', '?')}), `CAIRN_LOG={meta.get('cairn_log', 'warn')}`",
    ]
    if reads:
        lines.append(f"- etcd {meta.get('etcd_version', '?')} (single member); wrk {meta.get('wrk_version', '?')}")
    if fan:
        lines.append(f"- Fan-out client: Python {meta.get('python', '?')} asyncio, one process; open-file limit "
                     f"{meta.get('nofile', '?')}")
    lines.append(f"- Command: `{meta.get('command', '?')}`")
    if meta.get("under_load"):
        lines.append(f"- **Not an idle machine:** {meta['under_load'].strip()}")
    if meta.get("logs"):
        lines.append(f"- Server logs: {meta['logs']}")
    lines.append("")
    lines += fanout_section(fan, meta)
    lines += reads_section(reads, meta)
    lines += [f"Raw output: `{meta.get('results_dir', '?')}` (not committed).", END]
    return "\n".join(lines)


def cmd_report(a: argparse.Namespace) -> int:
    meta = dict(kv.split("=", 1) for kv in a.meta)
    fan = load_jsonl(a.fanout)
    reads = [derive(r) for r in load_jsonl(a.reads)]
    section = build_section(meta, fan, reads)
    Path(a.section_out).write_text(section + "\n")
    print(section)
    if a.output:
        benchlib.replace_section(Path(a.output), "reads", section)
        log(f"wrote the section to {a.output}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("seed-cairn")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--service", default="web")
    s.add_argument("--count", type=int, default=10)
    s.add_argument("--token", help="X-Cairn-Token for a node with ACLs on")
    s.set_defaults(fn=cmd_seed_cairn)

    s = sub.add_parser("seed-etcd")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--service", default="web")
    s.add_argument("--prefix", required=True)
    s.add_argument("--count", type=int, default=10)
    s.add_argument("--body-out", required=True)
    s.set_defaults(fn=cmd_seed_etcd)

    s = sub.add_parser("fanout")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--pid", type=int, required=True, help="the cairn node, for VmRSS")
    s.add_argument("--service", default="web")
    s.add_argument("--watchers", type=int, required=True)
    s.add_argument("--run", type=int, default=1)
    s.add_argument("--wait", default="300s", help="the watchers' wait= parameter")
    s.add_argument("--settle", type=float, default=2.0)
    s.add_argument("--connect-concurrency", type=int, default=256)
    s.add_argument("--return-timeout", type=float, default=60.0,
                   help="longest wait for the watchers to return after the change")
    s.add_argument("--max-seconds", type=float, default=240.0, help="bound on the whole run")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_fanout)

    s = sub.add_parser("record-wrk")
    s.add_argument("--runs", required=True)
    s.add_argument("--wrk-output", required=True)
    s.add_argument("--system", required=True)
    s.add_argument("--connections", type=int, required=True)
    s.add_argument("--threads", type=int, required=True)
    s.add_argument("--run", type=int, required=True)
    s.add_argument("--label", required=True)
    s.set_defaults(fn=cmd_record_wrk)

    s = sub.add_parser("report")
    s.add_argument("--fanout")
    s.add_argument("--reads")
    s.add_argument("--section-out", required=True)
    s.add_argument("--output")
    s.add_argument("--meta", action="append", default=[])
    s.set_defaults(fn=cmd_report)

    a = p.parse_args()
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
