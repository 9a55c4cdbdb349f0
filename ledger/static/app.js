// The ledger dashboard: sessions with live progress, a session's timeline, analytics.
// No build step and nothing from the internet; live updates come from native EventSource
// through ledger-client.js.
import { barChart, duration, STAGES, stageTimeline } from "/static/charts.js";
import { followAll, LedgerStream, sessionPath } from "/static/ledger-client.js";
import { latestCheckpoint, proveEvent } from "/static/proofs.js";

const TOKEN_KEY = "ledger.token";
const main = document.getElementById("main");
const streams = new Set();

// What the page received, for people debugging and for the end-to-end test.
window.ledgerDashboard = { received: [], events: [], streams };

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function claims() {
  try {
    const part = token().split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch { return null; }
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
  if (response.status === 401) { signOut(); throw new Error("signed out"); }
  if (!response.ok) throw new Error((await response.json()).detail ?? response.statusText);
  return response.json();
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  return node;
}

function follow(path, handlers) {
  const stream = new LedgerStream(path, { tokenProvider: token, ...handlers });
  streams.add(stream);
  return stream;
}

function stopStreams() {
  for (const stream of streams) stream.close();
  streams.clear();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  fetch("/api/auth/cookie", { method: "DELETE" });
  route();
}

function time(value) { return value ? new Date(value).toLocaleString() : ""; }

function statusCell(state) {
  return el("span", { class: `status ${state.status ?? ""}` }, state.status ?? "waiting");
}

// -- connection state ---------------------------------------------------------------------

// A dot and a word that tell the truth about the live updates: green only while every
// stream the page follows is open; otherwise the list may be stale, and it says so.
function liveIndicator() {
  const dot = el("span", { class: "live", id: "live" });
  const word = el("span", { class: "live-text muted", id: "live-text" }, "connecting…");
  const open = new Map();
  const show = () => {
    const states = [...open.values()];  // null: not open yet; false: lost
    const live = states.length > 0 && states.every((state) => state === true);
    const lost = states.includes(false);
    dot.classList.toggle("on", live);
    dot.classList.toggle("down", lost);
    word.textContent = states.length === 0 ? "" : live ? "live"
      : lost ? "reconnecting… the list may be stale" : "connecting…";
  };
  return {
    nodes: [dot, word],
    handlers(key) {
      open.set(key, null);
      return {
        onOpen: () => { open.set(key, true); show(); },
        onConnectionError: () => { open.set(key, false); show(); },
        onComplete: () => { open.delete(key); show(); },
        onFailed: () => { open.delete(key); show(); },
      };
    },
    show,
  };
}

function copyButton(text) {
  const button = el("button", { class: "copy", type: "button", title: `copy ${text}` }, "copy");
  button.setAttribute("data-copy", text);
  button.addEventListener("click", async () => {
    if (!navigator.clipboard) {  // only https and localhost pages have a clipboard to write
      window.prompt("Copy the session id:", text);
      return;
    }
    await navigator.clipboard.writeText(text);
    button.textContent = "copied";
    setTimeout(() => { button.textContent = "copy"; }, 1500);
  });
  return button;
}

// -- sessions ---------------------------------------------------------------------------

async function sessionsView() {
  const rows = new Map();
  const byId = new Map();
  const body = el("tbody");
  const render = (session) => {
    const state = session.state;
    const row = el("tr", { "data-session": session.id },
      el("td", {}, el("a", { href: `#/session/${session.id}`, title: session.id }, session.id.slice(0, 8)),
        " ", copyButton(session.id)),
      el("td", {}, session.patient_id),
      el("td", {}, statusCell(state)),
      el("td", {}, el("progress", { max: 100, value: state.progress ?? 0 }), ` ${state.progress ?? 0}%`),
      el("td", { class: "muted" }, state.message ?? state.error ?? ""),
      el("td", { class: "muted" }, time(state.recorded_at ?? session.created_at)));
    const old = rows.get(session.id);
    if (old) old.replaceWith(row); else body.prepend(row);
    rows.set(session.id, row);
  };
  const live = liveIndicator();
  const card = el("section", { class: "card" },
    el("h1", {}, "Sessions ", ...live.nodes),
    el("table", {}, el("thead", {}, el("tr", {},
      ...["session", "patient", "status", "progress", "message", "updated"].map((h) => el("th", {}, h)))), body));

  // An event newer than what the row shows moves it. An event of a session the list does
  // not know makes the page read the list again (the stream goes on meanwhile): a session
  // registered after the last read is the newest, so it is in the next one. One that is
  // still not there, although it existed before that read began, is older than the
  // newest 50 the list shows, and its events are passed over until it is.
  const waiting = [];          // [event, reads started when it arrived]
  const unlisted = new Set();  // sessions too old for the list
  let reads = 0, loaded = false, reading = null;
  const apply = (event) => {
    const session = byId.get(event.session_id);
    if (!session) return false;
    if ((session.state.version ?? 0) < event.version) {
      session.state = event;
      render(session);
    }
    return true;
  };
  const load = async () => {
    const started = ++reads;
    const { sessions } = await api("/api/sessions?limit=50");
    for (const session of [...sessions].reverse()) {
      unlisted.delete(session.id);
      const known = byId.get(session.id);
      if (!known) { byId.set(session.id, session); render(session); }
      else if ((known.state.version ?? 0) < (session.state.version ?? 0)) { known.state = session.state; render(known); }
    }
    loaded = true;
    let again = false;
    for (const [event, seen] of waiting.splice(0)) {
      if (apply(event)) continue;
      if (seen < started) unlisted.add(event.session_id);  // it existed before this read
      else { waiting.push([event, seen]); again = true; }  // it may be newer than the read
    }
    return { sessions, again };
  };
  // One read at a time; one asked for meanwhile runs when it ends (it may be the one
  // that must begin after the stream reopened).
  let readAgain = false;
  const reread = () => {
    if (reading) { readAgain = true; return; }
    readAgain = false;
    reading = load().then(({ again }) => { reading = null; if (again || readAgain) reread(); },
      () => { reading = null; if (readAgain) reread(); });
  };
  const update = (event) => {
    if (unlisted.has(event.session_id)) return;
    if (!loaded || !apply(event)) {
      waiting.push([event, reads]);
      if (loaded) reread();
    }
  };
  // One stream for every session the reader may follow (a patient's own, a therapist's
  // patients', everything for admins and auditors), however many are running. The list is
  // read once the stream is open (at most a few seconds' wait), so that nothing between the
  // two is missed; should the stream ever reopen from now (no event seen yet), again.
  const { onOpen, onConnectionError } = live.handlers("all");  // it never ends by itself
  let opened, gap = false;
  const open = new Promise((resolve) => { opened = resolve; });
  const stream = followAll({
    tokenProvider: token,
    onEvent: (event) => {
      const seen = window.ledgerDashboard.events;
      seen.push([event.session_id, event.version]);
      if (seen.length > 10000) seen.splice(0, 5000);  // for debugging: the recent ones
      update(event);
    },
    onOpen: () => {
      onOpen();
      opened();
      if (gap) {
        if (loaded || reading) reread(); else readAgain = true;  // the first read is due
        gap = false;
      }
    },
    onConnectionError,
    onGap: () => { gap = true; },
  });
  streams.add(stream);
  await Promise.race([open, new Promise((resolve) => setTimeout(resolve, 3000))]);
  const { again } = await load();
  if (again || readAgain) reread();
  const role = claims()?.role;
  main.replaceChildren(...(role === "admin" || role === "auditor" ? [checkpointCard()] : []), card);
  live.show();
}

// The latest signed checkpoint, for admins and auditors: what they keep to prove the
// whole ledger later (README, "Auditing").
function checkpointCard() {
  const text = el("span", { id: "checkpoint" }, "reading the latest checkpoint…");
  latestCheckpoint(api, token()).then((latest) => {
    text.textContent = latest
      ? `${latest.size} events, root ${latest.root.slice(0, 16)}…, signed ${time(latest.signedAt)}, signature ${latest.signature}`
      : "no checkpoint signed yet";
    text.dataset.size = String(latest?.size ?? 0);
  }, (error) => { text.textContent = `checkpoint unavailable: ${error.message}`; });
  return el("section", { class: "card" }, el("h2", {}, "Latest checkpoint"), el("p", {}, text));
}

// One event's inclusion proof, checked in the browser against the latest checkpoint.
async function proveVersion(id, version, node) {
  node.textContent = "proving…";
  let result;
  try {
    const response = await fetch(`/api/sessions/${id}/events?format=ndjson`,
      { headers: { Authorization: `Bearer ${token()}` } });
    const record = (await response.text()).split("\n").filter(Boolean).map((line) => JSON.parse(line))
      .find((event) => event.version === version);
    result = record
      ? await proveEvent(api, token(), record.position, record.hash)
      : { ok: false, text: "event not found" };
  } catch (error) { result = { ok: false, text: `✗ could not prove: ${error.message}` }; }
  node.textContent = result.text;
  node.className = result.ok ? "ok" : "bad";
}

// -- one session ------------------------------------------------------------------------

async function sessionView(id) {
  const bar = el("progress", { max: 100, value: 0, id: "session-progress" });
  const status = el("span", { class: "status", id: "session-status" }, "waiting");
  const chain = el("span", { class: "chain muted", id: "chain" });
  const live = liveIndicator();
  const rows = el("tbody", { id: "timeline" });
  const picture = el("div", { id: "stage-chart" });
  const events = [];
  const auditing = ["admin", "auditor"].includes(claims()?.role);
  main.replaceChildren(
    el("section", { class: "card" },
      el("h1", {}, `Session ${id} `, copyButton(id), " ", ...live.nodes),
      el("p", {}, status, " ", bar, " ", chain)),
    el("section", { class: "card" }, el("h2", {}, "Stages"), picture),
    el("section", { class: "card" },
      el("h2", {}, "Timeline"),
      el("table", {}, el("thead", {}, el("tr", {},
        ...["#", "when", "who", "status", "progress", "message", ...(auditing ? ["proof"] : [])]
          .map((h) => el("th", {}, h)))), rows)));
  const draw = () => picture.replaceChildren(events.length
    ? stageTimeline(events) : el("p", { class: "muted" }, "No events yet."));
  const show = (event) => {
    window.ledgerDashboard.received.push(event.version);
    events.push(event);
    status.textContent = event.status;
    status.className = `status ${event.status}`;
    bar.value = event.progress;
    rows.append(el("tr", { "data-version": String(event.version) },
      el("td", {}, String(event.version)),
      el("td", {}, time(event.recorded_at)),
      el("td", {}, event.actor),
      el("td", {}, statusCell(event)),
      el("td", {}, `${event.progress}%`),
      el("td", { class: event.error ? "error" : "muted" }, event.error ?? event.message ?? ""),
      ...(auditing ? [provable(event.version)] : [])));
    draw();
  };
  const provable = (version) => {
    const result = el("span", { id: `proof-${version}`, class: "muted" });
    const button = el("button", { type: "button", class: "prove", onclick: () => proveVersion(id, version, result) }, "prove");
    return el("td", {}, button, " ", result);
  };
  const handlers = live.handlers(id);
  const stream = follow(sessionPath(id), {
    lastEventId: 0,
    onEvent: show,
    onOpen: handlers.onOpen,
    onConnectionError: handlers.onConnectionError,
    onReset: () => { rows.replaceChildren(); events.length = 0; window.ledgerDashboard.received = []; draw(); },
    onComplete: () => { handlers.onComplete(); checkChain(id, chain); },
    onFailed: () => { handlers.onFailed(); checkChain(id, chain); },
  });
  window.ledgerDashboard.session = stream;
  draw();
  checkChain(id, chain);
}

async function checkChain(id, node) {
  const role = claims()?.role;
  if (role !== "admin" && role !== "auditor") return;
  const report = await api(`/api/sessions/${id}/verify`);
  node.className = `chain ${report.ok ? "ok" : "bad"}`;
  node.textContent = report.ok
    ? `hash chain intact (${report.events} events, head ${String(report.head_hash ?? "").slice(0, 12)}…)`
    : `hash chain BROKEN at version ${report.first_bad_version}: ${report.reason}`;
}

// -- analytics --------------------------------------------------------------------------

async function analyticsView() {
  const to = new Date();
  const from = new Date(to.getTime() - 24 * 3600 * 1000);
  const range = `from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`;
  const [summary, stages, throughput, completion] = await Promise.all([
    api(`/api/analytics/summary?${range}`),
    api(`/api/analytics/stages?${range}`),
    api(`/api/analytics/throughput?${range}&bucket=hour`),
    api(`/api/analytics/completion-times?${range}&bins=10`),
  ]);
  const p = summary.time_to_completion_seconds;
  const rate = summary.failure_rate === null ? "—" : `${Math.round(summary.failure_rate * 100)}%`;
  const hour = (b) => new Date(b.start).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const inOrder = [...stages.stages].sort((a, b) => STAGES.indexOf(a.status) - STAGES.indexOf(b.status));
  const reasons = summary.top_failure_reasons;
  main.replaceChildren(
    el("section", { class: "card", id: "summary" },
      el("h1", {}, "Last 24 hours"),
      el("p", {}, `${summary.sessions_started} started · ${summary.sessions_completed} processed · ` +
        `${summary.sessions_failed} failed · failure rate ${rate} · time to completion ` +
        `p50 ${duration(p.p50)}, p95 ${duration(p.p95)}, p99 ${duration(p.p99)}`)),
    el("section", { class: "card", id: "throughput-chart" }, el("h2", {}, "Sessions ended per hour"),
      el("p", { class: "legend" }, el("span", { class: "swatch processed" }), " processed ",
        el("span", { class: "swatch failed" }), " failed"),
      barChart(throughput.buckets.map((b) => ({ label: hour(b), values: [b.completed, b.failed] })),
        { series: [{ name: "processed", class: "processed" }, { name: "failed", class: "failed" }],
          width: 1000, height: 220, yLabel: "sessions per hour (UTC hours, shown in local time)" })),
    el("div", { class: "grid" },
      el("section", { class: "card", id: "completion-chart" }, el("h2", {}, "Time to completion"),
        completion.bins.length
          ? barChart(completion.bins.map((b) => ({ label: duration(b.from_seconds), values: [b.sessions] })),
            { series: [{ name: "sessions", class: "processed" }], yLabel: "sessions, by time from first event to processed" })
          : el("p", { class: "muted" }, "No session was processed in this range.")),
      el("section", { class: "card", id: "stages-chart" }, el("h2", {}, "Mean time per stage"),
        inOrder.length
          ? barChart(inOrder.map((s) => ({ label: s.status, values: [Math.round(s.mean_seconds * 10) / 10] })),
            { series: [{ name: "s mean", class: "stage" }], yLabel: "seconds, in pipeline order" })
          : el("p", { class: "muted" }, "No stage was left in this range."))),
    el("section", { class: "card", id: "failure-reasons" }, el("h2", {}, "Top failure reasons"),
      reasons.length
        ? el("ul", {}, ...reasons.map((r) => el("li", {}, `${r.reason}: ${r.count}`)))
        : el("p", { class: "muted" }, "No session failed in this range.")));
}

// -- routing ----------------------------------------------------------------------------

function signInView() {
  main.replaceChildren(document.getElementById("sign-in").content.cloneNode(true));
  document.getElementById("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = document.getElementById("token").value.trim();
    const response = await fetch("/api/auth/cookie", { method: "POST", headers: { Authorization: `Bearer ${value}` } });
    if (!response.ok) {
      document.getElementById("sign-in-error").textContent = "That token is not accepted.";
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, value);
    route();
  });
}

async function route() {
  stopStreams();
  const signedIn = Boolean(token());
  document.getElementById("sign-out").hidden = !signedIn;
  const who = claims();
  document.getElementById("who").textContent = who ? `${who.sub} (${who.role})` : "";
  if (!signedIn) { signInView(); return; }
  const hash = window.location.hash;
  try {
    if (hash.startsWith("#/session/")) await sessionView(decodeURIComponent(hash.slice(10)));
    else if (hash === "#/analytics") await analyticsView();
    else await sessionsView();
  } catch (error) {
    main.replaceChildren(el("p", { class: "error" }, String(error.message ?? error)));
  }
}

document.getElementById("sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", route);
route();
