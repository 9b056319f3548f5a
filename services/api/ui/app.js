// Runstore web UI: the run list and a run's page over the public REST API, with the
// caller's API key (kept in localStorage). No framework, no build step.
"use strict";

const $ = (sel) => document.querySelector(sel);
const KEY_STORE = "runstore.apiKey";
let pageTokens = [null]; // token of each page seen so far; the last one is the current page
let nextToken = null;
let liveStream = null; // AbortController of the run page's event stream

function apiKey() { return localStorage.getItem(KEY_STORE) || ""; }

function say(text, isError) {
  const m = $("#message");
  m.textContent = text || "";
  m.className = isError ? "error" : "";
}

async function api(method, path, body) {
  const reply = await fetch(path, {
    method,
    headers: {
      Authorization: `Bearer ${apiKey()}`,
      ...(body !== undefined ? { "Content-Type": "application/json" } : {}),
    },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  const text = await reply.text();
  const data = text ? JSON.parse(text) : null;
  if (!reply.ok) {
    const detail = data && data.detail ? JSON.stringify(data.detail) : reply.statusText;
    throw new Error(`${reply.status}: ${detail}`);
  }
  return data;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => { node[k] = v; });
  children.forEach((c) => node.append(c));
  return node;
}

function statusBadge(status) { return el("span", { className: `status ${status}`, textContent: status || "" }); }

function isoOrNull(id) {
  const v = $(id).value;
  return v ? new Date(v).toISOString() : null;
}

// --- run list ---------------------------------------------------------------------

function listParams(token) {
  const p = new URLSearchParams();
  const add = (k, v) => { if (v) p.append(k, v); };
  add("workflow_identifier", $("#f-workflow").value.trim());
  add("search", $("#f-search").value.trim());
  [...$("#f-status").selectedOptions].forEach((o) => p.append("status", o.value));
  add("root_execution_id", $("#f-root").value.trim());
  add("user_id", $("#f-user").value.trim());
  add("deployment_name", $("#f-deployment").value.trim());
  $("#f-tags").value.split(",").map((t) => t.trim()).filter(Boolean).forEach((t) => p.append("workflow_tags", t));
  $("#f-search-keys").value.split(",").map((t) => t.trim()).filter(Boolean).forEach((t) => p.append("search_key", t));
  add("start_time_after", isoOrNull("#f-start-after"));
  add("start_time_before", isoOrNull("#f-start-before"));
  add("end_time_after", isoOrNull("#f-end-after"));
  add("end_time_before", isoOrNull("#f-end-before"));
  p.set("sort_by", $("#f-sort").value);
  p.set("order", $("#f-order").value);
  p.set("include_internal", $("#f-internal").checked ? "true" : "false");
  p.set("page_size", $("#f-page-size").value);
  add("next_page_token", token);
  return p;
}

async function loadRuns() {
  const token = pageTokens[pageTokens.length - 1];
  try {
    const page = await api("GET", `/v1/workflows/runs?${listParams(token)}`);
    const body = $("#runs tbody");
    body.replaceChildren(...page.executions.map((r) => el("tr", { className: "run-row" },
      el("td", {}, el("a", { href: `#/run/${encodeURIComponent(r.execution_id)}`, textContent: r.execution_id })),
      el("td", { textContent: r.workflow_name }),
      el("td", {}, statusBadge(r.status)),
      el("td", { textContent: r.start_time || "" }),
      el("td", { textContent: r.end_time || "" }),
      el("td", { textContent: r.user_id || "" }),
    )));
    nextToken = page.next_page_token;
    $("#next-page").disabled = !nextToken;
    $("#prev-page").disabled = pageTokens.length <= 1;
    $("#page-number").textContent = `page ${pageTokens.length}`;
    say("");
  } catch (e) { say(e.message, true); }
}

// --- one run ----------------------------------------------------------------------

function facts(run) {
  const rows = [["run", run.run_id], ["started", run.start_time], ["ended", run.end_time],
    ["user", run.user_id], ["root", run.root_execution_id], ["parent", run.parent_execution_id],
    ["deployment", run.deployment_name], ["duration ms", run.total_duration_ms]];
  return rows.filter(([, v]) => v !== null && v !== undefined)
    .flatMap(([k, v]) => [el("dt", { textContent: k }), el("dd", { textContent: String(v) })]);
}

async function loadRun(executionId) {
  const run = await api("GET", `/v1/workflows/executions/${encodeURIComponent(executionId)}`);
  const history = await api("GET", `/v1/workflows/runs/${encodeURIComponent(run.run_id)}/history`);
  let events = history.events;
  let token = history.next_page_token;
  while (token) {
    const more = await api("GET", `/v1/workflows/runs/${encodeURIComponent(run.run_id)}/history?next_page_token=${encodeURIComponent(token)}`);
    events = events.concat(more.events);
    token = more.next_page_token;
  }
  $("#run-workflow").textContent = run.workflow_name;
  $("#run-execution").textContent = run.execution_id;
  $("#run-status").replaceWith(Object.assign(statusBadge(run.status), { id: "run-status" }));
  $("#run-facts").replaceChildren(...facts(run));
  const started = events.find((e) => e.type === "WORKFLOW_EXECUTION_STARTED");
  const input = started && started.attributes ? started.attributes.input : null;
  $("#run-input").textContent = JSON.stringify(input, null, 2);
  $("#run-result").textContent = JSON.stringify(run.result, null, 2);
  $("#history").replaceChildren(...events.map((e) => el("li", { className: "event" },
    el("time", { textContent: e.timestamp_ns ? new Date(e.timestamp_ns / 1e6).toISOString() : "" }),
    el("span", { className: "type", textContent: e.type }), " ",
    el("span", { className: "attrs", textContent: JSON.stringify(e.attributes || {}) }),
  )));
  const open = run.status === "RUNNING" || run.status === "RETRYING_AFTER_ERROR";
  ["#cancel-btn", "#terminate-btn", "#signal-btn"].forEach((b) => { $(b).disabled = !open; });
  return run;
}

// Follows the execution's server-sent events (fetch, so the key goes in a header) and
// reloads the page's data whenever one arrives; reconnects with Last-Event-ID.
async function follow(executionId) {
  if (liveStream) liveStream.abort();
  const control = new AbortController();
  liveStream = control;
  let lastId = null;
  let pending = null;
  const refresh = () => {
    clearTimeout(pending);
    pending = setTimeout(() => loadRun(executionId).catch((e) => say(e.message, true)), 50);
  };
  while (!control.signal.aborted) {
    try {
      const headers = { Authorization: `Bearer ${apiKey()}` };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const reply = await fetch(`/v1/workflows/executions/${encodeURIComponent(executionId)}/stream`,
        { headers, signal: control.signal });
      if (!reply.ok) throw new Error(`stream ${reply.status}`);
      $("#live").className = "on";
      const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const idLine = frame.split("\n").find((l) => l.startsWith("id: "));
          if (idLine) lastId = idLine.slice(4);
          if (frame.includes("\ndata: ") || frame.startsWith("data: ")) refresh();
        }
      }
      refresh();
      break; // the stream ends when the run has closed
    } catch (e) {
      if (control.signal.aborted) break;
      await new Promise((r) => setTimeout(r, 1000));
    } finally {
      $("#live").className = "";
    }
  }
}

async function act(executionId, what) {
  try {
    if (what === "signal") {
      const raw = $("#signal-input").value.trim();
      await api("POST", `/v1/workflows/executions/${encodeURIComponent(executionId)}/signals`,
        { name: $("#signal-name").value.trim(), input: raw ? JSON.parse(raw) : null });
      say(`signal sent`);
    } else {
      await api("POST", `/v1/workflows/executions/${encodeURIComponent(executionId)}/${what}`);
      say(`${what} requested`);
    }
    await loadRun(executionId);
  } catch (e) { say(e.message, true); }
}

// --- routing ----------------------------------------------------------------------

async function route() {
  const match = location.hash.match(/^#\/run\/(.+)$/);
  $("#list-view").hidden = Boolean(match);
  $("#run-view").hidden = !match;
  if (!match) {
    if (liveStream) { liveStream.abort(); liveStream = null; }
    await loadRuns();
    return;
  }
  const executionId = decodeURIComponent(match[1]);
  try {
    await loadRun(executionId);
    follow(executionId);
  } catch (e) { say(e.message, true); }
}

function currentExecution() {
  const match = location.hash.match(/^#\/run\/(.+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

$("#api-key").value = apiKey();
$("#save-key").addEventListener("click", () => {
  localStorage.setItem(KEY_STORE, $("#api-key").value.trim());
  route();
});
$("#filters").addEventListener("submit", (ev) => { ev.preventDefault(); pageTokens = [null]; loadRuns(); });
$("#next-page").addEventListener("click", () => { pageTokens.push(nextToken); loadRuns(); });
$("#prev-page").addEventListener("click", () => { pageTokens.pop(); loadRuns(); });
$("#cancel-btn").addEventListener("click", () => act(currentExecution(), "cancel"));
$("#terminate-btn").addEventListener("click", () => act(currentExecution(), "terminate"));
$("#signal-btn").addEventListener("click", () => act(currentExecution(), "signal"));
window.addEventListener("hashchange", route);
route();
