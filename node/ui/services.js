// The services page: every service the token may read, sorted by name, with its tags and its
// instances counted by health, and a filter box. It stays current with a blocking read that
// returns at once when a service appears or goes, and every few seconds for the counts.

import { get, seg, sleep } from "./api.js";
import { h, replace } from "./dom.js";

/** How long a read waits for the list to change before it refreshes the counts anyway. */
const WAIT = "2s";

/** The filter, kept while the tab lives, so coming back from a service keeps it. */
let filterText = "";

export function servicesView(root, ctx) {
  const filter = h("input", {
    id: "filter",
    type: "search",
    placeholder: "Filter by name or tag",
    "aria-label": "Filter services by name or tag",
    value: filterText,
  });
  const note = h("p", { id: "filtered", class: "muted", hidden: true });
  const body = h("tbody");
  const table = h("table", { id: "services", class: "list" },
    h("thead", {}, h("tr", {},
      h("th", { text: "Service" }),
      h("th", { text: "Tags" }),
      h("th", { class: "num", text: "Instances" }),
      h("th", { class: "num", text: "Passing" }),
      h("th", { class: "num", text: "Warning" }),
      h("th", { class: "num", text: "Critical" }))),
    body);
  const empty = h("p", { id: "services-empty", class: "muted", hidden: true });
  replace(root, h("div", { class: "bar" }, h("h1", { text: "Services" }), filter), note, table, empty);

  let services = [];
  const draw = () => {
    const f = filterText.trim().toLowerCase();
    const shown = services
      .filter((s) => !f || s.name.includes(f) || s.tags.some((t) => t.includes(f)))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    replace(body, shown.map(row));
    table.hidden = shown.length === 0;
    empty.hidden = shown.length > 0;
    empty.textContent = services.length === 0 ? "No services registered." : "No service matches the filter.";
  };
  const onFilter = () => {
    filterText = filter.value;
    draw();
  };
  filter.addEventListener("input", onFilter);
  filter.addEventListener("change", onFilter);

  (async () => {
    let index = 0;
    while (!ctx.signal.aborted) {
      try {
        const q = index ? `?index=${index}&wait=${WAIT}` : "";
        const { data, headers } = await get(`/v1/services${q}`, ctx.signal);
        index = data.index;
        services = data.services;
        note.hidden = headers.get("X-Cairn-Filtered") !== "true";
        note.textContent = "Some services are not shown: the token may not read them.";
        ctx.error(null);
        draw();
      } catch (e) {
        if (ctx.signal.aborted) return;
        ctx.error(e);
        index = 0;
        await sleep(2000, ctx.signal);
      }
    }
  })();
}

function row(s) {
  const href = `#/services/${seg(s.name)}`;
  return h("tr", { "data-service": s.name },
    h("td", { "data-label": "Service" }, h("a", { href, text: s.name })),
    h("td", { "data-label": "Tags" }, s.tags.map((t) => h("span", { class: "tag", text: t }))),
    h("td", { class: "num", "data-label": "Instances", text: s.instances }),
    h("td", { class: "num passing-count", "data-label": "Passing", text: s.passing }),
    h("td", { class: s.warning ? "num warning-count some" : "num warning-count", "data-label": "Warning", text: s.warning }),
    h("td", { class: s.critical ? "num critical-count some" : "num critical-count", "data-label": "Critical", text: s.critical }));
}
