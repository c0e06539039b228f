// The Starling demo page: a chat and a live dashboard, both on starling.js.
//
// Everything that comes from the network or from users is put into the page
// with textContent (never innerHTML), so `<script>` in a message is text.

import { StarlingClient } from "./starling.js";
import { drawChart, formatNumber } from "./chart.js";

const $ = (id) => document.getElementById(id);

const STATS_TOPIC = "$sys.stats";
const CAPACITY = 120; // points kept per series
const MAX_MESSAGES = 500; // chat lines kept in the page
const MAX_CHARTS_PER_WATCH = 24;
const PALETTE = ["#6366f1", "#10b981", "#f59e0b", "#ec4899", "#0ea5e9", "#8b5cf6", "#ef4444", "#14b8a6"];
const TIME_FIELDS = new Set(["ts", "time", "timestamp"]);
const STATE_LABELS = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  closed: "Disconnected",
};

const store = {
  get(key, fallback) {
    try {
      return localStorage.getItem(`starling.${key}`) ?? fallback;
    } catch {
      return fallback;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(`starling.${key}`, value);
    } catch {
      // private mode: nothing is remembered
    }
  },
};

let client = null;

// --------------------------------------------------------------------- token

const TOKEN_KEY = "starling.token";
/** The token this page connects with, or null (a broker without auth). */
let token = null;
/** The reason of the broker's 1008 close once it refused the page's token. */
let authRefusal = null;

/**
 * The token for a broker with auth on, from the URL fragment: `#token=JWT`
 * (or `#dashboard&token=JWT`). A fragment never leaves the browser, so the
 * token stays out of the server's logs. It is then taken out of the address
 * bar (out of history and bookmarks) and kept in this tab's sessionStorage,
 * so that a reload keeps it; `#token=` forgets it.
 */
function takeToken() {
  const parts = location.hash.slice(1).split("&");
  const given = parts.find((part) => part.startsWith("token="));
  if (given === undefined) return session("get");
  let value = given.slice("token=".length);
  try {
    value = decodeURIComponent(value);
  } catch {
    // not percent-encoded: a JWT never is
  }
  session(value ? "set" : "remove", value);
  const rest = parts.filter((part) => part && !part.startsWith("token=")).join("&");
  history.replaceState(null, "", rest ? `#${rest}` : location.pathname + location.search);
  return value || null;
}

function session(op, value) {
  try {
    if (op === "get") return sessionStorage.getItem(TOKEN_KEY);
    if (op === "set") sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token lasts as long as the page
  }
  return null;
}

/** What the page shows once the broker refused it (close 1008): why, and how to get a token. */
function refusalNotice() {
  const page = `${location.origin}${location.pathname}#token=TOKEN`;
  const command =
    "starling token --jwt-secret SECRET --sub NAME --subscribe 'chat.>' --subscribe '$sys.stats' --publish 'chat.>'";
  const why = token
    ? `Token refused: the broker says "${authRefusal}".`
    : "Token required: this broker runs with auth on, and this page has no token.";
  return [
    why,
    " Get one with ",
    { code: command },
    " (or --jwt-private-key KEY.pem instead of --jwt-secret), then open ",
    { code: page },
    ".",
  ];
}

// ---------------------------------------------------------------- connection

function showState(state, info = {}) {
  if (state === "closed" && info.code === 1008) authRefusal = info.reason || "unauthorized";
  const conn = $("conn");
  conn.dataset.state = state;
  let label = STATE_LABELS[state] || state;
  if (authRefusal) label = token ? "Token refused" : "Token required";
  $("conn-label").textContent = label;
  if (authRefusal) conn.dataset.auth = "refused";
  conn.title = state === "connected" && info.node ? `Connected to node ${info.node}` : "";
  if (authRefusal) conn.title = refusalNotice().map((part) => part.code ?? part).join("");
  document.body.dataset.conn = state;
  if (state === "connected" && info.reconnected) {
    systemNote("Reconnected: you are live again");
    // Who came and went while this page was away.
    if (chat.topic && chat.unsubscribe) chat.unsubscribe.ready.then(() => loadMembers(chat.topic), () => {});
  }
  if (state === "reconnecting" && chat.room) systemNote("Connection lost: reconnecting…");
  updateBanner();
}

let bannerError = null;
let bannerTimer = null;

function updateBanner() {
  const banner = $("chat-banner");
  if (authRefusal) {
    // Kept until the page is opened again, with a token.
    banner.replaceChildren(
      ...refusalNotice().map((part) => {
        if (typeof part === "string") return part;
        const code = document.createElement("code");
        code.textContent = part.code;
        return code;
      }),
    );
    banner.dataset.kind = "error";
    banner.hidden = false;
    return;
  }
  const state = client ? client.state : "connecting";
  let text = "";
  let kind = "info";
  if (bannerError) {
    text = bannerError;
    kind = "error";
  } else if (state === "reconnecting") {
    text = "Reconnecting to the broker… what you send now goes out as soon as it is back.";
  } else if (state === "connecting") {
    text = "Connecting to the broker…";
  } else if (state === "closed") {
    text = "Disconnected from the broker. Reload the page to try again.";
    kind = "error";
  }
  banner.textContent = text;
  banner.dataset.kind = kind;
  banner.hidden = !text;
}

function flashError(text) {
  bannerError = text;
  clearTimeout(bannerTimer);
  bannerTimer = setTimeout(() => {
    bannerError = null;
    updateBanner();
  }, 6000);
  updateBanner();
}

function onClientError(err) {
  if (err.topic && watches.has(err.topic)) return; // the watch reports it
  if (authRefusal && err.code === "terminated") return; // the banner says why
  flashError(`Broker error (${err.code}): ${err.message}`);
}

function onLagged(topic, missed) {
  if (topic === chat.topic) systemNote(`${missed} message(s) were missed: this page fell behind`);
}

/** The broker could not resume the room from where this page was (it restarted, say). */
function onReset(topic) {
  if (topic === chat.topic) systemNote("Some messages may be missing");
}

// ---------------------------------------------------------------------- chat

const chat = {
  nick: "",
  room: "",
  topic: "",
  unsubscribe: null,
  people: new Map(), // nick -> last seen (ms), without presence
  members: new Map(), // name -> member {name, sessions, info}, from presence
  presence: false, // whether the broker keeps presence on the room's topic
  last: null, // { nick, ts } of the last line, to group consecutive ones
};

const ADJECTIVES = ["swift", "amber", "quiet", "lucky", "brave", "misty", "sunny", "clever"];
const BIRDS = ["starling", "robin", "wren", "finch", "heron", "swallow", "lark", "kestrel"];

function randomNick() {
  const pick = (list) => list[Math.floor(Math.random() * list.length)];
  return `${pick(ADJECTIVES)}-${pick(BIRDS)}`;
}

function cleanNick(raw) {
  return String(raw).trim().replace(/\s+/g, " ").slice(0, 32);
}

/** A room name made into one topic token: `My Room!` -> `my-room`. */
function cleanRoom(raw) {
  return String(raw)
    .trim()
    .toLowerCase()
    .replace(/^#+/, "")
    .replace(/[^a-z0-9_\-:]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 64);
}

function hue(text) {
  let h = 0;
  for (const ch of text) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return h % 360;
}

function initial(text) {
  return (Array.from(text.trim())[0] || "?").toUpperCase();
}

function join(rawNick, rawRoom) {
  const previousNick = chat.nick;
  const nick = cleanNick(rawNick) || chat.nick || randomNick();
  const room = cleanRoom(rawRoom) || "lobby";
  chat.nick = nick;
  store.set("nick", nick);
  $("nick").value = nick;
  $("me").textContent = nick;

  if (room !== chat.room) {
    if (chat.unsubscribe) chat.unsubscribe();
    chat.room = room;
    chat.topic = `chat.${room}`;
    store.set("room", room);
    $("room").value = room;
    $("messages").replaceChildren();
    $("empty").hidden = false;
    chat.people.clear();
    chat.members.clear();
    chat.presence = false;
    chat.last = null;
    $("room-title").textContent = `# ${room}`;
    $("composer").placeholder = `Message #${room}`;
    $("chat-topic").textContent = chat.topic;
    for (const chip of document.querySelectorAll(".chip")) {
      chip.setAttribute("aria-pressed", String(chip.dataset.room === room));
    }
    enterRoom();
    systemNote(`You joined #${room} as ${nick}`);
  } else if (previousNick && previousNick !== nick) {
    chat.people.delete(previousNick);
    // The presence name is the session's: a new name is a new session.
    if (chat.unsubscribe) chat.unsubscribe();
    enterRoom();
    systemNote(`You are now ${nick}`);
  }
  chat.people.set(nick, Date.now());
  renderPeople();
}

/** Subscribes to the room as `chat.nick`, then asks who is in it. */
function enterRoom() {
  chat.unsubscribe = client.subscribe(chat.topic, onChatMessage, { name: chat.nick });
  const topic = chat.topic;
  chat.unsubscribe.ready.then(() => loadMembers(topic), () => {});
}

/** Who is in the room, from the broker's presence; without presence on the
 * room's topic (a broker without `--presence chat.`), the list shows who
 * spoke recently instead. */
function loadMembers(topic) {
  client.presence(topic).then(
    ({ members }) => {
      if (topic !== chat.topic) return;
      chat.presence = true;
      chat.members = new Map(members.map((m) => [m.name, m]));
      renderPeople();
    },
    (err) => {
      if (topic !== chat.topic || err.code !== "invalid_topic") return;
      chat.presence = false;
      renderPeople();
    },
  );
}

function onJoin(topic, member) {
  if (topic !== chat.topic || !chat.presence) return;
  const known = chat.members.has(member.name);
  chat.members.set(member.name, member);
  if (!known && member.name !== chat.nick) systemNote(`${member.name} joined`);
  renderPeople();
}

function onLeave(topic, member) {
  if (topic !== chat.topic || !chat.presence) return;
  if (chat.members.delete(member.name) && member.name !== chat.nick) systemNote(`${member.name} left`);
  renderPeople();
}

function onChatMessage(msg) {
  const p = msg.payload;
  let nick = "anonymous";
  let text;
  let ts = Date.now();
  if (p && typeof p === "object" && !Array.isArray(p)) {
    const who = p.nick ?? p.user ?? p.from;
    if (who !== undefined && who !== null) nick = cleanNick(String(who)) || "anonymous";
    text = typeof p.text === "string" ? p.text : JSON.stringify(p);
    if (typeof p.ts === "number" && Number.isFinite(p.ts)) ts = p.ts;
  } else {
    text = typeof p === "string" ? p : JSON.stringify(p);
  }
  addMessage(nick, text, ts);
  chat.people.set(nick, Date.now());
  renderPeople();
}

function nearBottom(el) {
  return el.scrollHeight - el.scrollTop - el.clientHeight < 80;
}

function appendLine(li) {
  const wrap = $("messages-wrap");
  const list = $("messages");
  const stick = nearBottom(wrap);
  list.append(li);
  while (list.children.length > MAX_MESSAGES) list.firstElementChild.remove();
  $("empty").hidden = list.querySelector(".msg:not(.sys)") !== null;
  if (stick) wrap.scrollTop = wrap.scrollHeight;
}

function addMessage(nick, text, ts) {
  const li = $("msg-template").content.firstElementChild.cloneNode(true);
  li.dataset.nick = nick;
  if (nick === chat.nick) li.classList.add("own");
  const last = chat.last;
  if (last && last.nick === nick && ts - last.ts < 5 * 60 * 1000 && ts >= last.ts) li.classList.add("cont");
  chat.last = { nick, ts };

  const avatar = li.querySelector(".avatar");
  avatar.textContent = initial(nick);
  avatar.style.setProperty("--hue", String(hue(nick)));
  li.querySelector(".nick").textContent = nick;
  const when = new Date(ts);
  const time = li.querySelector(".time");
  time.textContent = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  time.dateTime = when.toISOString();
  time.title = when.toLocaleString();
  li.querySelector(".msg-text").textContent = text;
  appendLine(li);
}

function systemNote(text) {
  const li = document.createElement("li");
  li.className = "msg sys";
  const span = document.createElement("span");
  span.textContent = text;
  li.append(span);
  chat.last = null;
  appendLine(li);
}

function renderPeople() {
  let people;
  if (chat.presence) {
    // Who is in the room, yourself first, then by name.
    const rank = (name) => (name === chat.nick ? 0 : 1);
    people = [...chat.members.keys()]
      .sort((a, b) => rank(a) - rank(b) || a.localeCompare(b))
      .slice(0, 50)
      .map((name) => [name]);
  } else {
    const horizon = Date.now() - 15 * 60 * 1000;
    for (const [nick, seen] of chat.people) if (seen < horizon && nick !== chat.nick) chat.people.delete(nick);
    people = [...chat.people].sort((a, b) => b[1] - a[1]).slice(0, 12);
  }
  const list = $("people");
  list.replaceChildren(
    ...people.map(([nick]) => {
      const li = document.createElement("li");
      const avatar = document.createElement("span");
      avatar.className = "avatar";
      avatar.textContent = initial(nick);
      avatar.style.setProperty("--hue", String(hue(nick)));
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = nick;
      li.append(avatar, name);
      if (nick === chat.nick) {
        const you = document.createElement("span");
        you.className = "you";
        you.textContent = "you";
        li.append(you);
      }
      return li;
    }),
  );
  $("people-count").textContent = String(chat.presence ? chat.members.size : chat.people.size);
  $("people-title").textContent = chat.presence ? "In the room" : "Recently active";
}

function sendChat(event) {
  event.preventDefault();
  const input = $("composer");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  const payload = { nick: chat.nick, text, ts: Date.now() };
  client.publishWithAck(chat.topic, payload).catch((err) => {
    const why = err.code === "disconnected" ? "the connection dropped; it may not have been delivered" : err.message;
    flashError(`Message not confirmed (${err.code}): ${why}`);
    if (!input.value) input.value = text;
  });
}

// ----------------------------------------------------------------- dashboard

/** key `topic/field` -> { key, topic, field, values, total, last, canvases, readouts } */
const series = new Map();
/** pattern -> { pattern, el, charts, unsubscribe, count, keys } */
const watches = new Map();
const dirty = new Set();
let frameRequested = false;

function seriesFor(topic, field) {
  const key = `${topic}/${field}`;
  let s = series.get(key);
  if (!s) {
    s = { key, topic, field, values: [], total: 0, last: undefined, canvases: new Set(), readouts: new Set() };
    series.set(key, s);
  }
  return s;
}

function ingest(topic, field, value) {
  const s = seriesFor(topic, field);
  s.values.push(value);
  if (s.values.length > CAPACITY) s.values.shift();
  s.total += 1;
  s.last = value;
  for (const canvas of s.canvases) {
    canvas.dataset.points = String(s.values.length);
    canvas.dataset.total = String(s.total);
    canvas.dataset.last = String(value);
    dirty.add(canvas);
  }
  for (const el of s.readouts) el.textContent = formatNumber(value);
  requestDraw();
  return s;
}

/** Numeric fields of a payload: a number is `value`; objects one level deep. */
function numericFields(payload) {
  const out = [];
  if (typeof payload === "number" && Number.isFinite(payload)) {
    out.push(["value", payload]);
  } else if (payload && typeof payload === "object" && !Array.isArray(payload)) {
    for (const [k, v] of Object.entries(payload)) {
      if (TIME_FIELDS.has(k)) continue;
      if (typeof v === "number" && Number.isFinite(v)) {
        out.push([k, v]);
      } else if (v && typeof v === "object" && !Array.isArray(v)) {
        for (const [k2, v2] of Object.entries(v)) {
          if (typeof v2 === "number" && Number.isFinite(v2)) out.push([`${k}.${k2}`, v2]);
        }
      }
    }
  }
  return out;
}

function requestDraw() {
  if (frameRequested) return;
  frameRequested = true;
  const run = () => {
    frameRequested = false;
    for (const canvas of dirty) drawCanvas(canvas);
    dirty.clear();
  };
  // Background tabs get no animation frames: draw with a timer there.
  if (document.hidden) setTimeout(run, 250);
  else requestAnimationFrame(run);
}

function drawCanvas(canvas) {
  const s = series.get(canvas.dataset.series);
  drawChart(canvas, s ? s.values : [], {
    color: canvas.dataset.color,
    axes: canvas.classList.contains("big"),
    zeroBased: canvas.classList.contains("spark"),
    placeholder: canvas.dataset.placeholder || "waiting for data…",
  });
}

function redrawAll() {
  for (const canvas of document.querySelectorAll("canvas.chart")) dirty.add(canvas);
  requestDraw();
}

function bindCanvas(canvas, s, readout) {
  s.canvases.add(canvas);
  if (readout) s.readouts.add(readout);
  canvas.dataset.series = s.key;
  canvas.dataset.points = String(s.values.length);
  canvas.dataset.total = String(s.total);
  if (s.last !== undefined) canvas.dataset.last = String(s.last);
  resizeObserver.observe(canvas);
  dirty.add(canvas);
  requestDraw();
}

const resizeObserver = new ResizeObserver((entries) => {
  for (const entry of entries) dirty.add(entry.target);
  requestDraw();
});

function formatUptime(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function onStats(msg) {
  const p = msg.payload;
  if (!p || typeof p !== "object") return;
  for (const [field, value] of numericFields(p)) ingest(STATS_TOPIC, field, value);
  if (typeof p.node === "string") $("meta-node").textContent = p.node;
  if (typeof p.uptime_s === "number") $("meta-uptime").textContent = formatUptime(p.uptime_s);
  if (typeof p.published === "number") $("meta-published").textContent = formatNumber(p.published);
  if (typeof p.delivered === "number") $("meta-delivered").textContent = formatNumber(p.delivered);
  if (typeof p.subscriptions === "number") $("meta-subscriptions").textContent = formatNumber(p.subscriptions);
}

/** Whether `pattern` (with `*` and `>`) matches the concrete `topic`. */
function matches(pattern, topic) {
  const want = pattern.split(".");
  const have = topic.split(".");
  if ((want[0] === "*" || want[0] === ">") && have[0].startsWith("$")) return false;
  for (let i = 0; i < want.length; i++) {
    if (want[i] === ">") return i === want.length - 1 && have.length > i;
    if (i >= have.length) return false;
    if (want[i] !== "*" && want[i] !== have[i]) return false;
  }
  return want.length === have.length;
}

/** The watch that charts `topic`: the first one matching it (so overlapping patterns never plot twice). */
function ownerOf(topic) {
  if (topic === STATS_TOPIC) return null;
  for (const w of watches.values()) if (matches(w.pattern, topic)) return w;
  return null;
}

function saveWatches() {
  store.set("watches", JSON.stringify([...watches.keys()]));
}

function showWatchError(text) {
  const el = $("watch-error");
  el.textContent = text;
  el.hidden = !text;
}

function addWatch(raw) {
  const pattern = String(raw).trim();
  showWatchError("");
  if (!pattern) return;
  if (pattern === STATS_TOPIC) {
    showWatchError(`${STATS_TOPIC} is charted above.`);
    return;
  }
  if (watches.has(pattern)) {
    const el = watches.get(pattern).el;
    el.scrollIntoView({ block: "nearest" });
    return;
  }
  const el = $("watch-template").content.firstElementChild.cloneNode(true);
  el.dataset.pattern = pattern;
  el.querySelector(".watch-pattern").textContent = pattern;
  const w = { pattern, el, charts: el.querySelector(".watch-charts"), count: 0, keys: new Set(), unsubscribe: null };
  el.querySelector(".watch-remove").addEventListener("click", () => removeWatch(pattern));
  watches.set(pattern, w);
  $("watches").prepend(el);
  $("watches-empty").hidden = true;
  updateWatchCount(w);
  w.unsubscribe = client.subscribe(pattern, (msg) => onWatchMessage(w, msg));
  w.unsubscribe.ready.catch((err) => {
    if (authRefusal && err.code === "closed") return; // kept for when a token is given
    removeWatch(pattern);
    showWatchError(`Cannot watch ${pattern}: ${err.message} (${err.code})`);
  });
  saveWatches();
}

function removeWatch(pattern) {
  const w = watches.get(pattern);
  if (!w) return;
  watches.delete(pattern);
  if (w.unsubscribe) w.unsubscribe();
  for (const key of w.keys) {
    const s = series.get(key);
    if (!s) continue;
    for (const canvas of w.charts.querySelectorAll("canvas")) {
      s.canvases.delete(canvas);
      resizeObserver.unobserve(canvas);
    }
    for (const el of w.charts.querySelectorAll(".series-last")) s.readouts.delete(el);
  }
  w.el.remove();
  $("watches-empty").hidden = watches.size > 0;
  saveWatches();
}

function updateWatchCount(w) {
  const count = w.el.querySelector(".watch-count");
  count.textContent = w.count === 0 ? "no messages yet" : `${formatNumber(w.count)} message${w.count === 1 ? "" : "s"}`;
}

function onWatchMessage(w, msg) {
  if (ownerOf(msg.topic) !== w) return;
  w.count += 1;
  updateWatchCount(w);
  for (const [field, value] of numericFields(msg.payload)) {
    const key = `${msg.topic}/${field}`;
    if (!w.keys.has(key)) {
      if (w.keys.size >= MAX_CHARTS_PER_WATCH) continue;
      addChart(w, seriesFor(msg.topic, field));
    }
    ingest(msg.topic, field, value);
  }
}

function addChart(w, s) {
  const el = $("chart-template").content.firstElementChild.cloneNode(true);
  el.querySelector(".series-field").textContent = s.field;
  el.querySelector(".series-topic").textContent = s.topic;
  const canvas = el.querySelector("canvas");
  canvas.dataset.color = PALETTE[w.keys.size % PALETTE.length];
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${s.field} on ${s.topic}`);
  const readout = el.querySelector(".series-last");
  readout.style.color = canvas.dataset.color;
  w.keys.add(s.key);
  w.charts.append(el);
  w.el.querySelector(".watch-waiting").hidden = true;
  bindCanvas(canvas, s, readout);
}

// --------------------------------------------------------------- page shell

function showView(view) {
  const name = view === "dashboard" ? "dashboard" : "chat";
  document.body.dataset.view = name;
  $("view-chat").hidden = name !== "chat";
  $("view-dashboard").hidden = name !== "dashboard";
  $("tab-chat").setAttribute("aria-selected", String(name === "chat"));
  $("tab-dashboard").setAttribute("aria-selected", String(name === "dashboard"));
  $("tab-chat").tabIndex = name === "chat" ? 0 : -1;
  $("tab-dashboard").tabIndex = name === "dashboard" ? 0 : -1;
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  if (name === "dashboard") redrawAll();
  else $("messages-wrap").scrollTop = $("messages-wrap").scrollHeight;
}

function effectiveTheme() {
  const forced = document.documentElement.dataset.theme;
  if (forced) return forced;
  return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

function toggleTheme() {
  const next = effectiveTheme() === "dark" ? "light" : "dark";
  document.documentElement.dataset.theme = next;
  store.set("theme", next);
  redrawAll();
}

function init() {
  const params = new URLSearchParams(location.search);
  token = takeToken();
  client = new StarlingClient(params.get("broker") || undefined, {
    onState: showState,
    onError: onClientError,
    onLagged,
    onReset,
    onJoin,
    onLeave,
    ...(token ? { token } : {}),
  });
  $("endpoint").textContent = client.url;

  // Tabs.
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => showView(tab.dataset.view));
    tab.addEventListener("keydown", (e) => {
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
        const next = tab.dataset.view === "chat" ? "dashboard" : "chat";
        showView(next);
        $(`tab-${next}`).focus();
      }
    });
  }
  window.addEventListener("hashchange", () => {
    // A token pasted into the address bar: connect again with it.
    if (/(^|&)token=/.test(location.hash.slice(1))) {
      takeToken();
      location.reload();
      return;
    }
    showView(location.hash.slice(1));
  });
  $("theme-toggle").addEventListener("click", toggleTheme);
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", redrawAll);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) redrawAll();
  });

  // Chat.
  $("join-form").addEventListener("submit", (e) => {
    e.preventDefault();
    join($("nick").value, $("room").value);
    $("composer").focus();
  });
  for (const chip of document.querySelectorAll(".chip")) {
    chip.addEventListener("click", () => {
      join($("nick").value, chip.dataset.room);
      $("composer").focus();
    });
  }
  $("composer-form").addEventListener("submit", sendChat);
  setInterval(renderPeople, 60 * 1000);

  // Dashboard: the broker's statistics, always (so the charts have history
  // when the view opens), and the saved watches.
  for (const canvas of document.querySelectorAll("canvas[data-series]")) {
    const [topic, field] = canvas.dataset.series.split("/");
    canvas.dataset.placeholder = `waiting for ${STATS_TOPIC}…`;
    bindCanvas(canvas, seriesFor(topic, field), $(`stat-${field}`));
  }
  client.subscribe(STATS_TOPIC, onStats);
  $("watch-form").addEventListener("submit", (e) => {
    e.preventDefault();
    addWatch($("watch-topic").value);
    $("watch-topic").value = "";
  });
  let saved;
  try {
    saved = JSON.parse(store.get("watches", '["metrics.>"]'));
  } catch {
    saved = ["metrics.>"];
  }
  for (const pattern of Array.isArray(saved) ? saved.slice().reverse() : []) addWatch(pattern);
  $("watches-empty").hidden = watches.size > 0;

  join(store.get("nick", "") || randomNick(), store.get("room", "lobby"));
  showView(location.hash.slice(1));
  updateBanner();

  // For tests and the curious: the chart data and the client.
  window.starlingDemo = {
    client,
    /** `{ "topic/field": { points, total, last } }` for every plotted series. */
    get series() {
      const out = {};
      for (const [key, s] of series) out[key] = { points: s.values.length, total: s.total, last: s.last };
      return out;
    },
    get state() {
      return client.state;
    },
    get room() {
      return chat.room;
    },
    join,
    addWatch,
    removeWatch,
    showView,
  };
}

init();
