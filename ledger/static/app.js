// The ledger dashboard: sessions with live progress, a session's timeline, analytics.
// No build step and nothing from the internet; live updates come from native EventSource
// through ledger-client.js.
import { ALL_EVENTS_PATH, LedgerStream, sessionPath } from "/static/ledger-client.js";

const TOKEN_KEY = "ledger.token";
const main = document.getElementById("main");
const streams = new Set();

// What the page received, for people debugging and for the end-to-end test.
window.ledgerDashboard = { received: [], streams };

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

// -- sessions ---------------------------------------------------------------------------

async function sessionsView() {
  const { sessions } = await api("/api/sessions?limit=50");
  const rows = new Map();
  const body = el("tbody");
  const render = (session) => {
    const state = session.state;
    const row = el("tr", { "data-session": session.id },
      el("td", {}, el("a", { href: `#/session/${session.id}` }, session.id.slice(0, 8))),
      el("td", {}, session.patient_id),
      el("td", {}, statusCell(state)),
      el("td", {}, el("progress", { max: 100, value: state.progress ?? 0 }), ` ${state.progress ?? 0}%`),
      el("td", { class: "muted" }, state.message ?? state.error ?? ""),
      el("td", { class: "muted" }, time(state.recorded_at ?? session.created_at)));
    const old = rows.get(session.id);
    if (old) old.replaceWith(row); else body.append(row);
    rows.set(session.id, row);
  };
  const byId = new Map(sessions.map((s) => [s.id, s]));
  sessions.forEach(render);
  const live = el("span", { class: "live" });
  main.replaceChildren(el("section", { class: "card" },
    el("h1", {}, live, "Sessions"),
    el("table", {}, el("thead", {}, el("tr", {},
      ...["session", "patient", "status", "progress", "message", "updated"].map((h) => el("th", {}, h)))), body)));
  const update = (event) => {
    const session = byId.get(event.session_id);
    if (!session) { route(); return; }  // a new session: fetch the list again
    session.state = event;
    render(session);
  };
  const role = claims()?.role;
  if (role === "admin" || role === "auditor") {
    follow(ALL_EVENTS_PATH, { onEvent: update, onOpen: () => live.classList.add("on") });
  } else {
    for (const session of sessions.filter((s) => !["complete", "error"].includes(s.state.type)).slice(0, 5)) {
      follow(sessionPath(session.id), { onEvent: update, onOpen: () => live.classList.add("on") });
    }
  }
}

// -- one session ------------------------------------------------------------------------

async function sessionView(id) {
  const bar = el("progress", { max: 100, value: 0, id: "session-progress" });
  const status = el("span", { class: "status", id: "session-status" }, "waiting");
  const chain = el("span", { class: "chain muted", id: "chain" });
  const live = el("span", { class: "live", id: "live" });
  const rows = el("tbody", { id: "timeline" });
  main.replaceChildren(
    el("section", { class: "card" },
      el("h1", {}, live, `Session ${id}`),
      el("p", {}, status, " ", bar, " ", chain)),
    el("section", { class: "card" },
      el("h2", {}, "Timeline"),
      el("table", {}, el("thead", {}, el("tr", {},
        ...["#", "when", "who", "status", "progress", "message"].map((h) => el("th", {}, h)))), rows)));
  const show = (event) => {
    window.ledgerDashboard.received.push(event.version);
    status.textContent = event.status;
    status.className = `status ${event.status}`;
    bar.value = event.progress;
    rows.append(el("tr", { "data-version": String(event.version) },
      el("td", {}, String(event.version)),
      el("td", {}, time(event.recorded_at)),
      el("td", {}, event.actor),
      el("td", {}, statusCell(event)),
      el("td", {}, `${event.progress}%`),
      el("td", { class: event.error ? "error" : "muted" }, event.error ?? event.message ?? "")));
  };
  const stream = follow(sessionPath(id), {
    lastEventId: 0,
    onEvent: show,
    onOpen: () => live.classList.add("on"),
    onConnectionError: () => live.classList.remove("on"),
    onReset: () => { rows.replaceChildren(); window.ledgerDashboard.received = []; },
    onComplete: () => { live.classList.remove("on"); checkChain(id, chain); },
    onFailed: () => { live.classList.remove("on"); checkChain(id, chain); },
  });
  window.ledgerDashboard.session = stream;
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

function bars(items, { label, value, unit, width = 460 }) {
  const max = Math.max(1, ...items.map(value));
  const row = 22;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", Math.max(row * items.length, row));
  items.forEach((item, i) => {
    const y = i * row;
    const length = Math.round((width - 200) * value(item) / max);
    svg.insertAdjacentHTML("beforeend",
      `<text x="0" y="${y + 15}"></text><rect x="110" y="${y + 4}" width="${length}" height="14" fill="#2f6fde"></rect>` +
      `<text x="${116 + length}" y="${y + 15}"></text>`);
    const texts = svg.querySelectorAll("text");
    texts[texts.length - 2].textContent = label(item);
    texts[texts.length - 1].textContent = `${Math.round(value(item) * 10) / 10}${unit}`;
  });
  return svg;
}

async function analyticsView() {
  const to = new Date();
  const from = new Date(to.getTime() - 24 * 3600 * 1000);
  const range = `from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`;
  const [summary, stages, throughput] = await Promise.all([
    api(`/api/analytics/summary?${range}`),
    api(`/api/analytics/stages?${range}`),
    api(`/api/analytics/throughput?${range}&bucket=hour`),
  ]);
  const p = summary.time_to_completion_seconds;
  main.replaceChildren(
    el("section", { class: "card" },
      el("h1", {}, "Last 24 hours"),
      el("p", {}, `${summary.sessions_started} started · ${summary.sessions_completed} processed · ` +
        `${summary.sessions_failed} failed · failure rate ` +
        (summary.failure_rate === null ? "—" : `${Math.round(summary.failure_rate * 100)}%`) +
        ` · time to completion p50 ${p.p50 ?? "—"} s, p95 ${p.p95 ?? "—"} s`)),
    el("div", { class: "grid" },
      el("section", { class: "card", id: "stages-chart" }, el("h2", {}, "Mean time per stage"),
        bars(stages.stages, { label: (s) => s.status, value: (s) => s.mean_seconds, unit: " s" })),
      el("section", { class: "card", id: "throughput-chart" }, el("h2", {}, "Completions per hour"),
        bars(throughput.buckets.slice(-12), {
          label: (b) => new Date(b.start).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
          value: (b) => b.completed, unit: "" }))),
    el("section", { class: "card" }, el("h2", {}, "Top failure reasons"),
      el("ul", {}, ...summary.top_failure_reasons.map((r) => el("li", {}, `${r.reason}: ${r.count}`)))));
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
