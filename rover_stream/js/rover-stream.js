/**
 * rover-stream.js: the browser client of a rover_stream server. One ES module, no dependencies, no build
 * step; the server serves it at `/rover-stream.js` (under its url_prefix, if any).
 *
 *     import { subscribe, joinRoom } from "/rover-stream.js";
 *
 *     const feed = subscribe(["news", "alerts"], {
 *       headline: (data, event) => console.log(event.channel, data.title),
 *     }, { onReset: (reset) => console.warn("lost", reset.missed, "events of", reset.channel) });
 *
 *     const room = joinRoom("science", { user: "ada", onMessage: (m) => console.log(m.user, m.text) });
 *     await room.ready;
 *     room.send("Sample 7 looks odd");
 *
 * - `subscribe` keeps one EventSource on `/realtime`. The browser reconnects it by itself with
 *   `Last-Event-ID` (the server's `retry:` sets the pace); when the browser gives up (an HTTP error, such
 *   as a 503 from a server that is restarting) the library opens a new one with backoff, resuming with
 *   `last_event_id`. Events the server could not replay come as an `onReset` call.
 * - `RoomClient` / `joinRoom` keep one WebSocket on `/ws/comms/<room>` (JSON frames, subprotocol
 *   `rover.json`), reconnect with backoff after a restart or a lost connection, and pass on only the
 *   messages of the history replayed on rejoining that this client has not seen yet.
 * - Tokens: a `token` (a string, or a function giving the current one) goes in the `token` query
 *   parameter; without one the `rover_token` cookie does the job. When the server says the token expired
 *   (or refuses a connection while it looks expired), `refreshToken` is called and the connection reopened
 *   where it left off.
 *
 * URLs are resolved against the folder this file was served from, which is where the server mounted
 * everything else; `base` overrides that (`base: "https://stream.example/rt/"`).
 */

const JSON_SUBPROTOCOL = "rover.json";
/** Close codes worth coming back from: going away (a restart), lost, server error, restart, try later. */
const RECONNECT_CODES = new Set([1001, 1006, 1011, 1012, 1013]);
/** The close code of a room member whose token expired. */
const TOKEN_EXPIRED_CODE = 4401;
/** Message ids a room client remembers, to drop what a rejoin's history replays a second time. */
const SEEN_IDS = 1000;
/** Event names the server uses itself on a stream: not available as event handlers. */
const SERVER_EVENTS = new Set(["reset", "shutdown", "token-expired"]);
const DEFAULT_MIN_DELAY = 1000;
const DEFAULT_MAX_DELAY = 10000;

/** The folder this module was loaded from: the server's root, with its url_prefix. */
const HOME = new URL(".", import.meta.url);

// ------------------------------------------------------------------------------------------------ types

/**
 * A token, or a function that gives the current one (called before every connection).
 * @typedef {string | (() => (string | null | undefined | Promise<string | null | undefined>))} TokenSource
 */

/**
 * Why a token is being refreshed: the server said it expired (`"token-expired"`), or it refused a
 * connection while the token looked expired or could not be read (`"refused"`; a cookie, say).
 * @typedef {object} TokenExpiry
 * @property {"token-expired" | "refused"} reason
 * @property {number | null} expiredAt  Unix seconds, when known.
 */

/**
 * Called when a token must be renewed. Resolves to the new token; or to nothing, when `token` is a
 * function that now gives the new one, or when the callback renewed the `rover_token` cookie itself.
 * @callback RefreshToken
 * @param {TokenExpiry} expiry
 * @returns {string | void | Promise<string | void>}
 */

/** @typedef {"connecting" | "open" | "reconnecting" | "closed"} ConnectionState */

/**
 * What goes with a state change: the wait before the next attempt, the close code and reason of a room's
 * WebSocket, and whether an `"open"` room has been joined before.
 * @typedef {object} StateDetail
 * @property {number} [delay]  Milliseconds before the next attempt.
 * @property {number} [code]
 * @property {string} [reason]
 * @property {boolean} [rejoin]
 */

/**
 * Options shared by subscriptions and room clients.
 * @typedef {object} ConnectionOptions
 * @property {string | URL} [base]  The server's URL with its url_prefix; default: where this module came from.
 * @property {TokenSource} [token]  Sent as `?token=`. Without it, the `rover_token` cookie is what counts.
 * @property {RefreshToken} [refreshToken]
 * @property {number} [minDelay=1000]  First reconnection delay (ms); doubled at each failure.
 * @property {number} [maxDelay=10000]  Longest reconnection delay (ms).
 * @property {(state: ConnectionState, detail: StateDetail) => void} [onStateChange]
 * @property {(error: RoverStreamError) => void} [onError]  Default: `console.warn`.
 */

/**
 * `event: reset`: the events after `lastEventId` on `channel` could not all be replayed.
 * @typedef {object} ResetInfo
 * @property {string} channel
 * @property {string} reason  `"expired"` (older than the history) or `"unknown"` (not an id of this
 *   history: from before a restart, say); for a pattern, `"too_many_channels"`: `channel` matched it past the
 *   stream's bound of followed channels, and is not followed.
 * @property {string | null} lastEventId  The id the client resumed from.
 * @property {number | null} missed  How many events were lost, when known.
 * @property {number} replayed  How many events the history still held and replays now.
 * @property {number} [limit]  With `"too_many_channels"`: the bound (ROVER_MAX_CHANNELS_PER_STREAM).
 */

/**
 * `event: shutdown`: the server is stopping; the stream reconnects by itself.
 * @typedef {object} ShutdownInfo
 * @property {string} reason
 * @property {number} reconnectMs
 */

/**
 * The second argument of every event handler.
 * @typedef {object} StreamEvent
 * @property {string} channel  The channel the event was published on.
 * @property {string} type  The event name (`"message"` for an event published without one).
 * @property {string} id  The id to resume after this event.
 * @property {MessageEvent} raw  The browser's event.
 */

/**
 * One handler per event name: `{headline(data, event) {...}}`. `message` receives the events published
 * without a name. `data` is the published JSON value (a string that is not JSON stays a string).
 * @typedef {Record<string, (data: any, event: StreamEvent) => void>} EventHandlers
 */

/**
 * @typedef {ConnectionOptions & {
 *   lastEventId?: string | null,
 *   withCredentials?: boolean,
 *   onReset?: (reset: ResetInfo) => void,
 *   onShutdown?: (info: ShutdownInfo) => void,
 * }} SubscribeOptions
 * `lastEventId` resumes the first connection after that id; `withCredentials` sends cookies to a server
 * of another origin (one that lists this page's origin in ROVER_CORS_ORIGINS).
 */

/**
 * @typedef {object} MessageFrame
 * @property {"message"} type
 * @property {string} room
 * @property {string} user
 * @property {string} text
 * @property {string} id
 * @property {number} timestamp  Unix seconds.
 */
/**
 * @typedef {object} JoinLeaveFrame
 * @property {"join" | "leave"} type
 * @property {string} room
 * @property {string} user
 * @property {string} [id]
 * @property {number} timestamp
 */
/**
 * @typedef {object} PresenceFrame  Sent to a member that joins: who is in the room (a name once per connection).
 * @property {"presence"} type
 * @property {string} room
 * @property {string[]} members
 */
/**
 * @typedef {object} HistoryFrame  Sent to a member that joins: the room's last messages.
 * @property {"history"} type
 * @property {string} room
 * @property {MessageFrame[]} messages
 */
/**
 * @typedef {object} ErrorFrame  Sent before a close, or for a frame the server could not take.
 * @property {"error"} type
 * @property {string} error  A stable code, such as `"invalid_frame"`.
 * @property {string} message  A sentence.
 */
/** @typedef {MessageFrame | JoinLeaveFrame | PresenceFrame | HistoryFrame | ErrorFrame} RoomFrame */

/**
 * One WebSocket connection of a room client: whether it opened, and brought back its own join yet.
 * @typedef {{opened: boolean, selfJoinSeen: boolean}} Session
 */

/**
 * @typedef {object} JoinInfo
 * @property {string} room
 * @property {string | null} user
 * @property {string[]} members
 */

/**
 * @typedef {ConnectionOptions & {
 *   user?: string,
 *   onMessage?: (message: MessageFrame) => void,
 *   onHistory?: (messages: MessageFrame[], info: {rejoin: boolean}) => void,
 *   onJoin?: (frame: JoinLeaveFrame) => void,
 *   onLeave?: (frame: JoinLeaveFrame) => void,
 *   onPresence?: (members: string[]) => void,
 *   onFrame?: (frame: RoomFrame) => void,
 * }} RoomOptions
 * `user` is the name to join as (a token's subject wins over it). `onHistory` gets, on joining, the
 * messages of the room's history this client has not seen. `onPresence` gets the member names whenever
 * they change. `onFrame` sees every frame first, as received.
 */

/** An error of the library, or one the server reported; `code` is the server's error code when it gave one. */
export class RoverStreamError extends Error {
  /**
   * @param {string} message
   * @param {string} [code]
   */
  constructor(message, code = "error") {
    super(message);
    this.name = "RoverStreamError";
    this.code = code;
  }
}

// ------------------------------------------------------------------------------------------------ helpers

/** @param {string | URL | undefined} base */
function baseUrl(base) {
  if (base === undefined || base === null || base === "") return HOME;
  const url = new URL(String(base), location.href);
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  return url;
}

/**
 * The published value: JSON when it parses, else the text as it came.
 * @param {string} text
 * @returns {any}
 */
function decode(text) {
  try {
    return JSON.parse(text);
  } catch (_) {
    return text;
  }
}

/**
 * A JWT's `exp` claim (Unix seconds), read without checking the signature; null when there is none.
 * @param {string | null} token
 * @returns {number | null}
 */
function expiryOf(token) {
  const part = typeof token === "string" ? token.split(".")[1] : undefined;
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, "="))).exp;
    return typeof exp === "number" ? exp : null;
  } catch (_) {
    return null;
  }
}

/** Reconnection delays: doubled at each failure up to a ceiling, with jitter so that the clients of a
 * restarted server do not all come back at the same instant. */
class Backoff {
  constructor(first = DEFAULT_MIN_DELAY, max = DEFAULT_MAX_DELAY) {
    this.first = first;
    this.max = Math.max(first, max);
    this.current = first;
  }

  next() {
    const delay = this.current;
    this.current = Math.min(this.current * 2, this.max);
    return Math.round(delay * (1 + Math.random() * 0.25));
  }

  reset() {
    this.current = this.first;
  }
}

/** The token of one connection: what to send now, whether a refusal may be its fault, how to renew it. */
class Tokens {
  /**
   * @param {TokenSource | undefined} source
   * @param {RefreshToken | undefined} refresh
   */
  constructor(source, refresh) {
    this.source = source;
    this.refreshCallback = refresh;
    /** @type {string | null} a token handed over by refreshToken, used until the next refresh */
    this.renewed = null;
    /** @type {string | null} the token of the last connection */
    this.used = null;
  }

  /** @returns {Promise<string | null>} */
  async current() {
    const token = this.renewed ?? (typeof this.source === "function" ? await this.source() : this.source);
    this.used = token || null;
    return this.used;
  }

  /** Whether a refused connection may be the token's fault: it has expired by its own `exp`, or it
   * cannot be read (a cookie, an opaque token) and there is a callback to renew it. */
  stale() {
    const exp = expiryOf(this.used);
    if (exp !== null) return exp * 1000 <= Date.now() + 1000;
    return Boolean(this.refreshCallback);
  }

  /**
   * @param {TokenExpiry["reason"]} reason
   * @param {number | null} [expiredAt]
   * @returns {TokenExpiry}
   */
  expiry(reason, expiredAt = null) {
    return { reason, expiredAt: expiredAt ?? expiryOf(this.used) };
  }

  /**
   * Renew the token. False when nothing can renew it (a fixed string and no refreshToken).
   * @param {TokenExpiry} expiry
   */
  async refresh(expiry) {
    if (this.refreshCallback) {
      const fresh = await this.refreshCallback(expiry);
      if (typeof fresh === "string" && fresh) this.renewed = fresh;
      return true;
    }
    this.renewed = null;
    return typeof this.source === "function";
  }
}

/**
 * What subscriptions and room clients share: state, backoff, tokens, reporting, the reconnection timer.
 * @template {ConnectionOptions} Options
 */
class Connection {
  /** @param {Options} options */
  constructor(options) {
    this.options = options;
    /** @type {ConnectionState} */
    this.state = "connecting";
    this.base = baseUrl(options.base);
    this.tokens = new Tokens(options.token, options.refreshToken);
    this.backoff = new Backoff(options.minDelay, options.maxDelay);
    this.closed = false;
    this.everOpen = false;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.timer = undefined;
  }

  /** @param {ConnectionState} state @param {StateDetail} [detail] */
  setState(state, detail = {}) {
    if (this.state === state && !("delay" in detail)) return;
    this.state = state;
    if (this.options.onStateChange) this.options.onStateChange(state, detail);
  }

  /** @param {unknown} error */
  report(error) {
    const err = error instanceof RoverStreamError ? error
      : new RoverStreamError(error instanceof Error ? error.message : String(error));
    if (this.options.onError) this.options.onError(err);
    else console.warn("rover-stream:", err.message);
  }

  /**
   * Open the connection again: now, or after the next backoff delay.
   * @param {boolean} now
   * @param {StateDetail} [detail]
   */
  schedule(now, detail = {}) {
    clearTimeout(this.timer);
    const delay = now ? 0 : this.backoff.next();
    this.setState(this.everOpen ? "reconnecting" : "connecting", { ...detail, delay });
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.closed) this.connect();
    }, delay);
  }

  /**
   * Renew the token, then reconnect: at once when the server said the token expired, after the backoff
   * delay when a refusal was only suspected to be the token's. Closes for good when nothing can renew it.
   * @param {TokenExpiry} expiry
   */
  async renewAndReconnect(expiry, detail = {}) {
    this.setState(this.everOpen ? "reconnecting" : "connecting", detail);
    let renewed;
    try {
      renewed = await this.tokens.refresh(expiry);
    } catch (error) {
      this.report(error);
      if (!this.closed) this.schedule(false, detail);
      return;
    }
    if (this.closed) return;
    if (!renewed) {
      this.report(new RoverStreamError("The access token expired, and there is no refreshToken to renew it.",
        "token_expired"));
      this.close();
      return;
    }
    this.schedule(expiry.reason === "token-expired", detail);
  }

  /**
   * @param {string} path  Relative to the base.
   * @param {"ws:" | "http:"} [kind]
   */
  url(path, kind = "http:") {
    const url = new URL(path, this.base);
    if (kind === "ws:") url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url;
  }

  /**
   * The token for a new connection (null: none); undefined when the client was closed meanwhile, or the
   * token could not be had (reported; another attempt is scheduled).
   * @returns {Promise<string | null | undefined>}
   */
  async tokenToConnect() {
    try {
      const token = await this.tokens.current();
      return this.closed ? undefined : token;
    } catch (error) {
      this.report(error);
      if (!this.closed) this.schedule(false);
      return undefined;
    }
  }

  /** Open the connection (each kind its own way). */
  connect() {}

  /** Stop for good. */
  close() {
    this.finish();
  }

  /** @param {StateDetail} [detail] */
  finish(detail = {}) {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.setState("closed", detail);
  }
}

// ------------------------------------------------------------------------------------------------ streams

/**
 * A subscription to one or several channels over one EventSource. Made by {@link subscribe}.
 * @extends {Connection<SubscribeOptions>}
 */
export class Subscription extends Connection {
  /**
   * @param {string | string[]} channels  Channel names (patterns such as `sensors.*` too).
   * @param {EventHandlers} [handlers]
   * @param {SubscribeOptions} [options]
   */
  constructor(channels, handlers = {}, options = {}) {
    super(options);
    const list = typeof channels === "string" ? [channels] : Array.from(channels || []);
    if (!list.length || list.some((c) => typeof c !== "string" || !c)) {
      throw new TypeError("subscribe() needs a channel name or a list of channel names.");
    }
    /** @type {readonly string[]} */
    this.channels = Object.freeze(list);
    /** The id to resume from: the last event's (the cursor over every channel, with several). */
    this.lastEventId = options.lastEventId || null;
    this.handlers = handlers;
    // Several channels, or a pattern: each event's data is {"channel": ..., "data": ...}.
    this.multi = list.length > 1 || list.some((c) => c.includes("*"));
    /** @type {EventSource | null} */
    this.source = null;
    this.connect();
  }

  async connect() {
    const token = await this.tokenToConnect();
    if (token === undefined) return;
    const url = this.url("realtime");
    for (const channel of this.channels) url.searchParams.append("channel", channel);
    if (token) url.searchParams.set("token", token);
    // EventSource sends Last-Event-ID on its own reconnections; a new one resumes with the query.
    if (this.lastEventId) url.searchParams.set("last_event_id", this.lastEventId);
    const source = new EventSource(url, { withCredentials: Boolean(this.options.withCredentials) });
    this.source = source;
    /** @type {(listener: (event: MessageEvent) => void) => (event: Event) => void} */
    const mine = (listener) => (event) => {
      if (this.source !== source) return;
      if (event instanceof MessageEvent && event.lastEventId) this.lastEventId = event.lastEventId;
      listener(/** @type {MessageEvent} */ (event));
    };
    source.onopen = mine(() => {
      this.backoff.reset();
      this.everOpen = true;
      this.setState("open");
    });
    source.onerror = mine(() => {
      if (source.readyState !== EventSource.CLOSED) {
        this.setState(this.everOpen ? "reconnecting" : "connecting");  // the browser reconnects by itself
        return;
      }
      // The browser gave up: an HTTP error (401 for an expired token, 503 while a server restarts).
      this.drop();
      if (this.tokens.stale()) this.renewAndReconnect(this.tokens.expiry("refused"));
      else this.schedule(false);
    });
    const dispatch = mine((event) => this.dispatch(event));
    for (const name of Object.keys(this.handlers)) {
      if (!SERVER_EVENTS.has(name)) source.addEventListener(name, dispatch);
    }
    source.addEventListener("reset", mine((event) => {
      const data = decode(event.data) || {};
      if (this.options.onReset) {
        this.options.onReset({ channel: data.channel, reason: data.reason, lastEventId: data.last_event_id ?? null,
          missed: data.missed ?? null, replayed: data.replayed ?? 0,
          ...(typeof data.limit === "number" ? { limit: data.limit } : {}) });
      }
    }));
    source.addEventListener("shutdown", mine((event) => {
      const data = decode(event.data) || {};
      this.setState("reconnecting");
      if (this.options.onShutdown) {
        this.options.onShutdown({ reason: data.reason || "server shutting down", reconnectMs: data.reconnect_ms ?? 0 });
      }
    }));
    source.addEventListener("token-expired", mine((event) => {
      const data = decode(event.data) || {};
      this.drop();
      this.renewAndReconnect(this.tokens.expiry("token-expired", data.expired_at ?? null));
    }));
  }

  /** @param {MessageEvent} event */
  dispatch(event) {
    const handler = this.handlers[event.type];
    if (typeof handler !== "function") return;
    let data = decode(event.data);
    let channel = this.channels[0];
    if (this.multi && data && typeof data === "object" && typeof data.channel === "string" && "data" in data) {
      channel = data.channel;
      data = data.data;
    }
    handler(data, { channel, type: event.type, id: event.lastEventId, raw: event });
  }

  drop() {
    if (this.source) this.source.close();
    this.source = null;
  }

  /** Stop for good. */
  close() {
    this.drop();
    this.finish();
  }
}

/**
 * Subscribe to `channels`: `handlers` get each event by its name; the connection comes back by itself.
 *
 *     const feed = subscribe("news", { headline: (data) => show(data) }, { onReset: (r) => refetch(r) });
 *     feed.close();
 *
 * @param {string | string[]} channels
 * @param {EventHandlers} [handlers]
 * @param {SubscribeOptions} [options]
 * @returns {Subscription}
 */
export function subscribe(channels, handlers, options) {
  return new Subscription(channels, handlers, options);
}

// ------------------------------------------------------------------------------------------------ rooms

/**
 * A member of one WebSocket room, reconnecting by itself. Made by {@link joinRoom}.
 * @extends {Connection<RoomOptions>}
 */
export class RoomClient extends Connection {
  /**
   * @param {string} room
   * @param {RoomOptions} [options]
   */
  constructor(room, options = {}) {
    super(options);
    if (typeof room !== "string" || !room) throw new TypeError("joinRoom() needs a room name.");
    this.room = room;
    this.user = options.user ?? null;
    /** @type {WebSocket | null} */
    this.ws = null;
    /** @type {Map<string, number>} member name -> connections */
    this.counts = new Map();
    /** @type {Set<string>} ids of the messages passed on (insertion order: oldest first) */
    this.seen = new Set();
    this.joinedOnce = false;
    /** @type {Promise<JoinInfo>} Resolves once the room is joined (history and presence received);
     * rejects if the client is closed first. */
    this.ready = new Promise((resolve, reject) => {
      this.settle = { resolve, reject };
    });
    this.ready.catch(() => {});  // a caller that never waits for it must not see an unhandled rejection
    this.connect();
  }

  /** The members' names, sorted (a name once, however many connections it has). */
  get members() {
    return Array.from(this.counts.keys()).sort((a, b) => a.localeCompare(b));
  }

  /** Member name -> number of connections in the room. */
  get presence() {
    return new Map(this.counts);
  }

  /** Whether messages can be sent now. */
  get connected() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  async connect() {
    const token = await this.tokenToConnect();
    if (token === undefined) return;
    const url = this.url("ws/comms/" + encodeURIComponent(this.room), "ws:");
    if (this.user) url.searchParams.set("user", this.user);
    if (token) url.searchParams.set("token", token);
    const ws = new WebSocket(url, JSON_SUBPROTOCOL);
    /** @type {Session} */
    const session = { opened: false, selfJoinSeen: false };
    this.ws = ws;
    ws.onopen = () => {
      session.opened = true;
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws || this.closed || typeof event.data !== "string") return;
      const frame = decode(event.data);
      if (frame && typeof frame === "object") this.receive(session, frame);
    };
    ws.onerror = () => {};  // a close event follows
    ws.onclose = (event) => {
      if (this.ws !== ws || this.closed) return;
      this.ws = null;
      this.closedBy(session, event.code, event.reason);
    };
  }

  /**
   * The connection ended: come back (renewing the token first if need be), or stop for good.
   * @param {Session} session
   * @param {number} code
   * @param {string} reason
   */
  closedBy(session, code, reason) {
    const detail = { code, reason };
    if (code === TOKEN_EXPIRED_CODE) {
      this.renewAndReconnect(this.tokens.expiry("token-expired"), detail);
    } else if (!session.opened && this.tokens.stale()) {
      this.renewAndReconnect(this.tokens.expiry("refused"), detail);  // refused before the upgrade
    } else if (RECONNECT_CODES.has(code) || !session.opened) {
      this.schedule(false, detail);
    } else {
      // 1000, 1008, 1009...: about this client; coming back would get the same answer.
      this.report(new RoverStreamError(`The room closed the connection (${code}${reason ? ": " + reason : ""}).`,
        "closed"));
      this.finish(detail);
    }
  }

  /**
   * @param {Session} session
   * @param {RoomFrame} frame
   */
  receive(session, frame) {
    const on = this.options;
    if (on.onFrame) on.onFrame(frame);
    switch (frame.type) {
      case "message":
        if (this.firstSight(frame) && on.onMessage) on.onMessage(frame);
        break;
      case "history": {
        const fresh = (Array.isArray(frame.messages) ? frame.messages : []).filter((m) => this.firstSight(m));
        if (on.onHistory) on.onHistory(fresh, { rejoin: this.joinedOnce });
        break;
      }
      case "presence": {
        this.counts = new Map();
        for (const name of Array.isArray(frame.members) ? frame.members : []) this.count(name, 1);
        if (this.user && !this.counts.has(this.user)) this.counts.set(this.user, 1);
        const rejoin = this.joinedOnce;
        this.joinedOnce = true;
        this.backoff.reset();
        this.everOpen = true;
        if (on.onPresence) on.onPresence(this.members);
        this.setState("open", { rejoin });
        this.settle.resolve({ room: this.room, user: this.user, members: this.members });
        break;
      }
      case "join":
        if (frame.user === this.user && !session.selfJoinSeen) {
          session.selfJoinSeen = true;  // this client's own join: counted from the presence frame
          break;
        }
        this.count(frame.user, 1);
        if (on.onJoin) on.onJoin(frame);
        if (on.onPresence) on.onPresence(this.members);
        break;
      case "leave":
        this.count(frame.user, -1);
        if (on.onLeave) on.onLeave(frame);
        if (on.onPresence) on.onPresence(this.members);
        break;
      case "error":
        // An expired token is announced before its close (4401), which renews it: nothing to report.
        if (frame.error !== "token_expired") {
          this.report(new RoverStreamError(String(frame.message || frame.error), String(frame.error || "error")));
        }
        break;
      default:
        break;
    }
  }

  /**
   * Whether a message is new to this client (rejoining replays the room's history).
   * @param {MessageFrame} message
   */
  firstSight(message) {
    if (!message || typeof message !== "object") return false;
    if (message.id === undefined || message.id === null) return true;
    const key = String(message.id);
    if (this.seen.has(key)) return false;
    this.seen.add(key);
    if (this.seen.size > SEEN_IDS) this.seen.delete(/** @type {string} */ (this.seen.values().next().value));
    return true;
  }

  /**
   * @param {unknown} name
   * @param {number} delta
   */
  count(name, delta) {
    if (typeof name !== "string") return;
    const n = (this.counts.get(name) || 0) + delta;
    if (n > 0) this.counts.set(name, n);
    else this.counts.delete(name);
  }

  /**
   * Send a message to the room (every member gets it, this client too).
   * @param {string} text
   * @returns {boolean} false when not connected (nothing is queued).
   */
  send(text) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify({ text: String(text) }));
    return true;
  }

  /** Leave the room for good. */
  close(code = 1000, reason = "") {
    if (this.closed) return;
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState === WebSocket.OPEN) ws.close(code, reason);
    // Closing a socket that is still connecting makes the browser log an error: close it once it opens.
    else if (ws && ws.readyState === WebSocket.CONNECTING) ws.addEventListener("open", () => ws.close(code, reason));
    this.finish({ code, reason });
  }

  /** @param {StateDetail} [detail] */
  finish(detail = {}) {
    this.settle.reject(new RoverStreamError(`The client of room ${this.room} was closed.`, "closed"));
    super.finish(detail);
  }
}

/**
 * Join `room` (over a WebSocket that comes back by itself after a restart or a lost connection).
 *
 *     const room = joinRoom("science", { user: "ada", onMessage: (m) => show(m) });
 *     await room.ready;
 *     room.send("hello");
 *
 * @param {string} room
 * @param {RoomOptions} [options]
 * @returns {RoomClient}
 */
export function joinRoom(room, options) {
  return new RoomClient(room, options);
}
