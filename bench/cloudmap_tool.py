#!/usr/bin/env python3
"""Helper for bench/cloudmap.sh: the data set through boto3, the signed DiscoverInstances
request, the SDK client loop, wrk output parsing and the Markdown report.

Subcommands
  seed    create namespace `bench.internal` and service `web` through Cloud Map (boto3), register
          --instances instances through RegisterInstance; checks that the native API and
          DiscoverInstances both see them.
  sign    write the request file bench/cloudmap.lua sends: DiscoverInstances (AWS JSON 1.1)
          signed with SigV4 by botocore's own signer, valid for AWS's 15-minute clock skew.
  sdk     the client's side: for --seconds, boto3 `discover_instances` calls in one Python
          thread, then as many seconds of plain `http.client` GETs of the native read; prints
          one JSON line of calls per second each.
  record  parse one wrk output and append it as a JSON line to a runs file.
  report  medians and the ratio; print the Markdown section and replace the cloudmap section
          of BENCHMARKS.md between its markers.

boto3 and botocore come from $CAIRN_PYDEPS/boto3-<version> (PYTHONPATH, set by the driver);
record and report use the standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

NAMESPACE = "bench.internal"
SERVICE = "web"
TARGET = "Route53AutoNaming_v20170314.DiscoverInstances"
GOAL = 0.5


def client(args):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "servicediscovery", endpoint_url=f"http://127.0.0.1:{args.cloudmap_port}",
        region_name="us-east-1", aws_access_key_id=args.key_id,
        aws_secret_access_key=args.secret,
        config=Config(inject_host_prefix=False, retries={"max_attempts": 1}),
    )


def discover_body() -> str:
    return json.dumps({"NamespaceName": NAMESPACE, "ServiceName": SERVICE,
                       "HealthStatus": "HEALTHY"}, separators=(",", ":"))


def seed(args) -> None:
    sd = client(args)
    op = sd.create_private_dns_namespace(Name=NAMESPACE, Vpc="vpc-bench")["OperationId"]
    ns = sd.get_operation(OperationId=op)["Operation"]["Targets"]["NAMESPACE"]
    web = sd.create_service(
        Name=SERVICE, NamespaceId=ns,
        DnsConfig={"RoutingPolicy": "MULTIVALUE", "DnsRecords": [{"Type": "A", "TTL": 5}]},
    )["Service"]
    for n in range(args.instances):
        sd.register_instance(ServiceId=web["Id"], InstanceId=f"i{n}", Attributes={
            "AWS_INSTANCE_IPV4": f"10.0.{n // 250}.{n % 250 + 1}", "AWS_INSTANCE_PORT": "8080",
            "zone": f"z{n % 3}"})
    found = sd.discover_instances(NamespaceName=NAMESPACE, ServiceName=SERVICE)["Instances"]
    assert len(found) == args.instances, found
    conn = http.client.HTTPConnection("127.0.0.1", args.http_port, timeout=10)
    conn.request("GET", f"/v1/services/{SERVICE}?health=passing")
    native = json.loads(conn.getresponse().read())
    assert len(native["instances"]) == args.instances, native
    print(json.dumps({"namespace": ns, "service": web["Id"], "instances": args.instances}))


def sign(args) -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    host = f"127.0.0.1:{args.cloudmap_port}"
    body = discover_body()
    req = AWSRequest(method="POST", url=f"http://{host}/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": TARGET})
    SigV4Auth(Credentials(args.key_id, args.secret), "servicediscovery", "us-east-1").add_auth(req)
    lines = [body, f"Host: {host}"] + [f"{k}: {v}" for k, v in req.headers.items()]
    Path(args.out).write_text("\n".join(lines) + "\n")


def sdk(args) -> None:
    sd = client(args)
    want = args.instances
    calls, end = 0, time.perf_counter() + args.seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        got = sd.discover_instances(NamespaceName=NAMESPACE, ServiceName=SERVICE,
                                    HealthStatus="HEALTHY")["Instances"]
        assert len(got) == want, got
        calls += 1
    boto = calls / (time.perf_counter() - start)
    conn = http.client.HTTPConnection("127.0.0.1", args.http_port, timeout=10)
    calls, end = 0, time.perf_counter() + args.seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        conn.request("GET", f"/v1/services/{SERVICE}?health=passing")
        got = json.loads(conn.getresponse().read())["instances"]
        assert len(got) == want, got
        calls += 1
    plain = calls / (time.perf_counter() - start)
    print(json.dumps({"boto3": round(boto, 1), "http_client": round(plain, 1)}))


def record(args) -> None:
    text = Path(args.wrk_output).read_text()
    line = next((l for l in text.splitlines() if l.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise SystemExit(f"error: no BENCH_RESULT line in {args.wrk_output}")
    r = json.loads(line[len("BENCH_RESULT "):])
    bad = r["non2xx"] + r["bad_body"] + r["errors"]
    if bad:
        raise SystemExit(f"error: {args.system} c={args.connections}: {bad} bad responses "
                         f"(first: {r['sample_error']})")
    r.update(system=args.system, connections=args.connections, run=args.run,
             rps=r["requests"] / (r["duration_us"] / 1e6))
    with open(args.runs, "a") as f:
        f.write(json.dumps(r) + "\n")
    print(f"  {args.system:8} c={args.connections:<4} run {args.run}: {r['rps']:,.0f} req/s, "
          f"p50 {r['lat_p50_us'] / 1000:.2f} ms, p99 {r['lat_p99_us'] / 1000:.2f} ms",
          file=sys.stderr)


def report(args) -> None:
    runs = [json.loads(l) for l in Path(args.runs).read_text().splitlines() if l.strip()]
    meta = dict(m.split("=", 1) for m in args.meta)
    conns = sorted({r["connections"] for r in runs})
    med = {}
    for c in conns:
        for s in ("native", "cloudmap"):
            xs = [r for r in runs if r["connections"] == c and r["system"] == s]
            if xs:
                med[(s, c)] = {
                    "rps": statistics.median(r["rps"] for r in xs),
                    "p50": statistics.median(r["lat_p50_us"] for r in xs) / 1000,
                    "p99": statistics.median(r["lat_p99_us"] for r in xs) / 1000,
                    "n": len(xs),
                }
    start, end = benchlib.markers("cloudmap")
    out = [start, "## Cloud Map API: DiscoverInstances against the native read", "",
           f"`{meta['command']}` on {meta['date']}, commit {meta['commit']}; {meta['nproc']} CPUs "
           f"({meta['cpu']}), load average at start {meta['load']}.", "",
           f"One node (`--bootstrap`), service `{SERVICE}` in private DNS namespace "
           f"`{NAMESPACE}` with {meta['instances']} instances registered through "
           "`RegisterInstance` (boto3). Both sides read the same healthy instances of the same "
           "registry: Cloud Map `DiscoverInstances` (AWS JSON 1.1, `HealthStatus=HEALTHY`, a "
           "SigV4-signed `POST /` that the node verifies on every request) against the native "
           f"`GET /v1/services/{SERVICE}?health=passing`. wrk {meta['wrk']} sends one static "
           "request per system (bench/cloudmap.lua, every response's status and instance "
           "count checked), signed once by botocore's SigV4 signer, so the load tool spends "
           f"nothing on signing. {meta['duration']} s per run, medians of {meta['runs']} runs "
           f"after a {meta['warmup']} s warm-up; {meta['pin']}.", "",
           "| connections | native req/s | DiscoverInstances req/s | ratio (goal >= 0.5) "
           "| native p50 / p99 ms | DiscoverInstances p50 / p99 ms |",
           "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in conns:
        n, m = med.get(("native", c)), med.get(("cloudmap", c))
        if not n or not m:
            continue
        ratio = m["rps"] / n["rps"]
        verdict = "met" if ratio >= GOAL else "**missed**"
        out.append(f"| {c} | {n['rps']:,.0f} | {m['rps']:,.0f} | {ratio:.2f} ({verdict}) "
                   f"| {n['p50']:.2f} / {n['p99']:.2f} | {m['p50']:.2f} / {m['p99']:.2f} |")
    if meta.get("sdk"):
        out += ["", "What the client costs, for scale (one Python thread, "
                f"{meta['sdk_seconds']} s each, medians of {meta['runs']}): boto3 "
                f"{meta['boto3_version']} `discover_instances` (serialising, signing, parsing) "
                f"makes {meta['sdk_boto3']} calls/s; plain `http.client` GETs of the native read "
                f"make {meta['sdk_http']} calls/s. An SDK client, not the server, sets the pace "
                "of a single caller."]
    out += ["", f"Raw wrk output and logs: `{meta['results_dir']}`.", end]
    section = "\n".join(out)
    print(section)
    if args.output:
        benchlib.replace_section(Path(args.output), "cloudmap", section)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("seed", "sign", "sdk"):
        s = sub.add_parser(name)
        s.add_argument("--cloudmap-port", type=int, required=True)
        s.add_argument("--http-port", type=int, required=True)
        s.add_argument("--key-id", required=True)
        s.add_argument("--secret", required=True)
        s.add_argument("--instances", type=int, default=10)
        s.add_argument("--out", default="")
        s.add_argument("--seconds", type=float, default=5)
    s = sub.add_parser("record")
    for a in ("--runs", "--wrk-output", "--system"):
        s.add_argument(a, required=True)
    s.add_argument("--connections", type=int, required=True)
    s.add_argument("--run", type=int, required=True)
    s = sub.add_parser("report")
    s.add_argument("--runs", required=True)
    s.add_argument("--output", default="")
    s.add_argument("--meta", action="append", default=[])
    args = p.parse_args()
    {"seed": seed, "sign": sign, "sdk": sdk, "record": record, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
