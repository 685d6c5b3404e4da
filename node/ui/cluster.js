// The cluster page: the members, their roles, the leader and term, and this node's log indexes,
// lag and last contact with the leader, as `GET /v1/cluster` on the node serving the page
// reports them, read again every second (a leader change moves no index to block on).

import { get, sleep } from "./api.js";
import { badge, h, replace } from "./dom.js";

const REFRESH_MS = 1000;

export function clusterView(root, ctx) {
  const summary = h("dl", { id: "cluster-summary", class: "summary" });
  const body = h("tbody");
  const updated = h("span", { id: "cluster-updated", class: "muted" });
  replace(root,
    h("div", { class: "bar" }, h("h1", { text: "Cluster" }), updated),
    summary,
    h("h2", { text: "Members" }),
    h("table", { id: "members", class: "list" },
      h("thead", {}, h("tr", {},
        h("th", { text: "Node" }), h("th", { text: "Role" }), h("th", { text: "Cluster RPC" }),
        h("th", { class: "num", text: "Matched index" }), h("th", { class: "num", text: "Lag" }))),
      body));

  (async () => {
    while (!ctx.signal.aborted) {
      try {
        const { data } = await get("/v1/cluster", ctx.signal);
        draw(data, summary, body);
        updated.textContent = `as node ${data.node_id} sees it, ${new Date().toLocaleTimeString()}`;
        ctx.error(null);
      } catch (e) {
        if (ctx.signal.aborted) return;
        ctx.error(e);
        updated.textContent = "not current: the node did not answer";
      }
      await sleep(REFRESH_MS, ctx.signal);
    }
  })();
}

function draw(c, summary, body) {
  const item = (label, value, id) => h("div", {}, h("dt", { text: label }), h("dd", { id }, value));
  const contact = c.last_contact_ms === null || c.last_contact_ms === undefined
    ? "never" : c.role === "leader" ? "— (is the leader)" : `${c.last_contact_ms} ms ago`;
  replace(summary,
    item("Cluster", c.cluster, "cluster-name"),
    item("Leader", c.leader === null || c.leader === undefined ? "none" : `node ${c.leader}`, "cluster-leader"),
    item("Term", c.term, "cluster-term"),
    item("This node", [`node ${c.node_id} `, badge(c.role)], "cluster-node"),
    item("Last log index", c.last_log_index, "cluster-last-log"),
    item("Commit index", c.commit_index, "cluster-commit"),
    item("Applied index", c.applied_index, "cluster-applied"),
    item("Apply lag", `${Math.max(0, c.commit_index - c.applied_index)} entries`, "cluster-lag"),
    item("Snapshot index", c.snapshot_index, "cluster-snapshot"),
    item("Last contact with the leader", contact, "cluster-contact"));
  const members = [...c.members].sort((a, b) => a.id - b.id);
  replace(body, members.map((m) => {
    const role = m.id === c.leader ? "leader" : m.voter ? "follower" : "learner";
    const progress = (c.replication || []).find((p) => p.id === m.id);
    const matched = progress ? progress.matched_index : null;
    return h("tr", { "data-member": m.id, class: m.id === c.node_id ? "self" : "" },
      h("td", { "data-label": "Node", text: m.id === c.node_id ? `${m.id} (this node)` : m.id }),
      h("td", { "data-label": "Role", class: "role" }, badge(role)),
      h("td", { "data-label": "Cluster RPC", text: m.rpc_addr }),
      h("td", { class: "num matched", "data-label": "Matched index", text: matched === null ? "—" : matched }),
      h("td", { class: "num lag", "data-label": "Lag", text: matched === null ? "—" : Math.max(0, c.last_log_index - matched) }));
  }));
}
