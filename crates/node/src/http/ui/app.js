// The blixard dashboard: reads the JSON API (/v1/...) and follows /v1/events (server-sent
// events); every event triggers a re-read of the state, so the page never needs a reload.
// No framework, no build step: this file is embedded in the binary as is.
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const headers = token ? { Authorization: "Bearer " + token } : {};

async function api(method, path) {
  const r = await fetch(path, { method, headers });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || (method + " " + path + ": HTTP " + r.status));
  return body;
}

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k == null ? "" : String(k)));
  return e;
}

function stateCell(s) { return el("td", { class: "state-" + s }, s); }

function bar(used, cap, unit) {
  const pct = cap > 0 ? Math.min(100, (100 * used) / cap) : 0;
  const s = el("span"); s.style.width = pct + "%";
  return el("div", { class: "bar", title: used + " of " + cap + " " + unit }, s, el("em", {}, used + " / " + cap + " " + unit));
}

function fill(id, rows) {
  const tb = document.querySelector("#" + id + " tbody");
  tb.replaceChildren(...rows);
}

async function act(method, path, what) {
  try { await api(method, path); } catch (e) { alert(what + " failed: " + e.message); }
  refresh();
}

function render(cluster, nodes, vms, tasks) {
  const info = document.getElementById("cluster-info");
  info.replaceChildren(
    ...[["leader", cluster.leader_id ?? "none"], ["term", cluster.term], ["applied index", cluster.applied_index],
        ["commit index", cluster.committed_index], ["this node", cluster.node_id], ["cluster", cluster.cluster_id]]
      .map(([k, v]) => el("span", {}, el("b", {}, k), String(v))));
  const health = new Map(nodes.map((n) => [n.id, n.state]));
  fill("members", cluster.members.map((m) =>
    el("tr", { "data-id": m.id }, el("td", {}, m.id + (m.id === cluster.leader_id ? " ★" : "")), el("td", {}, m.addr),
       el("td", {}, m.role), stateCell(health.get(m.id) || "unregistered"))));
  fill("nodes", nodes.map((n) =>
    el("tr", { "data-id": n.id }, el("td", {}, n.id), el("td", {}, n.addr), stateCell(n.state),
       el("td", {}, bar(n.allocated.vcpus, n.capacity.vcpus, "")),
       el("td", {}, bar(n.allocated.memory_mb, n.capacity.memory_mb, "MiB")),
       el("td", {}, n.vms), el("td", {}, Object.entries(n.labels || {}).map(([k, v]) => k + "=" + v).join(", ")))));
  fill("vms", vms.map((v) =>
    el("tr", { "data-vm": v.name }, el("td", {}, v.name), stateCell(v.state), el("td", {}, v.desired),
       el("td", {}, v.node_id ?? "-"), el("td", {}, v.vcpus + " vCPU, " + v.memory_mb + " MiB"),
       el("td", { class: "why" }, v.node_id == null ? (v.reason || "") : (v.placement || v.reason || "")),
       el("td", {},
          el("button", { class: "start", onclick: () => act("POST", "/v1/vms/" + encodeURIComponent(v.name) + "/start", "start") }, "start"),
          el("button", { class: "stop", onclick: () => act("POST", "/v1/vms/" + encodeURIComponent(v.name) + "/stop", "stop") }, "stop"),
          el("button", { class: "danger delete", onclick: () => {
            // Confirmed here, so the request carries force (a running VM is stopped at once).
            if (confirm("Delete VM " + v.name + "? A running VM is stopped at once. This cannot be undone.")) act("DELETE", "/v1/vms/" + encodeURIComponent(v.name) + "?force=true", "delete");
          } }, "delete")))));
  fill("tasks", tasks.slice(-50).reverse().map((t) =>
    el("tr", {}, el("td", { title: t.id }, t.id.slice(0, 8)), stateCell(t.state), el("td", {}, t.node_id ?? "-"),
       el("td", {}, t.exit_code ?? ""), el("td", {}, t.command.join(" ")), el("td", { class: "why" }, t.reason || ""))));
  const running = vms.filter((v) => v.state === "running").length;
  document.getElementById("summary").textContent =
    nodes.length + " nodes, " + vms.length + " VMs (" + running + " running), " + tasks.length + " tasks";
}

let refreshing = false, again = false;
async function refresh() {
  if (refreshing) { again = true; return; }
  refreshing = true;
  try {
    const [cluster, nodes, vms, tasks] = await Promise.all(
      ["/v1/cluster?stale=true", "/v1/nodes?stale=true", "/v1/vms?stale=true", "/v1/tasks?stale=true"].map((p) => api("GET", p)));
    render(cluster, nodes, vms, tasks);
  } catch (e) {
    document.getElementById("summary").textContent = "error: " + e.message;
  } finally {
    refreshing = false;
    if (again) { again = false; refresh(); }
  }
}

function describe(e) {
  const d = Object.entries(e).filter(([k, v]) => v != null && !["index", "time_ms", "type"].includes(k))
    .map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : v)).join(" ");
  return e.index + "  " + e.type + "  " + d;
}

let cursor = null;
function follow() {
  // EventSource cannot send headers: the token goes in the query string when there is one.
  const q = new URLSearchParams();
  if (cursor != null) q.set("since", cursor);
  if (token) q.set("token", token);
  const src = new EventSource("/v1/events" + (q.toString() ? "?" + q : ""));
  const conn = document.getElementById("conn");
  src.onopen = () => { conn.textContent = "live"; conn.className = "pill live"; };
  src.onerror = () => { conn.textContent = "reconnecting…"; conn.className = "pill down"; };
  src.onmessage = (m) => handle(m);
  for (const t of ["vm_created", "vm_deleted", "vm_state", "vm_placed", "vm_unplaced", "vm_desired", "node_registered",
                   "node_state", "node_removed", "membership", "task_submitted", "task_state", "task_result", "settings", "resync"]) {
    src.addEventListener(t, handle);
  }
}

function handle(m) {
  show(JSON.parse(m.data));
  refresh();
}

function show(e) {
  cursor = e.index;
  document.getElementById("event-cursor").textContent = "(up to index " + e.index + ")";
  const list = document.getElementById("events");
  list.prepend(el("li", { class: e.type, "data-index": e.index }, describe(e)));
  while (list.children.length > 500) list.lastChild.remove();
}

// The first view is read before the page finishes loading (synchronous requests, once), so
// the page is complete from its first paint: the state, and the events kept by the node, up
// to a cursor. From then on the SSE stream resumes from that cursor and keeps it live.
function initial() {
  const get = (path) => {
    const x = new XMLHttpRequest();
    x.open("GET", path, false);
    if (token) x.setRequestHeader("Authorization", "Bearer " + token);
    x.send();
    if (x.status !== 200) throw new Error("GET " + path + ": HTTP " + x.status);
    return x.responseText;
  };
  try {
    const [cluster, nodes, vms, tasks] =
      ["/v1/cluster?stale=true", "/v1/nodes?stale=true", "/v1/vms?stale=true", "/v1/tasks?stale=true"].map((p) => JSON.parse(get(p)));
    render(cluster, nodes, vms, tasks);
    const kept = get("/v1/events?follow=false");
    for (const line of kept.split("\n")) {
      if (line.startsWith("data:")) show(JSON.parse(line.slice(5)));
    }
  } catch (e) {
    document.getElementById("summary").textContent = "error: " + e.message;
  }
}

initial();
follow();
