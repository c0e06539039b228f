// web-demo/starling.js against a real broker that keeps history for `hist.`
// topics (started by tests/tests/js_client.rs, which passes its URL and the
// URL of a control endpoint that restarts it): a reconnect resumes with
// `since` and `epoch`, a subscription to an empty topic misses nothing
// published while it was offline, and a broker restart (a new epoch) is
// reported once with `onReset` while everything retained is delivered.

import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { StarlingClient } from "../../web-demo/starling.js";

const URL = process.env.STARLING_WS_URL;
const CONTROL = process.env.STARLING_CONTROL_URL;
assert.ok(URL && CONTROL, "STARLING_WS_URL and STARLING_CONTROL_URL are set by js_client.rs");

/** Where a client goes while it is "offline": nothing listens on port 1. */
const NOWHERE = "ws://127.0.0.1:1/ws";

async function waitFor(what, check, ms = 8000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * A WebSocket implementation for one client that records every frame it
 * sends and can take the client offline: `drop()` cuts the connection and
 * every attempt fails until `online()`.
 */
function network() {
  const net = { sent: [], offline: false, socket: null };
  net.WebSocket = class extends WebSocket {
    constructor(url, protocols) {
      super(net.offline ? NOWHERE : url, protocols);
      net.socket = this;
    }
    send(data) {
      net.sent.push(JSON.parse(data));
      super.send(data);
    }
  };
  net.drop = () => {
    net.offline = true;
    net.socket.terminate();
  };
  net.online = () => {
    net.offline = false;
  };
  /** The `subscribe` frames sent for `topic`, oldest first. */
  net.subscribes = (topic) => net.sent.filter((f) => f.type === "subscribe" && f.topic === topic);
  return net;
}

/** A client on its own network, with its `onReset` and `onLagged` calls. */
function client(t) {
  const net = network();
  const calls = { resets: [], lagged: [] };
  const c = new StarlingClient(URL, {
    WebSocket: net.WebSocket,
    minDelay: 10,
    maxDelay: 50,
    onReset: (topic) => calls.resets.push(topic),
    onLagged: (topic, missed) => calls.lagged.push([topic, missed]),
  });
  t.after(() => c.close());
  return { client: c, net, calls };
}

/** A plain client that publishes. */
function publisher(t) {
  const c = new StarlingClient(URL, { WebSocket, minDelay: 10, maxDelay: 50 });
  t.after(() => c.close());
  return c;
}

async function publish(c, topic, texts) {
  for (const text of texts) await c.publishWithAck(topic, { text });
}

test("a reconnect resumes with since and epoch from the last message", async (t) => {
  const topic = "hist.resume";
  const { client: c, net, calls } = client(t);
  const pub = publisher(t);
  const got = [];
  await c.subscribe(topic, (msg) => got.push(msg)).ready;
  await publish(pub, topic, ["a", "b", "c"]);
  await waitFor("three messages", () => got.length === 3);
  assert.deepEqual(got.map((m) => m.offset), [1, 2, 3]);
  const epoch = got[0].epoch;
  assert.equal(typeof epoch, "string");
  assert.ok(got.every((m) => m.epoch === epoch));

  net.drop();
  await waitFor("offline", () => c.state === "reconnecting");
  await publish(pub, topic, ["d", "e"]);
  net.online();
  await waitFor("the two published while offline", () => got.length === 5);
  assert.deepEqual(
    got.map((m) => [m.offset, m.payload.text]),
    [
      [1, "a"],
      [2, "b"],
      [3, "c"],
      [4, "d"],
      [5, "e"],
    ],
  );
  const [first, again] = net.subscribes(topic);
  assert.equal(first.since, undefined, "the first subscribe starts from now");
  assert.equal(again.since, 3);
  assert.equal(again.epoch, epoch);
  assert.deepEqual(calls, { resets: [], lagged: [] });
});

test("a subscription to an empty topic misses nothing published while it was offline", async (t) => {
  const topic = "hist.empty";
  const { client: c, net, calls } = client(t);
  const pub = publisher(t);
  const got = [];
  await c.subscribe(topic, (msg) => got.push(msg)).ready;
  net.drop();
  await waitFor("offline", () => c.state === "reconnecting");
  await publish(pub, topic, ["while", "away"]);
  net.online();
  await waitFor("both messages", () => got.length === 2);
  assert.deepEqual(
    got.map((m) => [m.offset, m.payload.text]),
    [
      [1, "while"],
      [2, "away"],
    ],
  );
  // Resumed from the ack: offset 0 in the epoch the ack named, which the
  // first message carries.
  const again = net.subscribes(topic)[1];
  assert.equal(again.since, 0);
  assert.equal(again.epoch, got[0].epoch);
  assert.deepEqual(calls, { resets: [], lagged: [] });
});

test("since and epoch given to subscribe: a foreign epoch is reset, since alone is checked on the offset", async (t) => {
  const topic = "hist.given";
  const pub = publisher(t);
  await publish(pub, topic, ["one", "two", "three"]);

  const foreign = client(t);
  const got = [];
  await foreign.client.subscribe(topic, (msg) => got.push(msg), { since: 2, epoch: "made-up" }).ready;
  await waitFor("everything retained", () => got.length === 3);
  assert.deepEqual(got.map((m) => m.offset), [1, 2, 3]);
  const sent = foreign.net.subscribes(topic)[0];
  assert.deepEqual([sent.since, sent.epoch], [2, "made-up"]);
  assert.deepEqual(foreign.calls, { resets: [topic], lagged: [] });

  // `since` alone, at the latest offset: nothing to replay, now or after a
  // reconnect (the position takes the ack's epoch and keeps its offset).
  const alone = client(t);
  const later = [];
  await alone.client.subscribe(topic, (msg) => later.push(msg), { since: 3 }).ready;
  alone.net.drop();
  await waitFor("offline", () => alone.client.state === "reconnecting");
  alone.net.online();
  await waitFor("back", () => alone.client.connected && alone.net.subscribes(topic).length === 2);
  const again = alone.net.subscribes(topic)[1];
  assert.equal(again.since, 3);
  assert.equal(again.epoch, got[0].epoch);
  await publish(pub, topic, ["four"]);
  await waitFor("the next message", () => later.length === 1);
  assert.equal(later[0].offset, 4);
  assert.deepEqual(alone.calls, { resets: [], lagged: [] });
});

test("a broker restart is reported once with onReset and what was published since is delivered", async (t) => {
  const topic = "hist.restart";
  const { client: c, net, calls } = client(t);
  const pub = publisher(t);
  const got = [];
  await c.subscribe(topic, (msg) => got.push(msg)).ready;
  await publish(pub, topic, ["old 1", "old 2"]);
  await waitFor("two messages", () => got.length === 2);
  const oldEpoch = got[1].epoch;

  // The broker restarts (history in memory: a new epoch) while this client
  // is away, and gets more messages than the client had seen, so that only
  // the epoch tells the client's offset 2 from the new broker's.
  net.drop();
  const answer = await fetch(`${CONTROL}/restart`, { method: "POST" });
  assert.equal(answer.status, 200);
  await waitFor("the publisher on the new broker", () => pub.welcome?.node === "test-node-2");
  await publish(pub, topic, ["new 1", "new 2", "new 3"]);
  net.online();

  await waitFor("the new broker's messages", () => got.length === 5);
  const after = got.slice(2);
  assert.deepEqual(
    after.map((m) => [m.offset, m.payload.text]),
    [
      [1, "new 1"],
      [2, "new 2"],
      [3, "new 3"],
    ],
  );
  const newEpoch = after[0].epoch;
  assert.notEqual(newEpoch, oldEpoch);
  const again = net.subscribes(topic)[1];
  assert.equal(again.since, 2);
  assert.equal(again.epoch, oldEpoch);
  assert.deepEqual(calls, { resets: [topic], lagged: [] });

  // Back in step: the next reconnect resumes in the new epoch, without reset.
  net.drop();
  await waitFor("offline", () => c.state === "reconnecting");
  await publish(pub, topic, ["new 4"]);
  net.online();
  await waitFor("the message published while offline", () => got.length === 6);
  assert.deepEqual([got[5].offset, got[5].epoch], [4, newEpoch]);
  const last = net.subscribes(topic)[2];
  assert.deepEqual([last.since, last.epoch], [3, newEpoch]);
  assert.deepEqual(calls, { resets: [topic], lagged: [] });
});
