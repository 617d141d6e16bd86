// The console's pages. Each is a function (main, params, ctx) that draws the
// page's frame once and returns { refresh }, which the live loop calls on
// every change: only the data parts are replaced, so filters keep their
// focus and nothing flickers.

import { h, put, flag, age, time, dialog, confirmStep, notify } from "./dom.js";
import * as api from "./api.js";

const link = (hash, text, attrs = {}) => h("a", { href: hash, ...attrs }, text);
const svcHash = (ns, group, name) =>
  `#/service/${encodeURIComponent(ns)}/${encodeURIComponent(group)}/${encodeURIComponent(name)}`;
const metaText = (m) => Object.entries(m || {}).map(([k, v]) => `${k}=${v}`).join("\n");
const table = (cls, head, body) => h("div", { class: "scroll" },
  h("table", { class: cls }, h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))), body));

function parseMeta(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const t = line.trim();
    if (!t) continue;
    const i = t.indexOf("=");
    if (i <= 0) throw new Error(`metadata line "${t}" is not key=value`);
    out[t.slice(0, i)] = t.slice(i + 1);
  }
  return out;
}

async function act(what, f) {
  try { await f(); notify(what); return true; } catch (e) { notify(e.message, true); return false; }
}

function pager(page, pageSize, total, go) {
  const pages = Math.max(1, Math.ceil(total / pageSize));
  return h("nav", { class: "pager", "aria-label": "Pages" },
    h("button", { class: "secondary", disabled: page <= 1, onclick: () => go(page - 1) }, "‹ Previous"),
    h("span", {}, `page ${page} of ${pages} (${total})`),
    h("button", { class: "secondary", disabled: page >= pages, onclick: () => go(page + 1) }, "Next ›"));
}

// ---- Services --------------------------------------------------------

export function services(main, params, ctx) {
  const state = { namespace: params.get("namespace") || "public", group: params.get("group") || "",
    search: params.get("search") || "", page: Number(params.get("page")) || 1, page_size: 50 };
  const nsSelect = h("select", { id: "namespace", onchange: () => { state.namespace = nsSelect.value; state.page = 1; refresh(); } });
  const group = h("input", { id: "group", type: "search", placeholder: "all groups", value: state.group });
  const search = h("input", { id: "search", type: "search", placeholder: "name contains…", value: state.search });
  let timer;
  const typed = () => { clearTimeout(timer); timer = setTimeout(() => {
    state.group = group.value.trim(); state.search = search.value.trim(); state.page = 1; refresh();
  }, 250); };
  group.addEventListener("input", typed);
  search.addEventListener("input", typed);
  const findInput = h("input", { id: "find-ip", type: "search", placeholder: "10.0.0.7 or 10.0.0.7:8080" });
  const findOut = h("div", { id: "find-result" });
  const find = async (e) => {
    e.preventDefault();
    const ip = findInput.value.trim();
    if (!ip) { put(findOut); return; }
    try {
      const r = await api.get("/console/api/find", { ip });
      put(findOut, r.instances.length === 0 ? h("p", { class: "muted" }, "No instance on that host.") :
        h("ul", { class: "found" }, r.instances.map((i) => h("li", {},
          link(svcHash(i.namespace, i.group, i.service), `${i.namespace} / ${i.group} / ${i.service}`),
          ` ${i.ip}:${i.port} (${i.cluster})`))),
        r.truncated ? h("p", { class: "muted" }, "Only the first 500 are shown.") : null);
    } catch (err) { put(findOut, h("p", { class: "error" }, err.message)); }
  };
  const list = h("div", { id: "services-list", "aria-live": "polite" });
  put(main,
    h("h1", {}, "Services"),
    h("form", { class: "toolbar", role: "search", onsubmit: (e) => e.preventDefault() },
      h("label", {}, "Namespace ", nsSelect), h("label", {}, "Group ", group), h("label", {}, "Name ", search)),
    list,
    h("section", { class: "find" }, h("h2", {}, "Find an instance by host"),
      h("form", { class: "toolbar", onsubmit: find },
        h("label", {}, "IP or ip:port ", findInput), h("button", { class: "primary", type: "submit" }, "Find")),
      findOut));

  async function namespaces() {
    try {
      const r = await api.get("/v1/namespaces");
      const names = r.namespaces.map((n) => n.namespace);
      if (!names.includes(state.namespace)) names.push(state.namespace);
      put(nsSelect, names.map((n) => h("option", { value: n }, n)));
      nsSelect.value = state.namespace;
    } catch { /* the list below shows the error */ }
  }

  async function refresh() {
    namespaces();
    let r;
    try {
      r = await api.get("/v1/services", { namespace: state.namespace, group: state.group, search: state.search,
        page: state.page, page_size: state.page_size });
    } catch (e) { put(list, h("p", { class: "error" }, e.message)); return; }
    const rows = r.services.map((s) => {
      const below = s.protect_threshold > 0 && s.instances > 0 && s.healthy_instances < s.protect_threshold * s.instances;
      return h("tr", { "data-service": s.service },
        h("td", {}, link(svcHash(s.namespace, s.group, s.service), s.service)),
        h("td", {}, s.group),
        h("td", { class: "num" }, s.instances),
        h("td", { class: "num" }, h("span", { class: s.healthy_instances < s.instances ? "mark warn" : "" }, s.healthy_instances)),
        h("td", {}, below ? h("span", { class: "mark bad", title: "healthy share below the protect threshold: queries return every instance" }, "protect threshold reached") :
          s.protect_threshold > 0 ? `threshold ${s.protect_threshold}` : "–"));
    });
    put(list,
      table("services", ["Service", "Group", "Instances", "Healthy", "Protection"],
        h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No services.")))),
      pager(r.page, r.page_size, r.total, (p) => { state.page = p; refresh(); }));
  }
  return { refresh };
}

// ---- One service -------------------------------------------------------

export function service(main, params, ctx, [ns, group, name]) {
  const svc = { namespace: ns, group, service: name };
  const f = { healthy: "", enabled: "", ephemeral: "", cluster: "", metadata: "", search: "", page: 1 };
  const selected = new Set();
  let current = null;
  const head = h("div", { id: "service-head" });
  const body = h("div", { id: "instances", "aria-live": "polite" });
  const bulk = h("div", { id: "bulk", class: "bulk" });
  const tri = (id, label) => {
    const s = h("select", { id, onchange: () => { f[id] = s.value; f.page = 1; refresh(); } },
      h("option", { value: "" }, "any"), h("option", { value: "true" }, "yes"), h("option", { value: "false" }, "no"));
    return h("label", {}, `${label} `, s);
  };
  const text = (id, label, ph) => {
    const i = h("input", { id: `filter-${id}`, type: "search", placeholder: ph });
    let t;
    i.addEventListener("input", () => { clearTimeout(t); t = setTimeout(() => { f[id] = i.value.trim(); f.page = 1; refresh(); }, 250); });
    return h("label", {}, `${label} `, i);
  };
  put(main,
    h("p", { class: "crumbs" }, link("#/services", "Services"), ` › ${ns} › ${group}`),
    h("h1", {}, name),
    head,
    h("h2", {}, "Instances"),
    h("form", { class: "toolbar", onsubmit: (e) => e.preventDefault() },
      tri("healthy", "Healthy"), tri("enabled", "Enabled"), tri("ephemeral", "Ephemeral"),
      text("cluster", "Cluster", "DEFAULT"), text("metadata", "Metadata", "key=value"), text("search", "Address", "10.0.0.")),
    ctx.canWrite ? bulk : null,
    body,
    h("p", {}, link(`#/history?namespace=${encodeURIComponent(ns)}&group=${encodeURIComponent(group)}&service=${encodeURIComponent(name)}`, "History of this service")));

  const selectedInstances = () => (current ? current.instances.filter((i) => selected.has(i.instance_id)) : []);

  function drawBulk() {
    if (!ctx.canWrite) return;
    const n = selectedInstances().length;
    const run = async (verb, okLabel, danger, change) => {
      const items = selectedInstances();
      if (!items.length) return;
      let extra;
      if (change === "weight") {
        const v = await dialog(`Set the weight of ${items.length} instance(s)`, [{ name: "weight", label: "Weight (0 to 10000)", type: "number", step: "any", min: 0, max: 10000, value: 1 }]);
        if (!v) return;
        extra = { weight: Number(v.weight) };
      } else if (!(await confirmStep(`${verb} ${items.length} instance(s)?`, okLabel))) return;
      let ok = 0; const errors = [];
      for (const i of items) {
        try {
          if (change === "deregister") await api.deregister(svc, i);
          else await api.patchInstance(svc, i, extra || change);
          ok++;
        } catch (e) { errors.push(`${i.ip}:${i.port}: ${e.message}`); }
      }
      selected.clear();
      if (errors.length) notify(`${ok} done; refused: ${errors.join("; ")}`, true); else notify(`${verb}: ${ok} instance(s)`);
      refresh();
    };
    put(bulk, h("span", { id: "bulk-count" }, `${n} selected`),
      h("button", { class: "secondary", disabled: !n, onclick: () => run("Enable", "Enable", false, { enabled: true }) }, "Enable"),
      h("button", { class: "secondary", disabled: !n, onclick: () => run("Disable", "Disable", true, { enabled: false }) }, "Disable"),
      h("button", { class: "secondary", disabled: !n, onclick: () => run("Set weight", "Save", false, "weight") }, "Set weight"),
      h("button", { class: "danger", disabled: !n, onclick: () => run("Deregister", "Deregister", true, "deregister") }, "Deregister"));
  }

  function drawHead(r) {
    const editThreshold = async () => {
      const v = await dialog("Protect threshold", [{ name: "t", label: "Share of healthy instances below which queries return all (0 to 1)", type: "number", step: "any", min: 0, max: 1, value: r.protect_threshold }]);
      if (v && await act("Protect threshold saved", () => api.putService(svc, { protect_threshold: Number(v.t) }))) refresh();
    };
    const editMeta = async () => {
      const v = await dialog("Service metadata", [{ name: "m", label: "One key=value per line", type: "textarea", value: metaText(r.metadata) }]);
      if (!v) return;
      let metadata;
      try { metadata = parseMeta(v.m); } catch (e) { notify(e.message, true); return; }
      if (await act("Metadata saved", () => api.putService(svc, { metadata }))) refresh();
    };
    const del = async () => {
      if (!(await confirmStep(`Delete the service ${name}? It must have no instances.`, "Delete"))) return;
      if (await act(`Deleted ${name}`, () => api.deleteService(svc))) ctx.go("#/services");
    };
    put(head, h("dl", { class: "facts" },
      h("dt", {}, "Instances"), h("dd", { id: "count-total" }, r.total),
      h("dt", {}, "Healthy"), h("dd", { id: "count-healthy" }, r.healthy),
      h("dt", {}, "Protect threshold"), h("dd", {}, String(r.protect_threshold), " ",
        r.protect_threshold_reached ? h("span", { class: "mark bad", id: "protect-reached" }, "reached: queries return every instance") : null,
        ctx.canWrite ? h("button", { class: "link", onclick: editThreshold }, "edit") : null),
      h("dt", {}, "Metadata"), h("dd", {}, Object.keys(r.metadata).length ? metaList(r.metadata) : "–",
        ctx.canWrite ? h("button", { class: "link", onclick: editMeta }, "edit") : null)),
      ctx.canWrite ? h("p", {}, h("button", { class: "danger", id: "delete-service", onclick: del }, "Delete service")) : null);
  }

  function row(i) {
    const edit = async () => {
      const v = await dialog(`Edit ${i.ip}:${i.port}`, [
        { name: "weight", label: "Weight (0 to 10000)", type: "number", step: "any", min: 0, max: 10000, value: i.weight },
        { name: "metadata", label: "Metadata, one key=value per line", type: "textarea", value: metaText(i.metadata) }]);
      if (!v) return;
      const change = {};
      if (Number(v.weight) !== i.weight) change.weight = Number(v.weight);
      let meta;
      try { meta = parseMeta(v.metadata); } catch (e) { notify(e.message, true); return; }
      if (metaText(meta) !== metaText(i.metadata)) change.metadata = meta;
      if (!Object.keys(change).length) return;
      // Only the fields that changed are sent: the others stay as they are.
      if (await act(`Saved ${i.ip}:${i.port}`, () => api.patchInstance(svc, i, change))) refresh();
    };
    const toggle = async () => {
      if (i.enabled && !(await confirmStep(`Disable ${i.ip}:${i.port}? Consumers stop sending it traffic.`, "Disable"))) return;
      if (await act(`${i.enabled ? "Disabled" : "Enabled"} ${i.ip}:${i.port}`, () => api.patchInstance(svc, i, { enabled: !i.enabled }))) refresh();
    };
    const dereg = async () => {
      if (!(await confirmStep(`Deregister ${i.ip}:${i.port}?`, "Deregister"))) return;
      if (await act(`Deregistered ${i.ip}:${i.port}`, () => api.deregister(svc, i))) refresh();
    };
    const box = h("input", { type: "checkbox", "aria-label": `select ${i.ip}:${i.port}`, checked: selected.has(i.instance_id),
      onchange: () => { if (box.checked) selected.add(i.instance_id); else selected.delete(i.instance_id); drawBulk(); } });
    return h("tr", { "data-instance": `${i.ip}:${i.port}`, "data-cluster": i.cluster, class: i.enabled ? "" : "disabled" },
      ctx.canWrite ? h("td", {}, box) : null,
      h("td", { class: "addr" }, `${i.ip}:${i.port}`),
      h("td", {}, i.cluster),
      h("td", { class: "num weight" }, i.weight),
      h("td", { class: "healthy" }, flag(i.healthy)),
      h("td", { class: "enabled" }, flag(i.enabled)),
      h("td", {}, i.ephemeral ? "yes" : "no"),
      h("td", { class: "meta" }, metaList(i.metadata)),
      h("td", { class: "num" }, i.ephemeral ? age(i.beat_age_ms) : "–"),
      h("td", {}, i.responsible ?? "–"),
      ctx.canWrite ? h("td", { class: "actions" },
        h("button", { class: "secondary toggle", onclick: toggle }, i.enabled ? "Disable" : "Enable"),
        h("button", { class: "secondary edit", onclick: edit }, "Edit"),
        h("button", { class: "danger deregister", onclick: dereg }, "Deregister")) : null,
      h("td", {}, link(`#/history?namespace=${encodeURIComponent(ns)}&group=${encodeURIComponent(group)}&service=${encodeURIComponent(name)}&ip=${encodeURIComponent(i.ip)}&port=${i.port}`, "history")));
  }

  async function refresh() {
    let r;
    try {
      r = await api.get("/console/api/instances", { ...svc, healthy: f.healthy, enabled: f.enabled, ephemeral: f.ephemeral,
        cluster: f.cluster, metadata: f.metadata, search: f.search, page: f.page, page_size: 100 });
    } catch (e) { put(body, h("p", { class: "error" }, e.message)); return; }
    current = r;
    for (const id of [...selected]) if (!r.instances.some((i) => i.instance_id === id)) selected.delete(id);
    drawHead(r);
    drawBulk();
    const head = [ctx.canWrite ? "" : null, "Address", "Cluster", "Weight", "Healthy", "Enabled", "Ephemeral", "Metadata",
      "Last beat", "Responsible node", ctx.canWrite ? "Actions" : null, ""].filter((c) => c !== null);
    put(body,
      r.known || r.total ? null : h("p", { class: "muted" }, "This node holds no record of this service."),
      table("instances", head, h("tbody", {}, r.instances.length ? r.instances.map(row)
        : h("tr", {}, h("td", { colspan: head.length, class: "muted" }, r.total ? "No instance matches the filters." : "No instances.")))),
      pager(r.page, r.page_size, r.matched, (p) => { f.page = p; refresh(); }),
      r.details ? null : h("p", { class: "muted" }, "Heartbeat ages and responsibility were not available in time (busy node)."));
  }
  return { refresh };
}

function metaList(m) {
  const entries = Object.entries(m || {});
  if (!entries.length) return "–";
  return h("ul", { class: "kv" }, entries.map(([k, v]) => h("li", {}, h("code", {}, k), "=", h("code", {}, v))));
}

// ---- History -----------------------------------------------------------

const EVENTS = {
  registered: "registered", deregistered: "deregistered", expired: "expired", unhealthy: "became unhealthy",
  healthy: "became healthy", held: "held by the brake", updated: "changed", up: "node up", suspect: "node suspect",
  down: "node down", brake_engaged: "expiry brake engaged", brake_released: "expiry brake released", pause: "pause detected",
};
const CAUSES = {
  client: "by a client", console: "from the console", silence: "no heartbeat", failed_check: "failed health check",
  passed_check: "health check passed", heartbeat: "heartbeat", brake: "expiry brake", refutation: "refuted a peer's verdict",
  peer: "a peer's judgement",
};

export function history(main, params, ctx) {
  const q = { namespace: params.get("namespace") || "", group: params.get("group") || "", service: params.get("service") || "",
    ip: params.get("ip") || "", port: params.get("port") || "" };
  const out = h("div", { id: "history-list", "aria-live": "polite" });
  const what = q.service ? `${q.namespace || "public"} / ${q.group || "DEFAULT_GROUP"} / ${q.service}${q.ip ? ` / ${q.ip}:${q.port}` : ""}` : "every service and node";
  put(main, h("h1", {}, "History"),
    h("p", { class: "muted", id: "history-scope" }, `Changes seen by this node (${ctx.session.node}) for ${what}, newest first. `,
      `Each node keeps its own last ${ctx.session.history_size} changes; other nodes may have seen them at other moments.`),
    q.service ? h("p", {}, link("#/history", "Show everything")) : null,
    out);
  async function refresh() {
    let r;
    try { r = await api.get("/console/api/history", { ...q, limit: 300 }); } catch (e) { put(out, h("p", { class: "error" }, e.message)); return; }
    const rows = r.entries.map((e) => h("tr", { "data-event": e.event },
      h("td", {}, time(e.at_ms)),
      h("td", {}, EVENTS[e.event] || e.event, e.fields.length ? ` (${e.fields.join(", ")})` : ""),
      h("td", {}, e.cause ? CAUSES[e.cause] || e.cause : e.detail || ""),
      h("td", {}, e.scope === "instance" ? [link(svcHash(e.namespace, e.group, e.service), e.service), ` ${e.ip}:${e.port} (${e.cluster})`] : "–"),
      h("td", {}, e.node)));
    put(out, table("history", ["When", "What", "Why", "Instance", "Node"],
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 5, class: "muted" }, "Nothing yet.")))));
  }
  return { refresh };
}

// ---- Cluster -----------------------------------------------------------

export function cluster(main, params, ctx) {
  const out = h("div", { id: "cluster-nodes", "aria-live": "polite" });
  const events = h("div", { id: "cluster-events" });
  put(main, h("h1", {}, "Cluster"), out, h("h2", {}, "Recent node events on this node"), events);
  async function refresh() {
    let c;
    try { c = await api.get("/console/api/cluster"); } catch (e) { put(out, h("p", { class: "error" }, e.message)); return; }
    ctx.brake(c.brake_engaged);
    const rows = c.nodes.map((n) => h("tr", { "data-node": n.id, class: n.is_self ? "self" : "" },
      h("td", {}, n.id, n.is_self ? h("span", { class: "mark ok" }, "you are here") : null),
      h("td", { class: "state" }, h("span", { class: `mark state-${n.state}` }, n.state)),
      h("td", { class: "num" }, n.is_self ? "–" : n.last_seen_ms === null ? "never" : `${age(n.last_seen_ms)} ago`),
      h("td", { class: "num" }, age(n.state_since_ms)),
      h("td", { class: "ready" }, n.ready === null ? (n.is_self ? "–" : "no answer") : flag(n.ready, "ready", "loading")),
      h("td", { class: "agree" }, n.is_self ? "–" : n.digest_matched === null ? "not compared yet"
        : [flag(n.digest_matched, "agrees", "differs"), ` (${age(n.digest_age_ms)} ago)`])));
    put(out,
      h("p", {}, `${c.nodes.length} node(s); this node holds ${c.instances} instance(s).`,
        c.brake_engaged ? h("span", { class: "mark bad" }, " expiry brake engaged") : ""),
      table("nodes", ["Node", "State", "Last contact", "In state for", "Ready", "Registry vs this node"], h("tbody", {}, rows)),
      h("p", { class: "muted" }, "“Registry vs this node” compares digest roots at the last anti-entropy exchange; a difference is repaired at the next one."));
    try {
      const r = await api.get("/console/api/history", { nodes_only: "true", limit: 20 });
      put(events, r.entries.length ? h("ul", { class: "events" }, r.entries.map((e) =>
        h("li", {}, `${time(e.at_ms)}: `, EVENTS[e.event] || e.event, ` ${e.node}`, e.detail ? ` (${e.detail})` : "")))
        : h("p", { class: "muted" }, "No node events yet."));
    } catch (e) { put(events, h("p", { class: "error" }, e.message)); }
  }
  return { refresh, every: 2000 };
}
