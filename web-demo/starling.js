// starling.js: a small, dependency-free client for the Starling broker.
//
// JSON codec (subprotocol `starling.v1.json`), as an ES module usable in any
// web app:
//
//   import { StarlingClient } from "/starling.js";
//   const client = new StarlingClient("ws://127.0.0.1:7070/ws", {
//     onState: (state) => console.log(state),
//   });
//   const stop = client.subscribe("chat.lobby", (msg) => console.log(msg.from, msg.payload));
//   client.publish("chat.lobby", { text: "hi" });
//
// With a broker that requires tokens, pass `token` or, better, `getToken`
// (called on every connect and before the token expires):
//
//   new StarlingClient(url, { getToken: () => fetch("/token").then((r) => r.text()) });
//
// The API is documented in README.md, section "Browser client".

/** Subprotocol offered in the handshake. */
export const SUBPROTOCOL = "starling.v1.json";

/**
 * An `error` frame from the broker (`code` is a stable snake_case word such as
 * `invalid_topic`), or a client-side failure: `timeout`, `disconnected`,
 * `not_connected`, `closed`, `queue_full`, `terminated` (a terminal close
 * code from the broker), `bad_url`, `token` (`getToken` failed).
 */
export class StarlingError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = "StarlingError";
    this.code = code;
  }
}

/** Connection states reported to `onState`. */
export const States = Object.freeze({
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

const DEFAULTS = {
  minDelay: 250, // ms: cap of the first reconnect delay
  maxDelay: 5000, // ms: largest reconnect delay
  pingInterval: 20000, // ms between application-level pings (0: none)
  pingTimeout: 10000, // ms without a pong before the connection is dropped
  requestTimeout: 10000, // ms before publishWithAck / ping reject with `timeout`
  connectTimeout: 10000, // ms for the handshake and the welcome frame
  maxQueue: 1000, // frames kept while offline
};

/** A connection up this long resets the reconnect backoff. */
const STABLE_AFTER_MS = 5000;

/** A token is refreshed this long before its `exp` (or at 80 % of its life). */
const REFRESH_BEFORE_MS = 30000;

/** The `exp` claim of a JWT, in ms since the epoch, when it has one. */
export function tokenExpiry(token) {
  try {
    const part = String(token).split(".")[1];
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(base64 + "===".slice((base64.length + 3) % 4)));
    return typeof claims.exp === "number" ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/** `url` with `token` in its query (replacing one already there). */
function withToken(url, token) {
  if (!token) return url;
  const [base, query = ""] = url.split("?");
  const params = query.split("&").filter((p) => p && !p.startsWith("token="));
  params.push(`token=${encodeURIComponent(token)}`);
  return `${base}?${params.join("&")}`;
}

/** Whether a close code means "do not come back" (policy, application refusals). */
export function isTerminalClose(code) {
  return code === 1008 || (code >= 4500 && code <= 4999);
}

/** Whether `topic` is a pattern (has a `*` or `>` token). */
export function isPattern(topic) {
  return topic.split(".").some((token) => token === "*" || token === ">");
}

/** `ws(s)://<this page's host>/ws`, for pages served by the broker itself. */
export function defaultUrl() {
  if (typeof location === "undefined") return "ws://127.0.0.1:7070/ws";
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
}

function noop() {}

export class StarlingClient {
  /**
   * @param {string} [url] `ws://host:port/ws` (default: this page's host).
   * @param {object} [options] callbacks `onState(state, info)`, `onError(err)`,
   *   `onLagged(topic, missed)`, `onReset(topic)` (the subscription's place
   *   in the topic's history was void, say after a broker restart: messages
   *   may be missing; everything retained follows), `onWelcome(welcome)`,
   *   `onJoin(topic, member)` and `onLeave(topic, member)` (presence topics
   *   this client is subscribed to: a member `{name, info}` arrived, or its
   *   last session has been gone for the broker's grace period);
   *   timings `minDelay`, `maxDelay`, `pingInterval`, `pingTimeout`,
   *   `requestTimeout`, `connectTimeout` (ms);
   *   `maxQueue`; `WebSocket` (an implementation, for Node or tests);
   *   `token` (a JWT) or `getToken()` (returns a JWT or a Promise of one;
   *   called before every connect and shortly before the token expires,
   *   which then sends `refresh`).
   */
  constructor(url, options = {}) {
    this.url = url || defaultUrl();
    this.options = { ...DEFAULTS, ...options };
    this.onState = options.onState || noop;
    this.onError = options.onError || ((err) => console.warn("starling:", err.code, err.message));
    this.onLagged = options.onLagged || noop;
    this.onReset = options.onReset || noop;
    this.onWelcome = options.onWelcome || noop;
    this.onJoin = options.onJoin || noop;
    this.onLeave = options.onLeave || noop;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.getToken = options.getToken || null;
    /** The token of the current connection, when the broker requires one. */
    this.token = options.token || null;

    /** Current state: "connecting" | "connected" | "reconnecting" | "closed". */
    this.state = null;
    /** The broker's `welcome` frame on the current connection (node, limits). */
    this.welcome = null;
    /** Reconnect attempts since the last connection that lasted. */
    this.attempts = 0;

    this._ws = null;
    this._nextId = 1;
    this._subs = new Map(); // topic or pattern -> { handlers:Set, position, ready }
    this._pending = new Map(); // id -> { resolve, reject, timer, kind, topic }
    this._queue = []; // frames (objects) waiting for a connection
    this._retryTimer = null;
    this._pingTimer = null;
    this._connectTimer = null;
    this._connectedAt = 0;
    this._everConnected = false;
    this._refreshTimer = null;
    this._refusedToken = null; // a token the broker closed with 1008

    if (typeof window !== "undefined" && window.addEventListener) {
      // Back online: try at once rather than waiting for the backoff.
      this._onOnline = () => {
        if (this.state === States.RECONNECTING && this._retryTimer) {
          clearTimeout(this._retryTimer);
          this._retryTimer = null;
          this._open();
        }
      };
      window.addEventListener("online", this._onOnline);
    }
    this._setState(States.CONNECTING);
    this._open();
  }

  /** Whether the connection is up (welcome received). */
  get connected() {
    return this.state === States.CONNECTED;
  }

  /**
   * Subscribes `handler(msg)` to `topic` (a topic or a pattern such as
   * `metrics.>`); `msg` is `{ topic, payload, offset, epoch, sub, from }`.
   * Returns a function that unsubscribes this handler; its `ready` property
   * is a Promise that resolves when the broker acknowledged the subscription
   * (rejects with a StarlingError, also passed to `onError`, when refused).
   * `since` (with the `epoch` of that offset, when known): replay retained
   * messages with offset greater than it first; topics only, as offsets
   * belong to a topic. Both apply when the first handler of `topic`
   * subscribes; after that the client resumes from its own position.
   * On a presence topic, `name` (without auth: the member's name, 1 to 64
   * bytes) and `info` (an object of at most 1 KiB) say who this session is;
   * like `since`, they are set by the topic's first handler.
   */
  subscribe(topic, handler, { since, epoch, name, info } = {}) {
    if (typeof handler !== "function") throw new TypeError("subscribe needs a handler function");
    let sub = this._subs.get(topic);
    if (!sub) {
      // Where the subscription stands in the topic's history, sent as
      // `since` and `epoch` by every (re)subscribe: the one given, or else
      // none until the ack names the topic's latest.
      const resume = typeof since === "number" && !isPattern(topic);
      const position = resume ? { offset: since, epoch: epoch ?? undefined } : undefined;
      // On a presence topic: the member's name and the session's info,
      // sent by every (re)subscribe.
      sub = { topic, handlers: new Set(), position, acked: false, name, info };
      sub.ready = new Promise((resolve, reject) => {
        sub.resolve = resolve;
        sub.reject = reject;
      });
      sub.ready.catch(noop); // failures also go to onError: never "unhandled"
      this._subs.set(topic, sub);
      if (this.connected) this._sendSubscribe(sub);
    }
    sub.handlers.add(handler);
    const unsubscribe = () => this.unsubscribe(topic, handler);
    unsubscribe.ready = sub.ready;
    return unsubscribe;
  }

  /**
   * Removes `handler` from `topic` (every handler when omitted); the broker
   * is told once no handler is left.
   */
  unsubscribe(topic, handler) {
    const sub = this._subs.get(topic);
    if (!sub) return;
    if (handler) sub.handlers.delete(handler);
    else sub.handlers.clear();
    if (sub.handlers.size > 0) return;
    this._subs.delete(topic);
    if (this.connected) this._send({ type: "unsubscribe", topic });
  }

  /** Topics and patterns currently subscribed. */
  subscriptions() {
    return [...this._subs.keys()];
  }

  /**
   * Publishes `payload` (any JSON value) to `topic`, fire and forget. While
   * offline the frame waits in a bounded queue and goes out on reconnect.
   * Broker errors (for example `invalid_topic`) arrive at `onError`.
   */
  publish(topic, payload) {
    this._sendOrQueue({ type: "publish", topic, payload });
  }

  /**
   * Who is on a presence topic (the broker's `--presence`): resolves with
   * `{count, members: [{name, sessions, info}]}` (at most 1,000 members),
   * rejects with a StarlingError (`invalid_topic` for a topic without
   * presence, `unauthorized`, `timeout`, `disconnected`, `closed`).
   */
  presence(topic) {
    return this._request({ type: "presence", topic }, "presence", false);
  }

  /**
   * Publishes and waits for the broker's answer: resolves with the offset
   * the message got (undefined when the topic keeps no history), rejects
   * with a StarlingError (`invalid_topic`, `message_too_large`, ...,
   * `timeout`, `disconnected` when the connection dropped before the
   * answer, `closed`).
   */
  publishWithAck(topic, payload) {
    return this._request({ type: "publish", topic, payload }, "publish", true);
  }

  /** Application-level ping: resolves with the round trip in ms. */
  ping() {
    if (!this.connected) {
      return Promise.reject(new StarlingError("not_connected", "not connected"));
    }
    const started = now();
    return this._request({ type: "ping" }, "ping", false).then(() => now() - started);
  }

  /** Closes for good: no reconnect; pending requests reject with `closed`. */
  close() {
    if (this.state === States.CLOSED) return;
    this._shutdown({ code: 1000, reason: "closed by the application" });
    if (this._ws) {
      const ws = this._ws;
      this._detach(ws);
      try {
        ws.close(1000, "bye");
      } catch {
        // already closing
      }
    }
  }

  // ---- internals ----

  _setState(state, info) {
    if (this.state === state) return;
    this.state = state;
    try {
      this.onState(state, info || {});
    } catch (err) {
      console.error("starling: onState threw", err);
    }
  }

  _open() {
    this._retryTimer = null;
    if (this.state === States.CLOSED) return;
    if (!this.getToken) return this._connect();
    let token;
    try {
      token = this.getToken();
    } catch (err) {
      return this._tokenFailed(err);
    }
    Promise.resolve(token).then(
      (token) => {
        if (this.state === States.CLOSED) return;
        if (!token || token === this._refusedToken) {
          return this._tokenFailed(new Error("getToken gave no new token"));
        }
        this.token = token;
        this._connect();
      },
      (err) => this._tokenFailed(err),
    );
  }

  /** `getToken` failed: try again later, as after a dropped connection. */
  _tokenFailed(err) {
    if (this.state === States.CLOSED) return;
    this._reportError(new StarlingError("token", `getToken failed: ${err && err.message}`));
    if (this._refusedToken) {
      // Refused with 1008 and no new token to offer: stop for good.
      this._shutdown({ code: 1008, reason: "no new token" });
      return;
    }
    this._scheduleReconnect();
  }

  _connect() {
    let ws;
    try {
      ws = new this.WebSocket(withToken(this.url, this.token), SUBPROTOCOL);
    } catch (err) {
      // A malformed URL throws: nothing will ever work.
      this._shutdown({ code: 0, reason: String(err && err.message) });
      this._reportError(new StarlingError("bad_url", String(err && err.message)));
      return;
    }
    this._ws = ws;
    ws.onmessage = (event) => this._onFrame(event.data);
    ws.onclose = (event) => this._onClose(ws, event.code, event.reason);
    // Browsers follow an error with a close event, some other implementations
    // do not: give up on the socket at once either way.
    ws.onerror = () => this._drop(ws, 1006, "connection error");
    // A handshake (or welcome) that never comes: try again.
    clearTimeout(this._connectTimer);
    this._connectTimer = setTimeout(() => {
      if (this._ws === ws && !this.connected) this._drop(ws, 4000, "connect timeout");
    }, this.options.connectTimeout);
  }

  _detach(ws) {
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = null;
    if (this._ws === ws) this._ws = null;
  }

  _onFrame(data) {
    if (typeof data !== "string") return; // JSON codec: text only
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    switch (frame.type) {
      case "welcome":
        return this._onWelcome(frame);
      case "message":
        return this._onMessage(frame);
      case "ack":
        // A subscribe's ack positions it; a publish's resolves with its offset.
        return this._settle(frame.id, (p) =>
          p.resolve(p.kind === "subscribe" ? frame : (frame.offset ?? undefined)),
        );
      case "pong":
        if (frame.id !== undefined) this._settle(frame.id, (p) => p.resolve());
        return;
      case "error":
        return this._onErrorFrame(frame);
      case "lagged":
        return this._onLagged(frame);
      case "presence":
        return this._settle(frame.id, (p) =>
          p.resolve({ count: frame.count ?? 0, members: frame.members ?? [] }),
        );
      case "join":
      case "leave":
        return this._onPresenceEvent(frame);
      default:
        return; // unknown frame types are ignored (newer brokers)
    }
  }

  _onWelcome(frame) {
    clearTimeout(this._connectTimer);
    this.welcome = frame;
    const wasReconnect = this._everConnected;
    this._everConnected = true;
    this._connectedAt = now();
    this._refusedToken = null;
    this._scheduleRefresh();
    this._setState(States.CONNECTED, { node: frame.node, reconnected: wasReconnect });
    try {
      this.onWelcome(frame);
    } catch (err) {
      console.error("starling: onWelcome threw", err);
    }
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    const queued = this._queue;
    this._queue = [];
    for (const item of queued) {
      if (item.id !== undefined && !this._pending.has(item.id)) continue; // timed out meanwhile
      this._send(item.frame);
    }
    this._startPing();
  }

  _onMessage(frame) {
    const key = frame.sub ?? frame.topic;
    const sub = this._subs.get(key);
    if (!sub) return;
    if (typeof frame.offset === "number" && !isPattern(sub.topic)) {
      sub.position = { offset: frame.offset, epoch: frame.epoch ?? sub.position?.epoch };
    }
    const msg = {
      topic: frame.topic,
      payload: frame.payload,
      offset: frame.offset,
      epoch: frame.epoch,
      sub: frame.sub,
      from: frame.from,
    };
    for (const handler of [...sub.handlers]) {
      try {
        handler(msg);
      } catch (err) {
        console.error("starling: handler for", key, "threw", err);
      }
    }
  }

  /**
   * `lagged`: messages were dropped for a subscription (`missed` of them),
   * or its position was void (`reset`: how many were lost is unknown).
   */
  _onLagged(frame) {
    const reset = frame.reset === true;
    try {
      if (reset) this.onReset(frame.topic);
      else this.onLagged(frame.topic, frame.missed);
    } catch (err) {
      console.error(`starling: ${reset ? "onReset" : "onLagged"} threw`, err);
    }
  }

  /**
   * The ack of a subscribe to a topic with history names the topic's latest
   * offset and its epoch. A new subscription starts there. One whose
   * position the broker cannot honour (another epoch, or an offset beyond
   * the latest: the broker answers with a reset and replays everything
   * retained) starts over at 0 in the ack's epoch. Otherwise the position
   * stays (the replay that follows moves it); a position without an epoch
   * (a `since` given alone) is checked on its offset only, as the broker
   * does, and takes the ack's epoch.
   */
  _positioned(sub, ack) {
    if (typeof ack.offset !== "number" || isPattern(sub.topic)) return;
    const epoch = ack.epoch ?? undefined;
    const mine = sub.position;
    if (!mine) {
      sub.position = { offset: ack.offset, epoch };
    } else if (mine.offset > ack.offset || (mine.epoch !== undefined && mine.epoch !== epoch)) {
      sub.position = { offset: 0, epoch };
    } else {
      sub.position = { offset: mine.offset, epoch };
    }
  }

  _onPresenceEvent(frame) {
    const callback = frame.type === "join" ? this.onJoin : this.onLeave;
    try {
      callback(frame.topic, frame.member);
    } catch (err) {
      console.error(`starling: on${frame.type === "join" ? "Join" : "Leave"} threw`, err);
    }
  }

  _onErrorFrame(frame) {
    const err = new StarlingError(frame.code, frame.message);
    if (frame.id !== undefined && this._pending.has(frame.id)) {
      this._settle(frame.id, (p) => p.reject(err));
      return;
    }
    this._reportError(err);
  }

  _reportError(err) {
    try {
      this.onError(err);
    } catch (e) {
      console.error("starling: onError threw", e);
    }
  }

  _settle(id, fn) {
    const pending = this._pending.get(id);
    if (!pending) return;
    this._pending.delete(id);
    clearTimeout(pending.timer);
    fn(pending);
  }

  _sendSubscribe(sub) {
    const id = this._nextId++;
    const frame = { type: "subscribe", id, topic: sub.topic };
    if (sub.name !== undefined) frame.name = sub.name;
    if (sub.info !== undefined) frame.info = sub.info;
    const position = isPattern(sub.topic) ? undefined : sub.position;
    if (position) {
      frame.since = position.offset;
      if (position.epoch !== undefined) frame.epoch = position.epoch;
    }
    const pending = {
      kind: "subscribe",
      resolve: (ack) => {
        this._positioned(sub, ack);
        sub.acked = true;
        sub.resolve();
      },
      reject: (err) => {
        err.topic = sub.topic;
        if (this._subs.get(sub.topic) === sub) this._subs.delete(sub.topic);
        sub.reject(err);
        this._reportError(err);
      },
      timer: null,
    };
    this._pending.set(id, pending);
    this._send(frame);
  }

  _request(frame, kind, queueable) {
    return new Promise((resolve, reject) => {
      if (this.state === States.CLOSED) {
        reject(new StarlingError("closed", "the client is closed"));
        return;
      }
      const id = this._nextId++;
      frame.id = id;
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new StarlingError("timeout", `no answer within ${this.options.requestTimeout} ms`));
      }, this.options.requestTimeout);
      this._pending.set(id, { kind, resolve, reject, timer, sent: this.connected });
      if (this.connected) this._send(frame);
      else if (queueable) this._enqueue({ frame, id });
    });
  }

  _sendOrQueue(frame) {
    if (this.state === States.CLOSED) return;
    if (this.connected) this._send(frame);
    else this._enqueue({ frame });
  }

  _enqueue(item) {
    if (this._queue.length >= this.options.maxQueue) {
      const dropped = this._queue.shift();
      if (dropped.id !== undefined) {
        this._settle(dropped.id, (p) =>
          p.reject(new StarlingError("queue_full", "dropped from the offline queue")),
        );
      }
    }
    this._queue.push(item);
  }

  _send(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    if (frame.id !== undefined) {
      const pending = this._pending.get(frame.id);
      if (pending) pending.sent = true;
    }
    ws.send(JSON.stringify(frame));
    return true;
  }

  _startPing() {
    this._stopPing();
    const every = this.options.pingInterval;
    if (!every) return;
    this._pingTimer = setInterval(() => {
      if (!this.connected) return;
      const ws = this._ws;
      const id = this._nextId++;
      const timer = setTimeout(() => {
        this._pending.delete(id);
        // No pong: the connection is dead even if the socket does not know yet.
        if (this._ws === ws) this._drop(ws, 4000, "no pong from the broker");
      }, this.options.pingTimeout);
      this._pending.set(id, { kind: "keepalive", resolve: noop, reject: noop, timer, sent: true });
      this._send({ type: "ping", id });
    }, every);
  }

  _stopPing() {
    if (this._pingTimer) clearInterval(this._pingTimer);
    this._pingTimer = null;
  }

  /** Asks `getToken` for a new token shortly before this one expires. */
  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    const expiry = this.getToken && tokenExpiry(this.token);
    if (!expiry) return;
    const left = expiry - Date.now();
    const wait = Math.max(1000, Math.min(left - REFRESH_BEFORE_MS, left * 0.8));
    this._refreshTimer = setTimeout(() => this._refresh(), wait);
  }

  async _refresh() {
    const ws = this._ws;
    try {
      const token = await this.getToken();
      if (!token || this._ws !== ws || !this.connected) return;
      await this._request({ type: "refresh", token }, "refresh", false);
      this.token = token;
      this._scheduleRefresh();
    } catch (err) {
      // The connection closes at expiry (1008) and reconnects with a new token.
      this._reportError(
        err instanceof StarlingError ? err : new StarlingError("token", String(err && err.message)),
      );
    }
  }

  /** Gives up on `ws` at once (no waiting for a close handshake). */
  _drop(ws, code, reason) {
    this._detach(ws);
    try {
      ws.close(code >= 3000 ? code : 1000, reason);
    } catch {
      // ignore
    }
    this._onClose(ws, code, reason);
  }

  _onClose(ws, code, reason) {
    if (this._ws !== ws && this._ws !== null) return; // an old socket
    this._detach(ws);
    // The backoff starts over only after a connection that lasted: a broker
    // that accepts and drops at once is not hammered.
    if (this._connectedAt && now() - this._connectedAt > STABLE_AFTER_MS) this.attempts = 0;
    this._connectedAt = 0;
    clearTimeout(this._connectTimer);
    this._stopPing();
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    this.welcome = null;
    // Requests already on the wire get no answer now: their fate is unknown.
    for (const [id, pending] of [...this._pending]) {
      if (pending.kind === "subscribe") {
        this._pending.delete(id); // resent from the subscription table
      } else if (pending.sent) {
        this._settle(id, (p) =>
          p.reject(new StarlingError("disconnected", "the connection dropped before the answer")),
        );
      }
    }
    if (this.state === States.CLOSED) return;
    if (code === 1008 && this.getToken) {
      // A refused or expired token: come back only with a new one.
      this._refusedToken = this.token;
      this._setState(this._everConnected ? States.RECONNECTING : States.CONNECTING, { code, reason });
      this._scheduleReconnect();
      return;
    }
    if (isTerminalClose(code)) {
      this._shutdown({ code, reason });
      const why = `the broker closed the connection for good: ${code} ${reason || ""}`;
      this._reportError(new StarlingError("terminated", why.trim()));
      return;
    }
    this._setState(this._everConnected ? States.RECONNECTING : States.CONNECTING, { code, reason });
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    // Exponential backoff with full jitter: uniform in [0, cap], the cap
    // doubling from minDelay up to maxDelay.
    const { minDelay, maxDelay } = this.options;
    const cap = Math.min(maxDelay, minDelay * 2 ** Math.min(this.attempts, 20));
    const delay = Math.random() * cap;
    this.attempts += 1;
    this._retryTimer = setTimeout(() => this._open(), delay);
  }

  _shutdown(info) {
    this._setState(States.CLOSED, info);
    this._stopPing();
    clearTimeout(this._connectTimer);
    if (this._retryTimer) clearTimeout(this._retryTimer);
    this._retryTimer = null;
    clearTimeout(this._refreshTimer);
    if (this._onOnline) window.removeEventListener("online", this._onOnline);
    const closed = new StarlingError("closed", "the client is closed");
    for (const [id, pending] of [...this._pending]) {
      if (pending.kind === "subscribe") this._settle(id, noop);
      else this._settle(id, (p) => p.reject(closed));
    }
    this._queue = [];
    for (const sub of this._subs.values()) if (!sub.acked) sub.reject(closed);
  }
}

function now() {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}

export default StarlingClient;
