// ledger-client.js: follow a ledger session (or all sessions) with the browser's native
// EventSource, without dependencies.
//
//   import { LedgerStream } from "/static/ledger-client.js";
//   const stream = new LedgerStream(`/api/sessions/${id}/status/stream`, {
//     token,                       // or tokenProvider: () => freshToken()
//     lastEventId: 0,              // optional: replay after this id (0 = everything)
//     onEvent(event) {},           // every progress / complete / error event, in order
//     onReset(state) {},           // the server's history is shorter than ours: start over
//     onComplete(event) {},        // processed: the stream is closed
//     onFailed(event) {},          // failed (a server-sent `error` event WITH data): closed
//     onConnectionError() {},      // the network hiccuped (no data); EventSource retries
//     onClosed(status) {},         // refused for good (403, 404, 204 ...): no more tries
//     onGap() {},                  // reopened from now (no event seen yet, or a cursor
//                                  // this database cannot resume): what came meanwhile
//                                  // is not sent; read the state again
//     keepOpen: false,             // true for a stream of many sessions: one session's
//                                  // end is not the stream's (followAll sets it)
//   });
//   stream.lastEventId; stream.close();
//
//   // Every session this reader may follow (a patient's own, a therapist's patients',
//   // all for admins and auditors), or those named, on ONE stream:
//   const all = followAll({ token, sessionIds: [a, b], patientIds: ["p-1"], onEvent(e) {} });
//
// lastEventId is the id of the last event received, as the server wrote it: a version on a
// session stream, an opaque cursor (a string such as "1204.3.5") on the all-sessions
// stream. Hand it back as it is.
//
// A server-sent `error` event is a failed job and carries the event as data; the browser's
// own `error` event (a lost connection) carries none. They share a name on EventSource, so
// this module tells them apart. After `complete` or `error` a session's stream is closed for
// good; a stream of many sessions (keepOpen) reports them and goes on.
// When the browser gives up (any answer but 200 closes EventSource: an expired token's 401,
// a busy server's 503), the stream asks again after a growing, jittered delay and reopens
// from the last event it saw (a tokenProvider gives it a fresh token each time); a refusal
// that will not change (204, 403, 404, 400; a 401 without tokenProvider) ends it, and
// onClosed(status) says why.

export class LedgerStream {
  constructor(path, options = {}) {
    this.path = path;
    this.options = options;
    this.lastEventId = options.lastEventId ?? null;
    this.finished = false;
    this.opens = 0;
    this.failures = 0;  // refused opens in a row (the backoff's exponent)
    this.source = null;
    this.#open();
  }

  get readyState() {
    return this.source ? this.source.readyState : EventSource.CLOSED;
  }

  close() {
    this.finished = true;
    if (this.source) this.source.close();
  }

  #token() {
    const { token, tokenProvider } = this.options;
    return tokenProvider ? tokenProvider() : token;
  }

  #url() {
    const url = new URL(this.path, window.location.href);
    const token = this.#token();
    if (token) url.searchParams.set("access_token", token);
    if (this.lastEventId !== null) url.searchParams.set("last_event_id", String(this.lastEventId));
    return url;
  }

  // The browser gave up on an HTTP answer, whose status EventSource does not show. Wait
  // 0.5-1 s, then 1-2 s, 2-4 s ... up to 30 s (or the server's Retry-After, if longer), then
  // ask again with fetch, which does show it: 200 hands over to a new EventSource; 401
  // reopens with a fresh token if there is a tokenProvider; 204 (nothing more to send) and
  // the other 4xx (no access, no such session, a bad cursor) end the stream for good;
  // 429, 5xx and network errors wait longer and ask again. A thousand browsers refused at
  // once do not come back in step, and a refusal that will not change is not repeated.
  async #recover(retryAfterMs = 0) {
    this.failures += 1;
    const ceiling = Math.min(30000, 1000 * 2 ** (this.failures - 1));
    const wait = Math.max(retryAfterMs, ceiling / 2 + Math.random() * (ceiling / 2));
    await new Promise((resolve) => setTimeout(resolve, wait));
    if (this.finished) return;
    const probe = new AbortController();
    let status = 0;
    let retryAfter = 0;
    try {
      const answer = await fetch(this.#url(), {
        headers: { Accept: "text/event-stream" },
        signal: probe.signal,
      });
      status = answer.status;
      const asked = Number(answer.headers.get("Retry-After"));
      if (Number.isInteger(asked) && asked > 0) retryAfter = Math.min(asked, 60) * 1000;
    } catch (error) {
      status = 0;  // the network: try again
    } finally {
      probe.abort();  // only the status was wanted; a 200's stream goes to EventSource
    }
    if (this.finished) return;
    const permanent = status === 204 || (status >= 400 && status < 500 && status !== 429);
    // A many-session stream's cursor this database cannot resume (404: it lacks the
    // position, as after a restore; 409: not commit-safe) is let go: it reopens from now.
    const unresumable = this.options.keepOpen && this.lastEventId !== null
      && (status === 404 || status === 409);
    if (status === 200 || (status === 401 && this.options.tokenProvider)) {
      this.#open();
    } else if (unresumable) {
      this.lastEventId = null;
      this.#open();
    } else if (permanent) {
      this.close();
      if (this.options.onClosed) this.options.onClosed(status);
    } else {
      this.#recover(retryAfter);
    }
  }

  #open() {
    const call = (name, value) => this.options[name] && this.options[name](value);
    if (this.source !== null && this.lastEventId === null) call("onGap");
    const source = new EventSource(this.#url());
    this.source = source;

    source.addEventListener("open", () => {
      this.opens += 1;
      this.failures = 0;
      call("onOpen");
    });
    const deliver = (message) => {
      if (this.finished) return null;
      if (message.lastEventId !== "") this.lastEventId = message.lastEventId;
      const event = JSON.parse(message.data);
      call("onEvent", event);
      return event;
    };
    source.addEventListener("progress", deliver);
    const end = (message, handler) => {
      const event = deliver(message);
      if (!this.options.keepOpen) this.close();
      if (event) call(handler, event);
    };
    source.addEventListener("complete", (message) => end(message, "onComplete"));
    source.addEventListener("reset", (message) => {
      this.lastEventId = message.lastEventId;
      call("onReset", JSON.parse(message.data));
    });
    source.addEventListener("error", (message) => {
      if (message.data) {
        end(message, "onFailed");  // a failed job: the server sent the event
        return;
      }
      call("onConnectionError");
      if (source.readyState === EventSource.CLOSED && !this.finished) this.#recover();
    });
  }
}

export function sessionPath(sessionId) {
  return `/api/sessions/${encodeURIComponent(sessionId)}/status/stream`;
}

export const ALL_EVENTS_PATH = "/api/events/stream";

// The all-sessions stream, narrowed to these sessions and patients (each list up to 100;
// none: everything the caller may read).
export function allEventsPath({ sessionIds = [], patientIds = [] } = {}) {
  const query = new URLSearchParams();
  for (const id of sessionIds) query.append("session_id", id);
  for (const id of patientIds) query.append("patient_id", id);
  const text = query.toString();
  return text ? `${ALL_EVENTS_PATH}?${text}` : ALL_EVENTS_PATH;
}

// Every session the caller may read, or those the filters name, on one stream that stays
// open as sessions end and resumes exactly after the last event it delivered.
export function followAll({ sessionIds, patientIds, ...options } = {}) {
  return new LedgerStream(allEventsPath({ sessionIds, patientIds }), { ...options, keepOpen: true });
}
