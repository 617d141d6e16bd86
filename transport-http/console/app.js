// The console's shell: login when the node asks for a token, the router
// (#/services, #/service/ns/group/name, #/history, #/cluster), the brake
// banner, and the live loop: one long poll on /console/api/changes; each
// change refreshes the page shown (at most every 300 ms).

import { h, put, notify } from "./dom.js";
import * as api from "./api.js";
import * as pages from "./pages.js";

const main = document.getElementById("main");
const ctx = { canWrite: false, session: null, go: (hash) => { location.hash = hash; }, brake: showBrake };
let page = null;
let timer = null;

function showBrake(engaged) {
  const b = document.getElementById("banner");
  put(b, engaged ? h("div", { class: "banner", role: "alert", id: "brake-banner" },
    "Expiry brake engaged: this node holds back removals of silent instances (marked unhealthy, not removed). See Cluster.") : null);
}

function login(message) {
  document.body.classList.add("locked");
  put(document.getElementById("nav-node"));
  const input = h("input", { id: "token", type: "password", autocomplete: "current-password", required: true });
  put(main, h("section", { class: "login" },
    h("h1", {}, "Sign in"),
    h("p", {}, message),
    h("form", { id: "login", onsubmit: async (e) => {
      e.preventDefault();
      api.setToken(input.value.trim());
      await start();
    } },
      h("div", { class: "field" }, h("label", { for: "token" }, "Token (read or write)"), input),
      h("button", { class: "primary", type: "submit" }, "Sign in"))));
  input.focus();
}

async function start() {
  let session;
  try {
    session = await api.get("/console/api/session");
  } catch (e) {
    if (e.status === 401) {
      const had = !!api.token();
      api.setToken("");
      login(had ? "That token was refused. This node needs a token to show anything." : "This node needs a token to show anything.");
    } else {
      put(main, h("p", { class: "error" }, `The node did not answer: ${e.message}`));
      setTimeout(start, 2000);
    }
    return;
  }
  ctx.session = session;
  ctx.canWrite = true;
  if (session.write_protected) {
    try { await api.call("POST", "/console/api/session"); } catch { ctx.canWrite = false; }
  }
  document.body.classList.remove("locked");
  document.body.classList.toggle("readonly", !ctx.canWrite);
  put(document.getElementById("nav-node"),
    h("span", { id: "node-id", title: "the node serving this console" }, `node ${session.node}`),
    ctx.canWrite ? null : h("span", { class: "mark warn", id: "read-only" }, "read-only"),
    api.token() ? h("button", { class: "link", id: "logout", onclick: () => { api.setToken(""); location.reload(); } }, "Sign out") : null);
  route();
  live();
}

function route() {
  if (!ctx.session) return;
  const hash = location.hash || "#/services";
  const [path, query] = hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  clearInterval(timer);
  for (const a of document.querySelectorAll("#nav a")) {
    a.toggleAttribute("aria-current", a.getAttribute("href").slice(2) === (parts[0] === "service" ? "services" : parts[0]));
  }
  if (parts[0] === "service" && parts.length === 4) page = pages.service(main, params, ctx, parts.slice(1));
  else if (parts[0] === "history") page = pages.history(main, params, ctx);
  else if (parts[0] === "cluster") page = pages.cluster(main, params, ctx);
  else page = pages.services(main, params, ctx);
  page.refresh();
  if (page.every) timer = setInterval(() => page.refresh(), page.every);
}

let liveRunning = false;
async function live() {
  if (liveRunning) return;
  liveRunning = true;
  let seq = null;
  let last = 0;
  for (;;) {
    try {
      const r = await api.get("/console/api/changes", seq === null ? {} : { since: seq, wait: "25s" });
      const changed = seq !== null && r.seq !== seq;
      seq = r.seq;
      if (changed) {
        const wait = Math.max(0, 300 - (Date.now() - last));
        if (wait) await new Promise((ok) => setTimeout(ok, wait));
        last = Date.now();
        page?.refresh();
        refreshBrake();
      }
    } catch (e) {
      if (e.status === 401) { liveRunning = false; login("Your token is no longer accepted."); return; }
      await new Promise((ok) => setTimeout(ok, 2000));
    }
  }
}

async function refreshBrake() {
  try { showBrake((await api.get("/console/api/cluster")).brake_engaged); } catch { /* shown by the pages */ }
}

window.addEventListener("hashchange", route);
window.addEventListener("unhandledrejection", (e) => notify(String(e.reason?.message || e.reason), true));
start().then(refreshBrake);
setInterval(refreshBrake, 10000);
