// A service's page: every instance with its address, port, weight, tags, meta, health and each
// check (status, output, last change). It follows the service's watch stream, so a change (a
// health flip, a registration, a deregistration) shows as soon as this node applies it. The
// write buttons send the token's request; the node allows or refuses it (403 in the banner).

import { follow, request, seg } from "./api.js";
import { badge, h, replace, when } from "./dom.js";

export function serviceView(root, ctx, name) {
  const live = h("span", { id: "live", class: "live off", text: "connecting…" });
  const list = h("div", { id: "instances" });
  const index = h("span", { id: "service-index", class: "muted" });
  replace(root,
    h("p", { class: "crumbs" }, h("a", { href: "#/services", text: "Services" }), " / "),
    h("div", { class: "bar" }, h("h1", { id: "service-name", text: name }), live, index),
    list);

  let instances = null;
  // The last data drawn, so a redraw after a write's answer is not needed: the stream brings it.
  const draw = () => {
    if (instances === null) return;
    const sorted = [...instances].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    replace(list, sorted.length
      ? sorted.map((i) => card(name, i, ctx))
      : h("p", { id: "no-instances", class: "muted", text: "No instances." }));
  };
  // Relative times ("12 s ago") move on their own.
  // (Not while the user types in an instance's form, which a redraw would clear.)
  const tick = setInterval(() => {
    if (!list.contains(document.activeElement)) draw();
  }, 10000);
  ctx.signal.addEventListener("abort", () => clearInterval(tick), { once: true });

  follow(`/v1/services/${seg(name)}/watch`, ctx.signal, (type, data) => {
    if (type !== "state" && type !== "change") return;
    let body;
    try {
      body = JSON.parse(data);
    } catch {
      return;
    }
    instances = Array.isArray(body.instances) ? body.instances : [];
    index.textContent = `index ${body.index}`;
    draw();
  }, (connected, err) => {
    live.textContent = connected ? "live" : "reconnecting…";
    live.className = connected ? "live on" : "live off";
    ctx.error(err);
  });
}

function card(service, inst, ctx) {
  const base = `/v1/services/${seg(service)}/instances/${seg(inst.id)}`;
  // A write: the stream shows its effect; only a refusal or a failure needs showing here.
  const write = async (method, path, body) => {
    try {
      await request(method, path, body, ctx.signal);
      ctx.error(null);
    } catch (e) {
      ctx.error(e);
    }
  };
  const meta = Object.entries(inst.meta || {});
  const healthStatus = h("select", { "aria-label": "Custom health status", class: "health-status" },
    ["passing", "warning", "critical"].map((s) => h("option", { value: s, text: s })));
  const healthOutput = h("input", { type: "text", class: "health-output", placeholder: "Output (optional)", maxlength: 4096, "aria-label": "Custom health output" });
  const inMaintenance = Boolean(inst.maintenance);

  return h("section", { class: `instance ${inst.health}`, "data-instance": inst.id },
    h("header", {},
      h("h2", { text: inst.id }),
      h("span", { class: "health", "data-health": inst.health }, badge(inst.health)),
      h("span", { class: "addr", text: `${inst.address}:${inst.port}` }),
      h("span", { class: "muted", text: `weight ${inst.weight}` })),
    inst.tags.length ? h("p", { class: "tags" }, inst.tags.map((t) => h("span", { class: "tag", text: t }))) : null,
    meta.length
      ? h("dl", { class: "meta" }, meta.map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]))
      : null,
    inst.maintenance ? state("Maintenance", inst.maintenance) : null,
    inst.custom_health ? state("Custom health", inst.custom_health) : null,
    inst.checks.length
      ? h("table", { class: "checks" },
        h("thead", {}, h("tr", {},
          h("th", { text: "Check" }), h("th", { text: "Status" }),
          h("th", { text: "Output" }), h("th", { text: "Last change" }))),
        h("tbody", {}, inst.checks.map((c) => h("tr", { "data-check": c.id },
          h("td", { "data-label": "Check" }, h("span", { text: c.id }), " ", h("span", { class: "muted", text: describe(c.definition) })),
          h("td", { "data-label": "Status", class: "check-status" }, badge(c.status)),
          h("td", { "data-label": "Output" }, h("pre", { class: "output", text: c.output || "" })),
          h("td", { "data-label": "Last change", class: "changed", text: when(c.changed_at_ms) })))))
      : h("p", { class: "muted", text: "No checks: passing unless set otherwise." }),
    h("div", { class: "actions" },
      h("button", {
        type: "button", "data-action": "deregister", class: "danger", text: "Deregister",
        onclick: () => {
          if (confirm(`Deregister ${inst.id} from ${service}?`)) write("DELETE", base);
        },
      }),
      h("button", {
        type: "button", "data-action": "maintenance", text: inMaintenance ? "End maintenance" : "Maintenance",
        onclick: () => write("PUT", `${base}/maintenance`, { enable: !inMaintenance }),
      }),
      h("span", { class: "set-health" },
        healthStatus, healthOutput,
        h("button", {
          type: "button", "data-action": "health", text: "Set health",
          onclick: () => {
            const body = { status: healthStatus.value };
            if (healthOutput.value) body.output = healthOutput.value;
            write("PUT", `${base}/health`, body);
          },
        }))));
}

function state(label, s) {
  return h("p", { class: "state" }, h("strong", { text: `${label}: ` }), badge(s.status), " ",
    h("span", { text: s.output || "" }), " ", h("span", { class: "muted", text: when(s.changed_at_ms) }));
}

/** A check's definition in a few words: `http GET http://...`, `tcp host:port`, `ttl 30s`. */
function describe(d) {
  if (!d) return "";
  const parts = [d.kind];
  if (d.kind === "http") parts.push(d.method || "GET", d.url || "");
  if (d.kind === "tcp" && d.target) parts.push(d.target);
  if (d.kind === "ttl" && d.ttl) parts.push(d.ttl);
  if (d.interval) parts.push(`every ${d.interval}`);
  return parts.join(" ");
}
