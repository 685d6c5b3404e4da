"""Schemathesis hooks for scripts/api-fuzz: the check that a refused request stored nothing.

Every change made through the API is in the audit list (`GET /v1/audit`) with the accessor of
the token that made it: registrations, health, maintenance, settings, tokens, policies. The
nodes' own bookkeeping (check results, liveness, token expiry) is not audited, and what a node
removes by itself (`deregister_after`) has no accessor. Schemathesis runs one request at a time
(`--workers 1`), so an audited change with an accessor that appears while a request is answered
was made by that request. The check reads the leader's audit list after every response: a
refused request (any status but 2xx) must leave no such entry behind.

Settings come from the environment: CAIRN_FUZZ_NODES (comma-separated HTTP addresses of the
nodes) and CAIRN_FUZZ_TOKEN (the management token's secret).
"""

import json
import os
import urllib.request

import schemathesis

NODES = [n for n in os.environ.get("CAIRN_FUZZ_NODES", "").split(",") if n]
TOKEN = os.environ.get("CAIRN_FUZZ_TOKEN", "")


def _get(node, path):
    req = urllib.request.Request(f"http://{node}{path}", headers={"X-Cairn-Token": TOKEN})
    with urllib.request.urlopen(req, timeout=10) as res:
        return json.load(res)


def _leader():
    for node in NODES:
        status = _get(node, "/v1/cluster")
        leader = status.get("leader")
        for m in status.get("members", []):
            if m["id"] == leader:
                # The member's HTTP address is not in the status; nodes are listed in id order.
                return NODES[leader - 1]
    raise AssertionError("no node knows a leader")


def _api_changes():
    """Index and op of every audited change made through the API (with an accessor)."""
    entries = _get(_leader(), "/v1/audit")["entries"]
    return {(e["index"], e["op"], e.get("service"), e.get("id")) for e in entries if e.get("accessor")}


def _own_accessor():
    return _get(NODES[0], "/v1/acl/whoami")["token"]["accessor"] if NODES else None


# The fuzzer's own token: its accessor shows in token lists, and the stateful phase would feed it
# to DELETE and PUT /v1/acl/tokens/{accessor}, locking the rest of the run out. Requests naming it
# are sent for a token that does not exist instead.
OWN_ACCESSOR = _own_accessor()


@schemathesis.hook
def before_call(context, case, kwargs):
    params = case.path_parameters or {}
    if OWN_ACCESSOR and params.get("accessor") == OWN_ACCESSOR:
        params["accessor"] = "not-the-fuzzers-own-token"


class _Seen:
    # Taken when schemathesis loads the hooks, before its first request.
    changes = _api_changes() if NODES else None


@schemathesis.check
def refused_requests_store_nothing(ctx, response, case):
    """A request answered with anything but 2xx adds nothing to the audit list."""
    if not NODES:
        raise AssertionError("CAIRN_FUZZ_NODES is not set")
    now = _api_changes()
    before = _Seen.changes
    _Seen.changes = now if before is None else before | now
    if before is None or 200 <= response.status_code < 300:
        return None
    new = sorted(now - before)
    if new:
        raise AssertionError(
            f"a request refused with {response.status_code} changed stored data: {new}"
        )
    return None
