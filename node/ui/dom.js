// Building the page from data without ever parsing data as HTML: every string given to `h`
// becomes a text node or an attribute value, never markup. Instance meta, tags and check
// output are written by whoever registers, so nothing here may interpret them.

/** Element `tag` with `props` (class, text, on<event> handlers, other attributes) and children. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key.startsWith("on")) {
      if (typeof value === "function") el.addEventListener(key.slice(2), value);
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replaces `el`'s children. */
export function replace(el, ...children) {
  el.replaceChildren();
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** A health or role badge: its class follows the value (passing, warning, critical, leader...). */
export function badge(value) {
  const known = ["passing", "warning", "critical", "leader", "follower", "candidate", "learner"];
  const cls = known.includes(value) ? value : "unknown";
  return h("span", { class: `badge ${cls}`, text: value });
}

/** `ms` (Unix milliseconds) as "2026-01-02 03:04:05Z (12 s ago)"; a dash for 0. */
export function when(ms) {
  if (!ms) return "—";
  const d = new Date(ms);
  const iso = d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  return `${iso} (${ago(Date.now() - ms)})`;
}

/** A duration in milliseconds, short. */
export function ago(ms) {
  if (ms < 0) ms = 0;
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}
