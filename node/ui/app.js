// The page: a router over the URL's fragment (#/services, #/services/<name>, #/cluster), the
// token box, and the banner that shows the last error.

import { ApiError, get, setToken, token } from "./api.js";
import { replace } from "./dom.js";
import { servicesView } from "./services.js";
import { serviceView } from "./service.js";
import { clusterView } from "./cluster.js";

const view = document.getElementById("view");
const banner = document.getElementById("banner");
const whoami = document.getElementById("whoami");
const tokenInput = document.getElementById("token");

/** What every view gets: where to draw, how to report an error, and its cancellation. */
function context(signal) {
  return {
    signal,
    error(e) {
      if (signal.aborted) return;
      if (!e) {
        banner.hidden = true;
        banner.textContent = "";
        return;
      }
      const code = e instanceof ApiError ? `${e.status} ${e.code}: ` : "";
      banner.textContent = `${code}${e.message}`;
      banner.hidden = false;
    },
  };
}

let current = null;

function route() {
  current?.abort();
  current = new AbortController();
  const ctx = context(current.signal);
  ctx.error(null);
  const hash = location.hash.replace(/^#\/?/, "");
  const parts = hash.split("/").map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  for (const a of document.querySelectorAll("header nav a")) a.classList.remove("active");
  replace(view);
  if (parts[0] === "cluster") {
    document.getElementById("nav-cluster").classList.add("active");
    document.title = "Cluster · Cairn";
    clusterView(view, ctx);
  } else if (parts[0] === "services" && parts[1]) {
    document.getElementById("nav-services").classList.add("active");
    document.title = `${parts[1]} · Cairn`;
    serviceView(view, ctx, parts[1]);
  } else {
    document.getElementById("nav-services").classList.add("active");
    document.title = "Services · Cairn";
    servicesView(view, ctx);
  }
}

/** Shows who the token is, as the node resolves it. */
async function showWhoami() {
  whoami.textContent = "";
  try {
    const { data } = await get("/v1/acl/whoami");
    if (!data.acl) whoami.textContent = "ACLs off";
    else if (!data.token) whoami.textContent = "anonymous";
    else {
      const policies = (data.token.policies || []).join(", ") || "no policies";
      whoami.textContent = `${data.token.description || data.token.accessor} (${policies})`;
    }
  } catch (e) {
    whoami.textContent = e instanceof ApiError && e.status === 403 ? "token refused" : "";
  }
}

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  setToken(tokenInput.value.trim());
  tokenInput.value = "";
  tokenInput.placeholder = token() ? "token set" : "ACL token";
  showWhoami();
  route();
});

document.getElementById("token-forget").addEventListener("click", () => {
  setToken("");
  tokenInput.value = "";
  tokenInput.placeholder = "ACL token";
  showWhoami();
  route();
});

tokenInput.placeholder = token() ? "token set" : "ACL token";
window.addEventListener("hashchange", route);
showWhoami();
route();
