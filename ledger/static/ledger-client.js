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
//     keepOpen: false,             // true for a stream of many sessions: one session's
//                                  // end is not the stream's (followAll sets it)
//   });
//   stream.lastEventId; stream.close();
//
// A server-sent `error` event is a failed job and carries the event as data; the browser's
// own `error` event (a lost connection) carries none. They share a name on EventSource, so
// this module tells them apart. After `complete` or `error` a session's stream is closed for
// good; a stream of many sessions (keepOpen) reports them and goes on.
// When the browser gives up (any HTTP error closes EventSource: an expired token's 401, a
// busy server's 503), the stream reopens from the last event it saw, with a growing,
// jittered delay; a tokenProvider gives it a fresh token each time.

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

  #open() {
    const url = new URL(this.path, window.location.href);
    const token = this.#token();
    if (token) url.searchParams.set("access_token", token);
    if (this.lastEventId !== null) url.searchParams.set("last_event_id", String(this.lastEventId));
    const source = new EventSource(url);
    this.source = source;
    const call = (name, value) => this.options[name] && this.options[name](value);

    source.addEventListener("open", () => {
      this.opens += 1;
      this.failures = 0;
      call("onOpen");
    });
    const deliver = (message) => {
      if (this.finished) return null;
      if (message.lastEventId !== "") this.lastEventId = Number(message.lastEventId);
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
      this.lastEventId = Number(message.lastEventId);
      call("onReset", JSON.parse(message.data));
    });
    source.addEventListener("error", (message) => {
      if (message.data) {
        end(message, "onFailed");  // a failed job: the server sent the event
        return;
      }
      call("onConnectionError");
      if (source.readyState === EventSource.CLOSED && !this.finished) {
        // The browser gave up: an HTTP error (an expired token's 401, a busy server's 503).
        // Reopen from the last event seen, after 0.5-1 s, then 1-2 s, 2-4 s ... up to 30 s:
        // a thousand browsers refused at once do not come back in step.
        this.failures += 1;
        const ceiling = Math.min(30000, 1000 * 2 ** (this.failures - 1));
        const wait = ceiling / 2 + Math.random() * (ceiling / 2);
        setTimeout(() => { if (!this.finished) this.#open(); }, wait);
      }
    });
  }
}

export function sessionPath(sessionId) {
  return `/api/sessions/${encodeURIComponent(sessionId)}/status/stream`;
}

export const ALL_EVENTS_PATH = "/api/events/stream";

// Every session the caller may read (admins and auditors), on one stream that stays open.
export function followAll(options = {}) {
  return new LedgerStream(ALL_EVENTS_PATH, { ...options, keepOpen: true });
}
