#!/usr/bin/env python3
"""Helpers for bench/checks.sh (health-check cost and failure detection). Standard library only.

  target        the local HTTP target the checks probe: GET /health/<id> answers 200, or 500
                once /fail/<id> switched that id to failing; /stats and /probes/<id> report
  register      registers instances with one HTTP check each, over many keep-alive connections
  wait-passing  waits until the nodes' /metrics count N passing instances
  measure       CPU and RSS of given pids over a window, from /proc, plus target and Raft counters
  detect        switches instances to failing one at a time and times their removal from the
                DNS A answers of every node
  report        the Markdown section for BENCHMARKS.md, printed and (optionally) written

Every wait has a deadline; nothing here runs unbounded.
"""

import argparse
import asyncio
import http.client
import json
import math
import os
import random
import re
import select
import socket
import struct
import sys
import threading
import time
from pathlib import Path

# Run as a script from any directory: find benchlib.py next to this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

START, END = benchlib.markers("checks")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[checks_tool {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# target


class TargetState:
    def __init__(self) -> None:
        self.failed: dict[bytes, float] = {}  # id -> monotonic time it was switched to failing
        self.probes: dict[bytes, list[float]] = {}  # failing id -> times of probes since
        self.health_ok = 0
        self.health_fail = 0
        self.other = 0
        self.connections = 0  # accepted so far


def http_response(status: int, body: bytes, ctype: bytes = b"text/plain", close: bool = True) -> bytes:
    reason = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error"}.get(status, b"X")
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
        % (status, reason, ctype, len(body), b"Connection: close\r\n" if close else b"")
        + body
    )


# By connection mode: (OK, FAIL) responses.
RESPONSES = {
    True: (http_response(200, b"ok\n"), http_response(500, b"failing\n")),
    False: (http_response(200, b"ok\n", close=False), http_response(500, b"failing\n", close=False)),
}


class TargetProtocol(asyncio.Protocol):
    """Answers GET /health/<id> and the control paths. With `close` (the default) one request
    per connection, answered and closed at once: the server closes first, so TIME_WAIT stays on
    the server side and the prober's ephemeral ports are never short. Without it the connection
    stays open for further requests, as HTTP/1.1 servers do (nginx, Go's net/http, Envoy)."""

    __slots__ = ("transport", "buf", "state", "close")

    def __init__(self, state: TargetState, close: bool) -> None:
        self.state = state
        self.close = close
        self.buf = b""
        self.transport = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.state.connections += 1

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        # Every complete request in the buffer, in order (a client may pipeline).
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            line = buf[: buf.find(b"\r\n")]
            buf = buf[end + 4 :]
            self.transport.write(self.answer(line))
            if self.close:
                self.transport.close()
                return
        if len(buf) > 16384:
            self.transport.close()
            return
        self.buf = buf

    def answer(self, line: bytes) -> bytes:
        parts = line.split(b" ")
        path = parts[1] if len(parts) >= 3 else b""
        st = self.state
        ok, fail = RESPONSES[self.close]
        if path.startswith(b"/health/"):
            hid = path[8:]
            if hid in st.failed:
                st.health_fail += 1
                probes = st.probes.setdefault(hid, [])
                if len(probes) < 64:
                    probes.append(time.monotonic())
                return fail
            st.health_ok += 1
            return ok
        return self.control(path)

    def control(self, path: bytes) -> bytes:
        st = self.state
        st.other += 1
        close = self.close
        if path.startswith(b"/fail/"):
            hid = path[6:]
            now = time.monotonic()
            st.failed[hid] = now
            st.probes[hid] = []
            return http_response(200, json.dumps({"t": now}).encode(), b"application/json", close)
        if path.startswith(b"/ok/"):
            hid = path[4:]
            st.failed.pop(hid, None)
            st.probes.pop(hid, None)
            return http_response(200, b"{}", b"application/json", close)
        if path.startswith(b"/probes/"):
            hid = path[8:]
            body = {"failed_at": st.failed.get(hid), "probes": st.probes.get(hid, [])}
            return http_response(200, json.dumps(body).encode(), b"application/json", close)
        if path == b"/stats":
            body = {
                "health_ok": st.health_ok,
                "health_fail": st.health_fail,
                "other": st.other,
                "connections": st.connections,
                "failed": len(st.failed),
                "t": time.monotonic(),
            }
            return http_response(200, json.dumps(body).encode(), b"application/json", close)
        return http_response(404, b"not found\n", close=close)


async def target_main(port: int, max_seconds: float, keep_alive: bool) -> None:
    loop = asyncio.get_running_loop()
    state = TargetState()
    server = await loop.create_server(
        lambda: TargetProtocol(state, not keep_alive), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    mode = "keep-alive" if keep_alive else "close"
    print(f"target listening 127.0.0.1:{port} pid={os.getpid()} connections={mode}", flush=True)
    # Bounded: the script stops the target long before this; it only guards against orphans.
    try:
        await asyncio.sleep(max_seconds)
    finally:
        server.close()


def cmd_target(a: argparse.Namespace) -> int:
    try:
        asyncio.run(target_main(a.port, a.max_seconds, a.keep_alive))
    except KeyboardInterrupt:
        pass
    return 0


# --------------------------------------------------------------------------------------------
# small HTTP client helpers


def http_get(host_port: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    host, port = host_port.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def strip_url(url: str) -> str:
    return url.removeprefix("http://").rstrip("/")


def metrics(host_port: str) -> dict[str, float]:
    status, body = http_get(host_port, "/metrics")
    if status != 200:
        raise RuntimeError(f"GET {host_port}/metrics: HTTP {status}")
    out = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def passing(m: dict[str, float]) -> int:
    return int(m.get('cairn_instances_by_health{health="passing"}', 0))


# --------------------------------------------------------------------------------------------
# register


def instance_names(prefix: str, count: int, per_service: int):
    for k in range(count):
        svc = f"{prefix}{k // per_service}"
        inst = f"i{k % per_service}"
        yield svc, inst


def cmd_register(a: argparse.Namespace) -> int:
    host, port = strip_url(a.url).rsplit(":", 1)
    items = []
    for svc, inst in instance_names(a.prefix, a.count, a.per_service):
        hid = f"{svc}.{inst}"
        check = {
            "kind": "http",
            "url": f"http://127.0.0.1:{a.target_port}/health/{hid}",
            "interval": a.interval,
            "timeout": a.timeout,
            "fall": a.fall,
            "rise": a.rise,
        }
        body = json.dumps({"address": "127.0.0.1", "port": a.target_port, "checks": [check]})
        items.append((f"/v1/services/{svc}/instances/{inst}", body.encode()))
    lock = threading.Lock()
    next_i = [0]
    ok = [0]
    errors: list[str] = []
    deadline = time.monotonic() + a.max_seconds

    def worker() -> None:
        conn = None
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= len(items) or time.monotonic() > deadline:
                break
            path, body = items[i]
            last = ""
            for attempt in range(6):
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(host, int(port), timeout=30)
                    conn.request("PUT", path, body, {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    data = r.read()
                    if r.status == 200 and b'"index"' in data:
                        with lock:
                            ok[0] += 1
                        last = ""
                        break
                    last = f"PUT {path}: HTTP {r.status} {data[:200]!r}"
                    if r.getheader("connection", "").lower() == "close":
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException) as e:
                    last = f"PUT {path}: {type(e).__name__}: {e}"
                    if conn is not None:
                        conn.close()
                    conn = None
                time.sleep(min(2.0, 0.1 * 2**attempt))
            if last:
                with lock:
                    errors.append(last)
        if conn is not None:
            conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 60)
    secs = time.monotonic() - t0
    out = {
        "count": a.count,
        "ok": ok[0],
        "errors": len(errors),
        "first_errors": errors[:10],
        "seconds": round(secs, 3),
        "per_second": round(ok[0] / secs, 1) if secs > 0 else None,
        "connections": a.connections,
        "services": math.ceil(a.count / a.per_service),
        "per_service": a.per_service,
    }
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    log(f"registered {ok[0]}/{a.count} in {secs:.1f} s ({out['per_second']}/s), {len(errors)} errors")
    for e in errors[:5]:
        log(f"  {e}")
    return 0 if ok[0] == a.count else 1


# --------------------------------------------------------------------------------------------
# wait-passing


def cmd_wait_passing(a: argparse.Namespace) -> int:
    nodes = [strip_url(u) for u in a.url]
    t0 = time.monotonic()
    deadline = t0 + a.timeout
    last_print = 0.0
    seen = {}
    while True:
        for n in nodes:
            try:
                seen[n] = passing(metrics(n))
            except (OSError, RuntimeError, http.client.HTTPException) as e:
                seen[n] = f"error: {e}"
        if all(isinstance(v, int) and v >= a.want for v in seen.values()):
            log(f"{a.want} instances passing on {len(nodes)} node(s) after {time.monotonic() - t0:.1f} s")
            print(f"{time.monotonic() - t0:.3f}")
            return 0
        now = time.monotonic()
        if now > deadline:
            log(f"timed out after {a.timeout} s waiting for {a.want} passing: {seen}")
            return 1
        if now - last_print > 5:
            log(f"waiting for {a.want} passing: {seen}")
            last_print = now
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------
# measure


def proc_ticks(pid: int) -> int | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15.
    return int(fields[11]) + int(fields[12])


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(val.split()[0])
    except OSError:
        pass
    return out


def machine_ticks() -> tuple[int, int]:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in fields[:8]]
    idle = vals[3] + vals[4]
    return sum(vals), idle


def all_proc_ticks() -> dict[int, tuple[str, int]]:
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            data = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        name = data[data.find("(") + 1 : data.rfind(")")]
        fields = data[data.rfind(")") + 2 :].split()
        out[int(d)] = (name, int(fields[11]) + int(fields[12]))
    return out


def cmd_measure(a: argparse.Namespace) -> int:
    pids = {}
    for spec in a.pid:
        name, _, pid = spec.partition("=")
        pids[name] = int(pid)
    own = set(pids.values()) | {os.getpid(), os.getppid()}
    target = a.target
    node = strip_url(a.node) if a.node else None

    def target_stats() -> dict:
        status, body = http_get(target, "/stats")
        return json.loads(body)

    m0 = metrics(node) if node else {}
    ts0 = target_stats()
    all0 = all_proc_ticks()
    mt0 = machine_ticks()
    t0 = time.monotonic()
    tick0 = {n: proc_ticks(p) for n, p in pids.items()}
    samples = []  # (elapsed, {name: ticks}, {name: rss_kib})
    next_t = t0
    while True:
        now = time.monotonic()
        ticks = {n: proc_ticks(p) for n, p in pids.items()}
        rss = {n: proc_status(p).get("VmRSS") for n, p in pids.items()}
        samples.append((now - t0, ticks, rss))
        if any(v is None for v in ticks.values()):
            log(f"a measured process exited during the window: {ticks}")
            return 1
        if now - t0 >= a.seconds:
            break
        next_t += a.sample_every
        time.sleep(max(0.0, min(next_t, t0 + a.seconds) - time.monotonic()))
    t1 = time.monotonic()
    mt1 = machine_ticks()
    all1 = all_proc_ticks()
    ts1 = target_stats()
    m1 = metrics(node) if node else {}
    elapsed = t1 - t0

    procs = {}
    for n, p in pids.items():
        dticks = samples[-1][1][n] - tick0[n]
        # CPU per sub-window of `window` seconds, to show how steady the load is.
        windows = []
        w_start = samples[0]
        for s in samples[1:]:
            if s[0] - w_start[0] >= a.window - 1e-6 or s is samples[-1]:
                span = s[0] - w_start[0]
                if span >= a.window / 2:
                    windows.append(100.0 * (s[1][n] - w_start[1][n]) / CLK_TCK / span)
                w_start = s
        rss_series = [s[2][n] for s in samples if s[2][n] is not None]
        st = proc_status(p)
        procs[n] = {
            "pid": p,
            "cpu_percent": 100.0 * dticks / CLK_TCK / elapsed,
            "cpu_windows": windows,
            "rss_kib_end": rss_series[-1] if rss_series else None,
            "rss_kib_max": max(rss_series) if rss_series else None,
            "rss_kib_min": min(rss_series) if rss_series else None,
            "hwm_kib": st.get("VmHWM"),
            "threads": st.get("Threads"),
            "rss_kib_series": rss_series,
        }
    # Everything else on the machine during the window, to tell a quiet run from a loaded one.
    others = []
    for pid, (name, t1_) in all1.items():
        if pid in own or pid not in all0:
            continue
        d = t1_ - all0[pid][1]
        if d > 0:
            others.append((100.0 * d / CLK_TCK / elapsed, name, pid))
    others.sort(reverse=True)
    tot = mt1[0] - mt0[0]
    busy = tot - (mt1[1] - mt0[1])
    ncpu = os.cpu_count() or 1
    probes = (ts1["health_ok"] + ts1["health_fail"]) - (ts0["health_ok"] + ts0["health_fail"])
    out = {
        "label": a.label,
        "run": a.run,
        "idle_rss_kib": a.idle_rss,
        "seconds": elapsed,
        "clk_tck": CLK_TCK,
        "procs": procs,
        "probes": probes,
        "probes_per_second": probes / elapsed,
        "probes_failing": ts1["health_fail"] - ts0["health_fail"],
        # Connections the target accepted in the window (the /stats calls add one each when the
        # target closes connections).
        "target_connections": ts1.get("connections", 0) - ts0.get("connections", 0),
        "machine_busy_cores": (busy / tot * ncpu) if tot else None,
        "others_percent": sum(o[0] for o in others),
        "others_top": [{"name": n, "pid": p, "cpu_percent": round(c, 1)} for c, n, p in others[:6]],
        "raft_commit_delta": (
            m1.get("cairn_raft_commit_index", 0) - m0.get("cairn_raft_commit_index", 0) if node else None
        ),
        "passing_start": passing(m0) if node else None,
        "passing_end": passing(m1) if node else None,
        "instances_end": int(m1.get("cairn_instances", 0)) if node else None,
        "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
    }
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    for n, p in procs.items():
        log(
            f"{n}: {p['cpu_percent']:.1f}% of one core over {elapsed:.1f} s, "
            f"RSS {p['rss_kib_end'] / 1024:.1f} MiB (max {p['rss_kib_max'] / 1024:.1f})"
        )
    log(f"target served {out['probes_per_second']:.1f} probes/s; other processes {out['others_percent']:.1f}% of a core")
    return 0


# --------------------------------------------------------------------------------------------
# detect: DNS client and the failure-timing loop


def dns_query(qid: int, name: str) -> bytes:
    header = struct.pack(">HHHHHH", qid, 0x0000, 1, 0, 0, 0)
    qname = b"".join(bytes([len(label)]) + label for label in name.encode().split(b".") if label)
    return header + qname + b"\x00" + struct.pack(">HH", 1, 1)  # A, IN


def dns_parse(resp: bytes) -> tuple[int, int, int] | None:
    """(id, rcode, answer count) of a response, or None if it is not one."""
    if len(resp) < 12:
        return None
    qid, flags, _qd, an, _ns, _ar = struct.unpack(">HHHHHH", resp[:12])
    if not flags & 0x8000:
        return None
    return qid, flags & 0xF, an


class DnsPoller:
    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.socks = []
        for p in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect(("127.0.0.1", p))
            s.setblocking(False)
            self.socks.append(s)
        self.qid = random.randrange(65536)

    def close(self) -> None:
        for s in self.socks:
            s.close()

    def round(self, name: str, which: list[int], wait: float) -> dict[int, tuple[float, int, int]]:
        """Asks the nodes in `which` (indexes) once; {index: (receive time, rcode, answers)}."""
        want = {}
        for i in which:
            self.qid = (self.qid + 1) & 0xFFFF
            want[i] = self.qid
            try:
                self.socks[i].send(dns_query(self.qid, name))
            except OSError:
                pass
        got = {}
        deadline = time.monotonic() + wait
        while len(got) < len(want):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self.socks[i] for i in want if i not in got], [], [], left)
            now = time.monotonic()
            for s in ready:
                i = self.socks.index(s)
                while True:
                    try:
                        data = s.recv(4096)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    r = dns_parse(data)
                    if r and r[0] == want[i] and i not in got:
                        got[i] = (now, r[1], r[2])
        return got


def percentile(sorted_vals: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_vals:
        return float("nan")
    rank = max(1, math.ceil(p / 100.0 * len(sorted_vals)))
    return sorted_vals[rank - 1]


def cmd_detect(a: argparse.Namespace) -> int:
    ports = [int(p) for p in a.dns_ports.split(",")]
    target = a.target
    poller = DnsPoller(ports)
    rng = random.Random(a.seed)
    candidates = [svc for svc, _ in instance_names(a.prefix, a.count, 1)]
    rng.shuffle(candidates)
    all_nodes = list(range(len(ports)))
    results = []
    out = open(a.out, "w")
    deadline_total = time.monotonic() + a.max_seconds
    skipped = 0
    try:
        for svc in candidates:
            if len(results) >= a.samples:
                break
            if time.monotonic() > deadline_total:
                log("detect: overall time limit reached")
                break
            name = f"{svc}.service.{a.domain}"
            hid = f"{svc}.i0"
            # The instance must be in every node's answer before its target fails.
            present_by = time.monotonic() + 10
            while True:
                got = poller.round(name, all_nodes, 0.5)
                if len(got) == len(ports) and all(g[1] == 0 and g[2] >= 1 for g in got.values()):
                    break
                if time.monotonic() > present_by:
                    break
                time.sleep(0.05)
            if not (len(got) == len(ports) and all(g[1] == 0 and g[2] >= 1 for g in got.values())):
                skipped += 1
                log(f"detect: {name} not answered by every node before the switch ({got}); skipped")
                if skipped > a.samples:
                    log("detect: too many skipped instances")
                    return 1
                continue
            status, body = http_get(target, f"/fail/{hid}")
            if status != 200:
                log(f"detect: target /fail/{hid} answered HTTP {status}")
                return 1
            t_switch = json.loads(body)["t"]
            gone: dict[int, float] = {}
            rcodes = set()
            limit = t_switch + a.sample_timeout
            while len(gone) < len(ports) and time.monotonic() < limit:
                tick = time.monotonic()
                got = poller.round(name, [i for i in all_nodes if i not in gone], a.poll / 2)
                for i, (t, rcode, an) in got.items():
                    if an == 0 and rcode in (0, 3):
                        gone[i] = t
                        rcodes.add(rcode)
                time.sleep(max(0.0, tick + a.poll - time.monotonic()))
            _, pbody = http_get(target, f"/probes/{hid}")
            probes = [p - t_switch for p in json.loads(pbody)["probes"]]
            rec = {
                "service": svc,
                "switch_t": t_switch,
                "complete": len(gone) == len(ports),
                "detect_s": (max(gone.values()) - t_switch) if len(gone) == len(ports) else None,
                "per_node_s": {str(ports[i]): round(t - t_switch, 4) for i, t in sorted(gone.items())},
                "rcodes": sorted(rcodes),
                "failing_probes_s": [round(p, 4) for p in probes[:8]],
            }
            if len(probes) >= a.fall:
                rec["fall_probe_s"] = probes[a.fall - 1]
            results.append(rec)
            out.write(json.dumps(rec) + "\n")
            out.flush()
            if rec["complete"]:
                log(
                    f"detect {len(results)}/{a.samples}: {svc} gone from all nodes after "
                    f"{rec['detect_s'] * 1000:.0f} ms (failing probes at "
                    f"{', '.join(f'{p * 1000:.0f}' for p in probes[: a.fall])} ms)"
                )
            else:
                log(f"detect {len(results)}/{a.samples}: {svc} NOT gone from all nodes within {a.sample_timeout} s: {gone}")
            # Space the samples apart, with a random gap so switches land at random probe phases.
            time.sleep(rng.uniform(a.gap_min, a.gap_max))
        # A removed instance must stay removed: ask once more for every failed one.
        back = []
        for rec in results:
            got = poller.round(f"{rec['service']}.service.{a.domain}", all_nodes, 0.5)
            if any(g[2] > 0 for g in got.values()):
                back.append(rec["service"])
        summary = {"summary": True, "skipped": skipped, "reappeared": back}
        out.write(json.dumps(summary) + "\n")
        if back:
            log(f"detect: {len(back)} failed instances were back in some answer at the end: {back[:10]}")
    finally:
        out.close()
        poller.close()
    complete = [r for r in results if r["complete"]]
    if not complete:
        log("detect: no complete sample")
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# report


def fmt_ms(s: float | None) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "n/a"
    return f"{s * 1000:.0f} ms"


def mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def parse_duration(s: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", s.strip())
    if not m:
        raise SystemExit(f"cannot parse duration {s!r}")
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "ms" else v * 60 if m.group(2) == "m" else v


def rank_note(n: int) -> str:
    rank = max(1, math.ceil(0.99 * n))
    if rank == n:
        return f"with {n} samples, p99 is the largest"
    return f"with {n} samples, p99 is the {n - rank + 1}th largest"


def stats_row(vals: list[float]) -> tuple[str, str, str, str]:
    v = sorted(vals)
    return (fmt_ms(percentile(v, 50)), fmt_ms(percentile(v, 99)), fmt_ms(v[-1] if v else None), str(len(v)))


CPU_GOAL = 8.0  # % of one core for the agent, against the keep-alive target (issue 20)
KIND_TEXT = {
    "keep-alive": "keep-alive target",
    "close": "closing target",
}


def median(vals: list[float]) -> float:
    v = sorted(vals)
    n = len(v)
    if n == 0:
        return float("nan")
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def cpu_table(meta: dict, cpu: list[dict]) -> tuple[list[str], list[str]]:
    """The agent-cost rows, one column per kind of target (medians of its runs), and the goal line."""
    kinds: dict[str, list[dict]] = {}
    for c in sorted(cpu, key=lambda c: c.get("run", 1)):
        kinds.setdefault(c.get("label") or "close", []).append(c)
    order = [k for k in ("keep-alive", "close") if k in kinds] + [k for k in kinds if k not in ("keep-alive", "close")]
    cols = [kinds[k] for k in order]

    def med(runs: list[dict], f) -> float:
        return median([f(r) for r in runs])

    def agent(r: dict) -> dict:
        return r["procs"]["agent"]

    def row(name: str, f) -> str:
        return f"| {name} | " + " | ".join(f(runs) for runs in cols) + " |"

    seconds = cpu[0]["seconds"]
    n_runs = max(len(runs) for runs in cols)
    rows = [
        "| Measure | " + " | ".join(KIND_TEXT.get(k, k) for k in order) + " |",
        "|---|" + "---:|" * len(order),
        row(f"**Agent CPU, median of {n_runs} run(s) of {seconds:.0f} s**",
            lambda runs: f"**{med(runs, lambda r: agent(r)['cpu_percent']):.1f}%** of one core"),
        row("Agent CPU per run", lambda runs: ", ".join(f"{agent(r)['cpu_percent']:.1f}%" for r in runs)),
        row(f"Agent CPU per {meta['window']} s window, min–max over the runs",
            lambda runs: "{:.1f}–{:.1f}%".format(
                min(w for r in runs for w in agent(r)["cpu_windows"]),
                max(w for r in runs for w in agent(r)["cpu_windows"]))
            if all(agent(r)["cpu_windows"] for r in runs) else "n/a"),
        row("Agent CPU ÷ probes (median)",
            lambda runs: f"{med(runs, lambda r: agent(r)['cpu_percent'] / 100 / max(r['probes_per_second'], 1e-9) * 1e6):.0f} µs"),
        row("Agent RSS at the end of the window (median)", lambda runs: mib(int(med(runs, lambda r: agent(r)["rss_kib_end"])))),
        row("Agent RSS before registering / peak (VmHWM, includes registration), median",
            lambda runs: f"{mib(int(med(runs, lambda r: r.get('idle_rss_kib') or 0)))} / {mib(int(med(runs, lambda r: agent(r)['hwm_kib'])))}"),
        row("Agent threads", lambda runs: ", ".join(sorted({str(agent(r)["threads"]) for r in runs}))),
        row(f"Probes answered by the target (median; ≈ {int(meta['checks']) / parse_duration(meta['interval']):.0f}/s wanted)",
            lambda runs: f"{med(runs, lambda r: r['probes_per_second']):.1f}/s ({sum(r['probes_failing'] for r in runs)} failing)"),
        row("Connections the target accepted per probe (median)",
            lambda runs: f"{med(runs, lambda r: r.get('target_connections', 0) / max(r['probes'], 1)):.3f}"),
        row("Instances passing at start / end of the window (fewest over the runs)",
            lambda runs: f"{min(r['passing_start'] for r in runs)} / {min(r['passing_end'] for r in runs)} of {runs[0]['instances_end']}"),
        row("Raft entries committed in the windows (all runs; 0 wanted)", lambda runs: f"{sum(r['raft_commit_delta'] for r in runs):.0f}"),
        row("Target CPU (Python asyncio), median",
            lambda runs: f"{med(runs, lambda r: r['procs']['target']['cpu_percent']):.1f}% of one core"),
        row("Other processes in the window, median",
            lambda runs: f"{med(runs, lambda r: r['others_percent']):.1f}% of one core"),
    ]
    notes = []
    if "keep-alive" in kinds:
        got = med(kinds["keep-alive"], lambda r: agent(r)["cpu_percent"])
        ok = "yes" if got <= CPU_GOAL else "**no**"
        notes.append(f"Goal: agent CPU against the keep-alive target ≤ {CPU_GOAL:.0f}% of one core → "
                     f"{got:.1f}%: met: {ok}.")
    return rows, notes


def build_section(meta: dict, cpu: list[dict], reg: dict, detect: list[dict], dsummary: dict, dreg: dict) -> tuple[str, str]:
    checks = int(meta["checks"])
    interval = meta["interval"]
    cpu_rows, cpu_notes = cpu_table(meta, cpu)
    d_ok = [r for r in detect if r.get("complete")]
    d_incomplete = len(detect) - len(d_ok)
    fall = int(meta["detect_fall"])
    d_interval = parse_duration(meta["detect_interval"])
    goal = fall * d_interval + 0.1
    det = sorted(r["detect_s"] for r in d_ok)
    p99 = percentile(det, 99)
    over = sum(1 for x in det if x > goal)
    probe_phase = [r["fall_probe_s"] for r in d_ok if "fall_probe_s" in r]
    after_probe = [r["detect_s"] - r["fall_probe_s"] for r in d_ok if "fall_probe_s" in r]
    first_node = [min(r["per_node_s"].values()) - r["fall_probe_s"] for r in d_ok if "fall_probe_s" in r]
    spread = [max(r["per_node_s"].values()) - min(r["per_node_s"].values()) for r in d_ok]
    p99_ok = "yes" if p99 <= goal else "**no**"
    det_rows = [
        "| Measure | p50 | p99 | max | Samples |",
        "|---|---:|---:|---:|---:|",
        "| **Target fails → instance gone from the A answers of all 3 nodes** | **{}** | **{}** | **{}** | {} |".format(*stats_row(det)),
        "| Target fails → the {}{} failing probe reaches the target | {} | {} | {} | {} |".format(
            fall, {1: "st", 2: "nd", 3: "rd"}.get(fall, "th"), *stats_row(probe_phase)),
        "| That probe → gone from the first node's answers | {} | {} | {} | {} |".format(*stats_row(first_node)),
        "| That probe → gone from all 3 nodes' answers | {} | {} | {} | {} |".format(*stats_row(after_probe)),
        "| First node → last node | {} | {} | {} | {} |".format(*stats_row(spread)),
    ]
    goal_line = (
        f"Goal: p99 ≤ fall × interval + 100 ms = {fall} × {meta['detect_interval']} + 100 ms = "
        f"**{goal * 1000:.0f} ms** → p99 {p99 * 1000:.0f} ms: met: {p99_ok}; "
        f"{over} of {len(det)} samples above the goal."
    )
    extra = []
    if d_incomplete:
        extra.append(f"{d_incomplete} sample(s) did not leave every node's answers within the per-sample limit and are excluded above.")
    if dsummary.get("skipped"):
        extra.append(f"{dsummary['skipped']} instance(s) were skipped because not every node answered them before the switch.")
    if dsummary.get("reappeared"):
        extra.append(f"{len(dsummary['reappeared'])} failed instance(s) were back in some answer at the end of the run.")
    under_load = meta.get("under_load", "")
    lines = [
        START,
        "## Health checks: agent cost and failure detection",
        "",
        "_Written by `bench/checks.sh`; do not edit by hand, re-run the script._",
        "",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['nproc']} CPUs ({meta['cpu']}), kernel {meta['kernel']}, {meta['os']}; "
        f"data dirs on {meta['fs']}; load average at start {meta['load']}",
        f"- Cairn binary `{meta['cairn_bin']}`, {meta['cairn_build']}",
        f"- Targets: `bench/checks_tool.py target`, one Python {meta['python']} asyncio process per kind on 127.0.0.1, "
        "answering 200 (or 500 once switched to failing): the keep-alive target keeps each connection open "
        "for further requests, as HTTP/1.1 servers do; the closing target answers `Connection: close` and "
        "closes, so every probe pays a TCP connect",
        f"- Command: `{meta['command']}`",
        f"- Agent logs (at `{meta['cairn_log']}`): {meta.get('logs', 'n/a')}",
    ]
    if meta.get("waited"):
        lines.append(f"- Before starting, {meta['waited']} (then 10 s more)")
    if under_load:
        lines.append(f"- **Measured under load:** {under_load.strip()}")
    lines += [
        "",
        f"### Agent cost: {checks:,} HTTP checks every {interval} on one node",
        "",
        f"Single-node cluster (`--bootstrap`), so this node runs every check. {checks:,} instances in "
        f"{reg['services']:,} services × {reg['per_service']} instances, one HTTP check each "
        f"(interval {interval}, timeout {meta['timeout']}, fall {meta['fall']}, rise 1), registered in "
        f"{reg['seconds']:.1f} s over {reg['connections']} connections. Measured from /proc over "
        f"{cpu[0]['seconds']:.0f} s, starting {meta['settle']} s after all {checks:,} instances were passing; "
        "a fresh node (and data folder) for every run.",
        "",
        *cpu_rows,
        "",
        *cpu_notes,
        "",
        f"### Failure detection: 3 nodes, {int(meta['detect_checks']):,} HTTP checks every {meta['detect_interval']}, fall {fall}",
        "",
        f"Three nodes (`--peers`), {int(meta['detect_checks']):,} services with one instance each, one HTTP "
        f"check per instance (interval {meta['detect_interval']}, timeout {meta['detect_timeout']}, fall {fall}, rise 1), "
        f"spread over the nodes by rendezvous hashing, probing the {KIND_TEXT.get(meta.get('detect_target', 'close'), 'target')}. {len(detect)} randomly chosen instances were switched "
        "to failing one at a time (0.3–1 s apart, after the previous one was gone); each time the "
        f"A record of `<service>.service.cairn` was asked of all three nodes every {meta['poll_ms']} ms "
        "until every answer was empty (NOERROR, no records). Times are from the target's switch to "
        "the reply that showed the empty answer, on one monotonic clock; the probe rows split "
        "this into waiting for failing probes and recording plus replicating the change.",
        "",
        *det_rows,
        "",
        goal_line,
        *([""] + extra if extra else []),
        "",
        f"Percentiles are nearest-rank ({rank_note(len(det))}). "
        "Prober, target, cluster and DNS poller share the same cores. "
        f"Raw output: `{meta['results_dir']}` (not committed).",
        END,
    ]
    summary = "\n".join(cpu_rows + cpu_notes + [""] + det_rows + ["", goal_line] + extra)
    return "\n".join(lines), summary


def cmd_report(a: argparse.Namespace) -> int:
    meta = {}
    if a.meta_file and Path(a.meta_file).exists() and not a.meta:
        meta = json.loads(Path(a.meta_file).read_text())
    meta.update(kv.split("=", 1) for kv in a.meta)
    if a.meta_file and a.meta:
        Path(a.meta_file).write_text(json.dumps(meta, indent=1) + "\n")
    cpu = [json.loads(Path(f).read_text()) for f in a.cpu]
    reg = json.loads(Path(a.reg).read_text())
    dreg = json.loads(Path(a.detect_reg).read_text())
    detect, dsummary = [], {}
    for line in Path(a.detect).read_text().splitlines():
        rec = json.loads(line)
        if rec.get("summary"):
            dsummary = rec
        else:
            detect.append(rec)
    section, _summary = build_section(meta, cpu, reg, detect, dsummary, dreg)
    Path(a.section_out).write_text(section + "\n")
    print(section)
    if a.output:
        benchlib.replace_section(Path(a.output), "checks", section)
        log(f"wrote section to {a.output}")
    return 0


# --------------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("target")
    t.add_argument("--port", type=int, required=True)
    t.add_argument("--max-seconds", type=float, default=7200)
    t.add_argument("--keep-alive", action="store_true", help="keep connections open between requests")
    t.set_defaults(func=cmd_target)

    r = sub.add_parser("register")
    r.add_argument("--url", required=True)
    r.add_argument("--count", type=int, required=True)
    r.add_argument("--per-service", type=int, default=1)
    r.add_argument("--prefix", required=True)
    r.add_argument("--target-port", type=int, required=True)
    r.add_argument("--interval", required=True)
    r.add_argument("--timeout", required=True)
    r.add_argument("--fall", type=int, required=True)
    r.add_argument("--rise", type=int, default=1)
    r.add_argument("--connections", type=int, default=64)
    r.add_argument("--max-seconds", type=float, default=300)
    r.add_argument("--out", required=True)
    r.set_defaults(func=cmd_register)

    w = sub.add_parser("wait-passing")
    w.add_argument("--url", action="append", required=True)
    w.add_argument("--want", type=int, required=True)
    w.add_argument("--timeout", type=float, required=True)
    w.set_defaults(func=cmd_wait_passing)

    m = sub.add_parser("measure")
    m.add_argument("--pid", action="append", required=True, metavar="NAME=PID")
    m.add_argument("--seconds", type=float, required=True)
    m.add_argument("--sample-every", type=float, default=1.0)
    m.add_argument("--window", type=float, default=10.0)
    m.add_argument("--node", help="cairn HTTP address, for /metrics")
    m.add_argument("--target", required=True, help="target host:port, for /stats")
    m.add_argument("--label", default="", help="the kind of target, for the report")
    m.add_argument("--run", type=int, default=1)
    m.add_argument("--idle-rss", type=int, default=None, help="the agent's RSS before registering, KiB")
    m.add_argument("--out", required=True)
    m.set_defaults(func=cmd_measure)

    d = sub.add_parser("detect")
    d.add_argument("--target", required=True)
    d.add_argument("--dns-ports", required=True)
    d.add_argument("--domain", default="cairn")
    d.add_argument("--prefix", required=True)
    d.add_argument("--count", type=int, required=True)
    d.add_argument("--samples", type=int, required=True)
    d.add_argument("--fall", type=int, required=True)
    d.add_argument("--poll", type=float, default=0.01)
    d.add_argument("--sample-timeout", type=float, required=True)
    d.add_argument("--gap-min", type=float, default=0.3)
    d.add_argument("--gap-max", type=float, default=1.0)
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--max-seconds", type=float, default=1800)
    d.add_argument("--out", required=True)
    d.set_defaults(func=cmd_detect)

    rep = sub.add_parser("report")
    rep.add_argument("--cpu", action="append", required=True, help="a phase-1 run's measure output")
    rep.add_argument("--reg", required=True)
    rep.add_argument("--detect", required=True)
    rep.add_argument("--detect-reg", required=True)
    rep.add_argument("--section-out", required=True)
    rep.add_argument("--output")
    rep.add_argument("--meta-file", help="meta.json of the run: written when --meta is given, else read")
    rep.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    rep.set_defaults(func=cmd_report)

    args = p.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
