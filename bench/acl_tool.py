#!/usr/bin/env python3
"""Helper for the ACL mode of bench/reads.sh and bench/registrations.sh (BENCH_ACL=1): prepares
a fresh Cairn cluster started with `--acl` (default deny) for a benchmark. Standard library only.

  acl_tool.py setup --url URL --service SVC --access read|write --tokens N --out FILE

1. `PUT /v1/acl/bootstrap` (no token): the management token.
2. `PUT /v1/acl/policies/bench` with `{"rules": {"service_prefix": {SVC: ACCESS}}}`.
3. `POST /v1/acl/tokens` `{"policies": ["bench"]}`: the token the load is sent with.
4. More tokens linked to the same policy until the registry holds N tokens (counted with
   `GET /v1/acl/tokens`, so the bootstrap token and the anonymous token count if listed),
   created by C concurrent keep-alive connections, each answer checked (201 with a secret);
   the time this takes is measured.
5. Checks: the load token reads SVC (or registers into it), no token is refused (403), and the
   registry lists exactly N tokens.

Writes one JSON object to FILE: management and load secrets, tokens, creation time and rate.
Prints a progress line to stderr. Secrets are bench-only: the cluster dies with the run.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import sys
import time
from urllib.parse import urlsplit

POLICY = "bench"


def log(msg: str) -> None:
    print(f"[acl {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Fail(Exception):
    pass


def request(host: str, port: int, method: str, path: str, token: str | None = None,
            body: dict | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Cairn-Token"] = token
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                  headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def secret_of(status: int, body: bytes, what: str, want: int) -> str:
    if status != want:
        raise Fail(f"{what}: HTTP {status} (want {want}) {body[:200]!r}")
    try:
        secret = json.loads(body)["secret"]
    except (ValueError, KeyError, TypeError):
        raise Fail(f"{what}: no secret in {body[:200]!r}") from None
    if not isinstance(secret, str) or not secret:
        raise Fail(f"{what}: empty secret")
    return secret


def count_tokens(host: str, port: int, mgmt: str) -> int:
    st, body = request(host, port, "GET", "/v1/acl/tokens", mgmt, timeout=120.0)
    if st != 200:
        raise Fail(f"GET /v1/acl/tokens: HTTP {st} {body[:200]!r}")
    return len(json.loads(body)["tokens"])


async def create_tokens(host: str, port: int, mgmt: str, count: int, conns: int) -> None:
    """COUNT times POST /v1/acl/tokens over CONNS keep-alive connections; every answer must be
    201 with a secret. Raw HTTP/1.1 on asyncio streams: http.client in threads tops out well
    below what the node can apply."""
    body = json.dumps({"policies": [POLICY], "description": "bench filler"}).encode()
    req = (f"POST /v1/acl/tokens HTTP/1.1\r\nHost: {host}:{port}\r\nX-Cairn-Token: {mgmt}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while remaining > 0:
                remaining -= 1
                writer.write(req)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                payload = await reader.readexactly(length)
                if status != 201 or b'"secret"' not in payload:
                    raise Fail(f"POST /v1/acl/tokens: HTTP {status} {payload[:200]!r}")
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(min(conns, count))))


def cmd_setup(a: argparse.Namespace) -> int:
    u = urlsplit(a.url)
    if u.scheme != "http" or not u.hostname or not u.port:
        raise Fail(f"--url must be http://HOST:PORT, got {a.url!r}")
    host, port = u.hostname, u.port

    st, body = request(host, port, "PUT", "/v1/acl/bootstrap")
    mgmt = secret_of(st, body, "PUT /v1/acl/bootstrap", 200)
    rules = {"service_prefix": {a.service: a.access}}
    st, body = request(host, port, "PUT", f"/v1/acl/policies/{POLICY}", mgmt, {"rules": rules})
    if st != 200:
        raise Fail(f"PUT /v1/acl/policies/{POLICY}: HTTP {st} {body[:200]!r}")
    st, body = request(host, port, "POST", "/v1/acl/tokens", mgmt,
                       {"policies": [POLICY], "description": "bench load"})
    load = secret_of(st, body, "POST /v1/acl/tokens", 201)

    have = count_tokens(host, port, mgmt)
    if have > a.tokens:
        raise Fail(f"the registry already holds {have} tokens, more than --tokens {a.tokens}")
    fill = a.tokens - have
    t0 = time.monotonic()
    asyncio.run(create_tokens(host, port, mgmt, fill, a.connections))
    secs = time.monotonic() - t0
    total = count_tokens(host, port, mgmt)
    if total != a.tokens:
        raise Fail(f"the registry lists {total} tokens after creating {fill}, want {a.tokens}")

    # Default deny: no token is refused; the load token gets what the benchmark sends.
    path = f"/v1/services/{a.service}"
    st, body = request(host, port, "GET", path)
    if st != 403:
        raise Fail(f"GET {path} without a token: HTTP {st}, want 403 (is --acl on, default deny?)")
    if a.access == "read":
        st, body = request(host, port, "GET", path, load)
        if st not in (200, 404):
            raise Fail(f"GET {path} with the load token: HTTP {st} {body[:200]!r}")
    rate = fill / secs if secs > 0 else 0.0
    log(f"{total} tokens in the registry; created {fill} in {secs:.1f} s ({rate:.0f}/s) "
        f"over {min(a.connections, max(fill, 1))} connections; load token: "
        f"service_prefix {a.service!r} {a.access}")
    with open(a.out, "w") as f:
        json.dump({"management": mgmt, "load": load, "tokens": total, "created": fill,
                   "create_seconds": round(secs, 2), "create_rate": round(rate, 1),
                   "connections": a.connections, "service": a.service, "access": a.access,
                   "rules": rules}, f)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--url", required=True, help="the node's (the leader's) plain HTTP API")
    s.add_argument("--service", required=True, help="the service_prefix the load token gets")
    s.add_argument("--access", required=True, choices=("read", "write"))
    s.add_argument("--tokens", type=int, required=True, help="tokens in the registry afterwards")
    s.add_argument("--connections", type=int, default=64, help="concurrent creations")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_setup)
    a = p.parse_args()
    try:
        return a.func(a)
    except (Fail, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
