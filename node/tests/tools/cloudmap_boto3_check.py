#!/usr/bin/env python3
"""Drives Cairn's Cloud Map-compatible API with boto3, as a Cloud Map program would.

Usage: cloudmap_boto3_check.py PROTOCOL ENDPOINT OTHER_ENDPOINT HTTP_URL KEY_ID SECRET

PROTOCOL is the wire protocol the requests must use (`smithy-rpc-v2-cbor` or `json`); the
script checks every request used it. botocore (1.44 included) ranks `json` above
`smithy-rpc-v2-cbor` when a service model lists both, as servicediscovery's does since 1.44, so
for `smithy-rpc-v2-cbor` the script moves CBOR first in botocore's ranking: botocore's own CBOR
serializer and parser then speak to Cairn, as an SDK that prefers CBOR would. ENDPOINT and OTHER_ENDPOINT are two nodes' Cloud Map
listeners (http://IP:PORT): writes go to one, reads often to the other. HTTP_URL is a node's
native API. Leaves namespace `example.internal` with service `web` (web-1 unhealthy, web-2 and
web-3 healthy) for the caller to check through the native API and DNS. Prints `all checks
passed` last.
"""

import json
import socket
import sys
import threading
import time
import urllib.request

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError

PROTOCOL, ENDPOINT, OTHER, HTTP_URL, KEY_ID, SECRET = sys.argv[1:7]
if PROTOCOL == "smithy-rpc-v2-cbor":
    import botocore.model

    ranked = botocore.model.PRIORITY_ORDERED_SUPPORTED_PROTOCOLS
    botocore.model.PRIORITY_ORDERED_SUPPORTED_PROTOCOLS = (PROTOCOL,) + tuple(
        p for p in ranked if p != PROTOCOL
    )
REGION = "us-east-1"
seen_protocols = set()


def record_protocol(request, **_):
    headers = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
    if "/operation/" in request.url and headers.get("smithy-protocol") == "rpc-v2-cbor":
        seen_protocols.add("smithy-rpc-v2-cbor")
    elif headers.get("x-amz-target", "").startswith("Route53AutoNaming_v20170314."):
        seen_protocols.add("json")
    else:
        seen_protocols.add(f"unknown: {request.url} {headers}")


def client(endpoint=ENDPOINT, key=KEY_ID, secret=SECRET, prefix=False):
    c = boto3.client(
        "servicediscovery",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(inject_host_prefix=prefix, retries={"max_attempts": 1}),
    )
    c.meta.events.register("before-send.servicediscovery", record_protocol)
    return c


def expect_error(code, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {e}"
        return e
    raise AssertionError(f"expected {code}, the call succeeded")


def eventually(what, check, timeout=30.0):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def ids(instances):
    return sorted(i["InstanceId"] for i in instances)


sd = client()
other = client(OTHER)
assert PROTOCOL in ("smithy-rpc-v2-cbor", "json"), PROTOCOL
assert sd.meta.service_model.resolved_protocol == PROTOCOL, sd.meta.service_model.resolved_protocol
if PROTOCOL == "smithy-rpc-v2-cbor":
    assert PROTOCOL in sd.meta.service_model.protocols, "this botocore's model has no CBOR"

# Wrong credentials are refused, as boto3's exception classes.
expect_error("UnrecognizedClientException", client(key="AKIDUNKNOWN").list_namespaces)
expect_error("InvalidSignatureException", client(secret="not-the-secret").list_namespaces)

# Namespaces: create (an operation that reaches SUCCESS), idempotency, conflicts.
op = sd.create_private_dns_namespace(
    Name="example.internal", Vpc="vpc-cairn", CreatorRequestId="ns-1",
    Tags=[{"Key": "team", "Value": "core"}],
)["OperationId"]
operation = other.get_operation(OperationId=op)["Operation"]
assert operation["Status"] == "SUCCESS" and operation["Type"] == "CREATE_NAMESPACE", operation
ns_id = operation["Targets"]["NAMESPACE"]
assert operation["CreateDate"].year >= 2024, operation
e = expect_error(
    "DuplicateRequest", sd.create_private_dns_namespace,
    Name="example.internal", Vpc="vpc-cairn", CreatorRequestId="ns-1",
)
assert isinstance(e, sd.exceptions.DuplicateRequest)
e = expect_error(
    "NamespaceAlreadyExists", sd.create_private_dns_namespace,
    Name="example.internal", Vpc="vpc-cairn", CreatorRequestId="ns-2",
)
assert isinstance(e, sd.exceptions.NamespaceAlreadyExists)
assert e.response["NamespaceId"] == ns_id, e.response
sd.create_http_namespace(Name="cairn-http", Description="for HTTP-only discovery")
ns = other.get_namespace(Id=ns_id)["Namespace"]
assert ns["Name"] == "example.internal" and ns["Type"] == "DNS_PRIVATE", ns
tags = sd.list_tags_for_resource(ResourceARN=ns["Arn"])["Tags"]
assert tags == [{"Key": "team", "Value": "core"}], tags
expect_error("NamespaceNotFound", sd.get_namespace, Id="ns-0000000000000000")

# Services: one with custom health, one with a TCP check.
web = sd.create_service(
    Name="web", NamespaceId=ns_id, CreatorRequestId="svc-web",
    DnsConfig={"RoutingPolicy": "MULTIVALUE", "DnsRecords": [{"Type": "A", "TTL": 30}]},
    HealthCheckCustomConfig={"FailureThreshold": 1},
)["Service"]
assert web["Id"] == "srv-web" and web["HealthCheckCustomConfig"]["FailureThreshold"] == 1, web
# The same request again answers the same service; another one is a conflict.
again = sd.create_service(
    Name="web", NamespaceId=ns_id, CreatorRequestId="svc-web",
    DnsConfig={"RoutingPolicy": "MULTIVALUE", "DnsRecords": [{"Type": "A", "TTL": 30}]},
    HealthCheckCustomConfig={"FailureThreshold": 1},
)["Service"]
assert again["Id"] == web["Id"], again
e = expect_error("ServiceAlreadyExists", sd.create_service, Name="web", NamespaceId=ns_id)
assert e.response["ServiceId"] == "srv-web", e.response
db = sd.create_service(
    Name="db", NamespaceId=ns_id,
    DnsConfig={"RoutingPolicy": "MULTIVALUE", "DnsRecords": [{"Type": "A", "TTL": 10}]},
    HealthCheckConfig={"Type": "TCP", "FailureThreshold": 1},
)["Service"]
assert other.get_service(Id=db["Id"])["Service"]["HealthCheckConfig"]["Type"] == "TCP"
expect_error("ServiceNotFound", sd.get_service, Id="srv-nope")
expect_error("NamespaceNotFound", sd.create_service, Name="x", NamespaceId="ns-0000000000000000")
expect_error("InvalidInput", sd.create_service, Name="Not_A_Label", NamespaceId=ns_id)

# Three instances; each registration's operation reaches SUCCESS on another node.
for n, zone in ((1, "a"), (2, "b"), (3, "b")):
    op = sd.register_instance(
        ServiceId=web["Id"], InstanceId=f"web-{n}", CreatorRequestId=f"reg-{n}",
        Attributes={"AWS_INSTANCE_IPV4": f"127.0.0.{n}", "AWS_INSTANCE_PORT": "8080", "zone": zone},
    )["OperationId"]
    operation = other.get_operation(OperationId=op)["Operation"]
    assert operation["Status"] == "SUCCESS", operation
    assert operation["Targets"]["INSTANCE"] == f"web-{n}", operation
e = expect_error(
    "InvalidInput", sd.register_instance, ServiceId=web["Id"], InstanceId="web-9",
    Attributes={"AWS_INSTANCE_IPV4": "127.0.0.9"},
)
assert "AWS_INSTANCE_PORT" in str(e), e
expect_error("OperationNotFound", sd.get_operation, OperationId="no-such-operation")
expect_error("InstanceNotFound", sd.get_instance, ServiceId=web["Id"], InstanceId="web-9")
inst = other.get_instance(ServiceId=web["Id"], InstanceId="web-2")["Instance"]
assert inst["Attributes"]["zone"] == "b", inst


def discover(c=other, **kw):
    return c.discover_instances(NamespaceName="example.internal", ServiceName=kw.pop("service", "web"), **kw)


found = discover()
assert ids(found["Instances"]) == ["web-1", "web-2", "web-3"], found
assert all(i["HealthStatus"] == "HEALTHY" for i in found["Instances"]), found
revision = found["InstancesRevision"]
assert other.discover_instances_revision(
    NamespaceName="example.internal", ServiceName="web"
)["InstancesRevision"] == revision
assert ids(discover(QueryParameters={"zone": "b"})["Instances"]) == ["web-2", "web-3"]
assert ids(discover(OptionalParameters={"zone": "a"})["Instances"]) == ["web-1"]
assert ids(discover(OptionalParameters={"zone": "c"})["Instances"]) == ["web-1", "web-2", "web-3"]
assert len(discover(MaxResults=2)["Instances"]) == 2
expect_error(
    "NamespaceNotFound", other.discover_instances, NamespaceName="nope.internal", ServiceName="web"
)
expect_error(
    "ServiceNotFound", other.discover_instances, NamespaceName="example.internal", ServiceName="nope"
)

# Custom health: one flips, then all, then HEALTHY_OR_ELSE_ALL falls back to every instance.
sd.update_instance_custom_health_status(ServiceId=web["Id"], InstanceId="web-1", Status="UNHEALTHY")
eventually("web-1 leaves HEALTHY", lambda: ids(discover()["Instances"]) == ["web-2", "web-3"])
assert ids(discover(HealthStatus="UNHEALTHY")["Instances"]) == ["web-1"]
status = other.get_instances_health_status(ServiceId=web["Id"])["Status"]
assert status == {"web-1": "UNHEALTHY", "web-2": "HEALTHY", "web-3": "HEALTHY"}, status
assert discover()["InstancesRevision"] > revision
for n in (2, 3):
    sd.update_instance_custom_health_status(ServiceId=web["Id"], InstanceId=f"web-{n}", Status="UNHEALTHY")
eventually("no instance HEALTHY", lambda: discover()["Instances"] == [])
assert ids(discover(HealthStatus="HEALTHY_OR_ELSE_ALL")["Instances"]) == ["web-1", "web-2", "web-3"]
assert ids(discover(HealthStatus="ALL")["Instances"]) == ["web-1", "web-2", "web-3"]
for n in (2, 3):
    sd.update_instance_custom_health_status(ServiceId=web["Id"], InstanceId=f"web-{n}", Status="HEALTHY")
eventually("web-2, web-3 HEALTHY", lambda: ids(discover()["Instances"]) == ["web-2", "web-3"])
expect_error(
    "CustomHealthNotFound", sd.update_instance_custom_health_status,
    ServiceId=db["Id"], InstanceId="db-1", Status="HEALTHY",
)

# A TCP health check: the target answers, then is killed, and drops out of HEALTHY within its
# FailureThreshold (1) of Cairn's 5 s probes.
target = socket.socket()
target.bind(("127.0.0.1", 0))
target.listen(16)
port = target.getsockname()[1]


def accept_loop():
    while True:
        try:
            conn, _ = target.accept()
            conn.close()
        except OSError:
            return


threading.Thread(target=accept_loop, daemon=True).start()
sd.register_instance(
    ServiceId=db["Id"], InstanceId="db-1",
    Attributes={"AWS_INSTANCE_IPV4": "127.0.0.1", "AWS_INSTANCE_PORT": str(port)},
)
time.sleep(6)  # a probe has run against the live target
assert ids(discover(service="db")["Instances"]) == ["db-1"]
target.close()
killed = time.time()
eventually("the killed target leaves HEALTHY", lambda: discover(service="db")["Instances"] == [], timeout=20)
print(f"killed TCP target left HEALTHY after {time.time() - killed:.1f}s")
assert ids(discover(service="db", HealthStatus="HEALTHY_OR_ELSE_ALL")["Instances"]) == ["db-1"]

# Paginators list everything, a page at a time.
pages = {"PageSize": 1}
names = [n["Name"] for p in other.get_paginator("list_namespaces").paginate(PaginationConfig=pages) for n in p["Namespaces"]]
assert sorted(names) == ["cairn-http", "example.internal"], names
services = [s["Name"] for p in other.get_paginator("list_services").paginate(
    Filters=[{"Name": "NAMESPACE_ID", "Values": [ns_id], "Condition": "EQ"}], PaginationConfig=pages
) for s in p["Services"]]
assert sorted(services) == ["db", "web"], services
instances = [i["Id"] for p in other.get_paginator("list_instances").paginate(
    ServiceId=web["Id"], PaginationConfig=pages) for i in p["Instances"]]
assert instances == ["web-1", "web-2", "web-3"], instances
operations = [o for p in sd.get_paginator("list_operations").paginate(PaginationConfig={"PageSize": 2})
              for o in p["Operations"]]
assert len(operations) >= 6 and all(o["Status"] == "SUCCESS" for o in operations), operations

# DiscoverInstances with the SDK's default `data-` host prefix: *.cairn.test resolves here.
real_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    if isinstance(host, str) and host.endswith("cairn.test"):
        host = "127.0.0.1"
    return real_getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = getaddrinfo
prefixed = client(OTHER.replace("127.0.0.1", "cairn.test"), prefix=True)
hosts = []
prefixed.meta.events.register("before-send.servicediscovery", lambda request, **_: hosts.append(request.url))
assert ids(discover(prefixed)["Instances"]) == ["web-2", "web-3"]
assert "://data-cairn.test:" in hosts[-1], hosts
socket.getaddrinfo = real_getaddrinfo

# Deregistering removes; a service with instances and a namespace with services stay.
expect_error("ResourceInUse", sd.delete_service, Id=db["Id"])
expect_error("ResourceInUse", sd.delete_namespace, Id=ns_id)
op = sd.deregister_instance(ServiceId=db["Id"], InstanceId="db-1")["OperationId"]
assert other.get_operation(OperationId=op)["Operation"]["Type"] == "DEREGISTER_INSTANCE"
assert discover(service="db", HealthStatus="ALL")["Instances"] == []
sd.delete_service(Id=db["Id"])
expect_error("ServiceNotFound", sd.get_service, Id=db["Id"])


def gone_on_other():
    # Another node's replica may lag the delete by the replication delay, as Cloud Map's reads
    # are eventually consistent.
    try:
        other.get_service(Id=db["Id"])
        return False
    except other.exceptions.ServiceNotFound:
        return True


eventually("the deleted service is gone on the other node", gone_on_other, timeout=5)

# One registry: the native API shows what Cloud Map registered.
with urllib.request.urlopen(f"{HTTP_URL}/v1/services/web?health=any&consistent") as res:
    native = json.load(res)
by_id = {i["id"]: i for i in native["instances"]}
assert sorted(by_id) == ["web-1", "web-2", "web-3"], native
assert by_id["web-2"]["address"] == "127.0.0.2" and by_id["web-2"]["meta"]["zone"] == "b", by_id

assert seen_protocols == {PROTOCOL}, seen_protocols
print(f"boto3 {boto3.__version__} ({PROTOCOL}): all checks passed")
