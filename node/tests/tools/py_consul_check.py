"""Drives a Cairn node with py-consul, the Consul client library, as an application would.

usage: py_consul_check.py HOST:PORT      exits non-zero (with the reason) on any wrong result
"""
import http.server
import sys
import threading
import time

import consul


def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    c = consul.Consul(host=host, port=int(port))

    # A real HTTP endpoint for the HTTP check.
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = f"http://127.0.0.1:{server.server_port}/health"

    assert c.agent.service.register(
        "web",
        service_id="web-1",
        address="127.0.0.1",
        port=server.server_port,
        tags=["v1", "eu"],
        check=consul.Check.http(target, "1s", timeout="500ms"),
    ), "register web-1"
    assert c.agent.service.register(
        "jobs",
        service_id="job-1",
        address="127.0.0.1",
        port=9000,
        check=consul.Check.ttl("30s"),
    ), "register job-1"

    # The TTL check starts critical; a pass makes it passing.
    assert c.agent.check.ttl_pass("service:job-1", notes="alive"), "ttl_pass"
    deadline = time.time() + 15
    while True:
        _, passing_jobs = c.health.service("jobs", passing=True)
        _, passing_web = c.health.service("web", passing=True)
        if len(passing_jobs) == 1 and len(passing_web) == 1:
            break
        if time.time() > deadline:
            sys.exit(f"not passing in time: jobs={passing_jobs} web={passing_web}")
        time.sleep(0.2)
    entry = passing_web[0]
    assert entry["Service"]["ID"] == "web-1", entry
    assert entry["Service"]["Tags"] == ["eu", "v1"], entry
    assert entry["Checks"][0]["Status"] == "passing", entry

    index, services = c.catalog.services()
    assert index and int(index) >= 1, index
    assert set(services) == {"web", "jobs"}, services
    assert sorted(services["web"]) == ["eu", "v1"], services

    # Blocking on an index returns on a change.
    index, _ = c.health.service("web")
    result = {}

    def watch():
        result["index"], result["nodes"] = c.health.service("web", index=index, wait="20s")

    t = threading.Thread(target=watch)
    started = time.time()
    t.start()
    time.sleep(0.5)
    assert c.agent.service.register("web", service_id="web-2", address="127.0.0.1", port=9001), "register web-2"
    t.join(25)
    if t.is_alive() or time.time() - started > 15:
        sys.exit("blocking query did not return on the change")
    assert int(result["index"]) > int(index), result
    assert len(result["nodes"]) == 2, result

    assert c.agent.service.deregister("web-2"), "deregister"
    _, nodes = c.health.service("web")
    deadline = time.time() + 5
    while len(nodes) != 1 and time.time() < deadline:
        time.sleep(0.1)
        _, nodes = c.health.service("web")
    assert len(nodes) == 1, nodes
    print("py-consul: all checks passed")


if __name__ == "__main__":
    main()
