// The client of the OpenAPI and the ConsoleAPI. The token (if any) is kept
// for this tab only (sessionStorage) and sent as the API expects it:
// Authorization: Bearer <token>. Writes say they come from the console
// (x-muster-console), which the node's history shows.

const TOKEN_KEY = "muster.token";

export class ApiError extends Error {
  constructor(status, body) {
    const e = body && body.error;
    super(e ? e.message : `HTTP ${status}`);
    this.status = status;
    this.code = e ? e.code : "http";
    this.field = e ? e.field : undefined;
  }
}

export function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
export function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
}

/** Query string from an object, leaving out empty values. */
export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") p.set(k, v);
  const s = p.toString();
  return s ? `?${s}` : "";
}

export async function call(method, path, body, signal) {
  const headers = { accept: "application/json" };
  if (token()) headers.authorization = `Bearer ${token()}`;
  if (method !== "GET") headers["x-muster-console"] = "1";
  if (body !== undefined) headers["content-type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, signal, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!resp.ok) throw new ApiError(resp.status, json);
  return json;
}

export const get = (path, params, signal) => call("GET", path + qs(params || {}), undefined, signal);

/** The key fields of an instance, as the OpenAPI takes them. */
export function keyOf(svc, inst) {
  return { namespace: svc.namespace, group: svc.group, service: svc.service, cluster: inst.cluster, ip: inst.ip, port: inst.port };
}

export const patchInstance = (svc, inst, change) => call("PATCH", "/v1/instances", { ...keyOf(svc, inst), ...change });
export const deregister = (svc, inst) => call("DELETE", "/v1/instances" + qs(keyOf(svc, inst)));
export const putService = (svc, change) =>
  call("PUT", `/v1/services/${encodeURIComponent(svc.service)}` + qs({ namespace: svc.namespace, group: svc.group }), change);
export const deleteService = (svc) =>
  call("DELETE", `/v1/services/${encodeURIComponent(svc.service)}` + qs({ namespace: svc.namespace, group: svc.group }));
