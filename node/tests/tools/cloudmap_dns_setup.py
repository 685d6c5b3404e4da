#!/usr/bin/env python3
"""Makes (or removes) a private DNS namespace through boto3, for the Cloud Map DNS tests.

Usage: cloudmap_dns_setup.py setup|teardown ENDPOINT HTTP_URL KEY_ID SECRET

setup: namespace `corp.internal` with
  - `api`: MULTIVALUE, A (TTL 15), AAAA (TTL 20) and SRV (TTL 25), custom health; instances
    api-0 .. api-9 with AWS_INSTANCE_IPV4 10.1.0.<n>, AWS_INSTANCE_IPV6 fd00::<n>, port 900<n>;
    api-0 then set UNHEALTHY;
  - `pay`: WEIGHTED, A only (TTL 7); pay-1 and pay-2 (10.2.0.1, 10.2.0.2) through Cloud Map
    (weight 1, as every Cloud Map registration), pay-3 (10.2.0.3) through the native API with
    weight 2.
teardown: deregisters every instance, deletes both services, then the namespace (Cloud Map
  refuses to delete a namespace that still has services, and a service with instances).
Prints `done` last.
"""

import json
import sys
import urllib.request

import boto3
from botocore.config import Config

ACTION, ENDPOINT, HTTP_URL, KEY_ID, SECRET = sys.argv[1:6]
sd = boto3.client(
    "servicediscovery",
    endpoint_url=ENDPOINT,
    region_name="us-east-1",
    aws_access_key_id=KEY_ID,
    aws_secret_access_key=SECRET,
    config=Config(inject_host_prefix=False, retries={"max_attempts": 1}),
)


def namespace_id():
    for n in sd.list_namespaces()["Namespaces"]:
        if n["Name"] == "corp.internal":
            return n["Id"]
    raise AssertionError("no namespace corp.internal")


if ACTION == "setup":
    op = sd.create_private_dns_namespace(Name="corp.internal", Vpc="vpc-cairn")["OperationId"]
    ns = sd.get_operation(OperationId=op)["Operation"]["Targets"]["NAMESPACE"]
    api = sd.create_service(
        Name="api", NamespaceId=ns,
        DnsConfig={"RoutingPolicy": "MULTIVALUE", "DnsRecords": [
            {"Type": "A", "TTL": 15}, {"Type": "AAAA", "TTL": 20}, {"Type": "SRV", "TTL": 25}]},
        HealthCheckCustomConfig={"FailureThreshold": 1},
    )["Service"]
    for n in range(10):
        sd.register_instance(ServiceId=api["Id"], InstanceId=f"api-{n}", Attributes={
            "AWS_INSTANCE_IPV4": f"10.1.0.{n}", "AWS_INSTANCE_IPV6": f"fd00::{n}",
            "AWS_INSTANCE_PORT": f"900{n}"})
    sd.update_instance_custom_health_status(ServiceId=api["Id"], InstanceId="api-0", Status="UNHEALTHY")
    pay = sd.create_service(
        Name="pay", NamespaceId=ns,
        DnsConfig={"RoutingPolicy": "WEIGHTED", "DnsRecords": [{"Type": "A", "TTL": 7}]},
    )["Service"]
    for n in (1, 2):
        sd.register_instance(ServiceId=pay["Id"], InstanceId=f"pay-{n}", Attributes={
            "AWS_INSTANCE_IPV4": f"10.2.0.{n}", "AWS_INSTANCE_PORT": "443"})
    # One registry: an instance registered natively joins the Cloud Map service, with a weight.
    body = json.dumps({"address": "10.2.0.3", "port": 443, "weight": 2}).encode()
    req = urllib.request.Request(f"{HTTP_URL}/v1/services/pay/instances/pay-3", data=body,
                                 method="PUT", headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as res:
        assert res.status < 300, res.status
    found = sd.discover_instances(NamespaceName="corp.internal", ServiceName="pay")["Instances"]
    assert sorted(i["InstanceId"] for i in found) == ["pay-1", "pay-2", "pay-3"], found
elif ACTION == "teardown":
    ns = namespace_id()
    for service in ("api", "pay"):
        sid = f"srv-{service}"
        for inst in sd.list_instances(ServiceId=sid)["Instances"]:
            sd.deregister_instance(ServiceId=sid, InstanceId=inst["Id"])
        sd.delete_service(Id=sid)
    sd.delete_namespace(Id=ns)
else:
    raise SystemExit(f"unknown action {ACTION}")
print("done")
