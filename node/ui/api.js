// The native API as the page calls it: every call carries the token the user gave (kept in
// sessionStorage, so it lasts as long as the tab and is sent only to this origin).

const TOKEN_KEY = "cairn.token";

/** Delay before a dropped watch stream is opened again. */
const RECONNECT_MS = 1000;

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(secret) {
  if (secret) sessionStorage.setItem(TOKEN_KEY, secret);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An API error: the status and the body's stable code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra = {}) {
  const h = { Accept: "application/json", ...extra };
  const t = token();
  if (t) h["X-Cairn-Token"] = t;
  return h;
}

async function failure(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  const code = body && typeof body.code === "string" ? body.code : `http_${res.status}`;
  const message = body && typeof body.message === "string" ? body.message : res.statusText;
  return new ApiError(res.status, code, message || `HTTP ${res.status}`);
}

/** `method path` with a JSON body; `{data, headers}` or an ApiError. */
export async function request(method, path, body, signal) {
  const init = { method, headers: headers(), signal, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (!res.ok) throw await failure(res);
  return { data: await res.json(), headers: res.headers };
}

export const get = (path, signal) => request("GET", path, undefined, signal);

/** A path segment. */
export const seg = (s) => encodeURIComponent(s);

/**
 * Follows a Server-Sent Events stream until `signal` aborts: calls `onEvent(type, data)` per
 * event and `onState(connected, error)` when the stream opens or drops. It is read with fetch
 * rather than EventSource, so that the token travels as a header (EventSource sends none, and a
 * token in the URL would end up in logs). A dropped stream is reopened with `Last-Event-ID`, so
 * the server replays what was missed; a refusal (4xx) stops it.
 */
export async function follow(path, signal, onEvent, onState) {
  let lastId = null;
  while (!signal.aborted) {
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (lastId !== null) h["Last-Event-ID"] = lastId;
      const res = await fetch(path, { headers: h, signal, cache: "no-store" });
      if (!res.ok) {
        const err = await failure(res);
        onState(false, err);
        if (res.status >= 400 && res.status < 500 && res.status !== 429) return;
      } else {
        onState(true, null);
        for await (const ev of parse(res.body, signal)) {
          if (ev.id !== null) lastId = ev.id;
          if (ev.type === "error") {
            let msg = "the stream was ended by the server";
            try {
              msg = JSON.parse(ev.data).message || msg;
            } catch {
              // keep the generic message
            }
            onState(false, new ApiError(403, "stream_ended", msg));
            return;
          }
          onEvent(ev.type, ev.data);
        }
        onState(false, null);
      }
    } catch (e) {
      if (signal.aborted) return;
      onState(false, e instanceof ApiError ? e : new Error("lost the connection to the node; reconnecting"));
    }
    await sleep(RECONNECT_MS, signal);
  }
}

/** The events of an SSE body: `{type, data, id}`. */
async function* parse(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let type = "message";
  let data = [];
  let id = null;
  try {
    while (!signal.aborted) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let nl;
      while ((nl = buf.search(/\r\n|\n|\r/)) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf.startsWith("\r\n", nl) ? 2 : 1));
        if (line === "") {
          if (data.length) yield { type, data: data.join("\n"), id };
          type = "message";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") type = value;
        else if (field === "data") data.push(value);
        else if (field === "id") id = value;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });
}
