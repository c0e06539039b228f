// web-demo/starling.js against a real broker that keeps presence on `room.`
// topics with a short grace period (started by tests/tests/js_client.rs):
// a name and info in `subscribe`, `onJoin` and `onLeave`, and `presence()`.

import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { StarlingClient } from "../../web-demo/starling.js";

const URL = process.env.STARLING_WS_URL;
assert.ok(URL, "STARLING_WS_URL is set by js_client.rs");

async function waitFor(what, check, ms = 8000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A client that records the presence events it gets. */
function client() {
  const events = [];
  const c = new StarlingClient(URL, {
    WebSocket,
    onJoin: (topic, member) => events.push(["join", topic, member]),
    onLeave: (topic, member) => events.push(["leave", topic, member]),
  });
  return { c, events };
}

test("members join with their info, are listed, and leave", async () => {
  const ada = client();
  const bob = client();
  try {
    await ada.c.subscribe("room.js", () => {}, { name: "ada", info: { status: "online" } }).ready;
    await waitFor("ada's own join", () => ada.events.length === 1);
    assert.deepEqual(ada.events[0], ["join", "room.js", { name: "ada", info: { status: "online" } }]);

    await bob.c.subscribe("room.js", () => {}, { name: "bob" }).ready;
    await waitFor("bob's join", () => ada.events.length === 2);
    assert.deepEqual(ada.events[1], ["join", "room.js", { name: "bob" }]);

    const room = await ada.c.presence("room.js");
    assert.equal(room.count, 2);
    const names = room.members.map((m) => m.name).sort();
    assert.deepEqual(names, ["ada", "bob"]);
    const adaMember = room.members.find((m) => m.name === "ada");
    assert.deepEqual(adaMember, { name: "ada", sessions: 1, info: { status: "online" } });

    bob.c.close();
    await waitFor("bob's leave", () => ada.events.length === 3);
    assert.deepEqual(ada.events[2], ["leave", "room.js", { name: "bob" }]);

    await assert.rejects(ada.c.presence("other.js"), (err) => err.code === "invalid_topic");
  } finally {
    ada.c.close();
    bob.c.close();
  }
});
