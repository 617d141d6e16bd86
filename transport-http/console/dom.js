// DOM helpers. Every value from the registry (names, metadata, errors) is
// set as text, never parsed as HTML: h() takes strings as text nodes and
// attributes through setAttribute, and nothing here uses innerHTML.

/** Makes an element: h("a", {href: "#/x", class: "c"}, "text", child, ...). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** Replaces an element's children in one step (no flicker). */
export function put(el, ...children) {
  const frag = document.createDocumentFragment();
  append(frag, children);
  el.replaceChildren(frag);
}

/** A coloured yes/no mark. */
export function flag(on, yes = "yes", no = "no") {
  return h("span", { class: on ? "mark ok" : "mark bad" }, on ? yes : no);
}

/** "3 s", "2 min", "1 h" from milliseconds. */
export function age(ms) {
  if (ms === null || ms === undefined) return "–";
  const s = Math.floor(ms / 1000);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h`;
}

/** Local time of a Unix millisecond timestamp. */
export function time(ms) {
  const d = new Date(ms);
  return d.toLocaleString(undefined, { hour12: false });
}

/** A modal dialog; resolves with the values of its fields, or null if cancelled. */
export function dialog(title, fields, okLabel = "Save", danger = false) {
  return new Promise((resolve) => {
    const inputs = {};
    const rows = fields.map((f) => {
      const id = `f-${f.name}`;
      const input = f.type === "textarea"
        ? h("textarea", { id, name: f.name, rows: 6, spellcheck: "false" })
        : h("input", { id, name: f.name, type: f.type || "text", step: f.step, min: f.min, max: f.max, required: f.required });
      input.value = f.value ?? "";
      inputs[f.name] = input;
      return h("div", { class: "field" }, h("label", { for: id }, f.label), input, f.help ? h("small", {}, f.help) : null);
    });
    const dlg = h("dialog", { class: "modal", "aria-label": title });
    const done = (v) => { dlg.close(); dlg.remove(); resolve(v); };
    const form = h("form", { method: "dialog", onsubmit: (e) => {
      e.preventDefault();
      const out = {};
      for (const [k, el] of Object.entries(inputs)) out[k] = el.value;
      done(out);
    } },
      h("h2", {}, title),
      rows,
      h("div", { class: "buttons" },
        h("button", { type: "button", class: "secondary", onclick: () => done(null) }, "Cancel"),
        h("button", { type: "submit", class: danger ? "danger" : "primary", id: "dialog-ok" }, okLabel)));
    dlg.addEventListener("cancel", (e) => { e.preventDefault(); done(null); });
    dlg.appendChild(form);
    document.body.appendChild(dlg);
    dlg.showModal();
    const first = form.querySelector("input, textarea") || form.querySelector("#dialog-ok");
    first.focus();
  });
}

/** Asks before a destructive step; resolves true to go ahead. */
export async function confirmStep(message, okLabel) {
  return (await dialog(message, [], okLabel, true)) !== null;
}

/** Shows a message (the server's error text, or what was done). */
export function notify(text, bad = false) {
  const box = document.getElementById("notice");
  put(box, h("div", { class: bad ? "note bad" : "note", role: bad ? "alert" : "status" }, text,
    h("button", { class: "close", "aria-label": "Dismiss", onclick: () => put(box) }, "×")));
  if (!bad) setTimeout(() => { if (box.textContent.includes(text)) put(box); }, 4000);
}
