// web-demo/starling.js against a real broker with auth on (started by
// tests/tests/js_client.rs, which passes its URL and secret): a token
// provider that keeps a connection alive past the first token's expiry, and
// refused tokens that stop the retries unless the provider has a new one.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import WebSocket from "ws";
import { StarlingClient } from "../../web-demo/starling.js";

const URL = process.env.STARLING_WS_URL;
const SECRET = process.env.STARLING_JWT_SECRET;
assert.ok(URL && SECRET, "STARLING_WS_URL and STARLING_JWT_SECRET are set by js_client.rs");

const b64url = (text) => Buffer.from(text).toString("base64url");

/** An HS256 JWT for `sub`, valid for `seconds`, that may use `chat.>`. */
function token(sub, seconds) {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = b64url(
    JSON.stringify({
      sub,
      exp: Math.floor(Date.now() / 1000) + seconds,
      permissions: { publish: ["chat.>"], subscribe: ["chat.>"] },
    }),
  );
  const signature = createHmac("sha256", SECRET).update(`${header}.${claims}`).digest("base64url");
  return `${header}.${claims}.${signature}`;
}

async function waitFor(what, check, ms = 8000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const quiet = () => {};

test("getToken keeps a connection alive past its first token's expiry", async (t) => {
  let calls = 0;
  const states = [];
  const client = new StarlingClient(URL, {
    WebSocket,
    getToken: () => {
      calls += 1;
      return token("ada", 3);
    },
    onState: (state) => states.push(state),
    onError: quiet,
  });
  t.after(() => client.close());
  const got = [];
  const stop = client.subscribe("chat.js", (msg) => got.push(msg));
  await stop.ready;
  // Past the first token's expiry (3 s, no leeway): refreshed, not closed.
  await new Promise((resolve) => setTimeout(resolve, 4500));
  assert.equal(client.state, "connected");
  assert.deepEqual(states, ["connecting", "connected"]);
  assert.ok(calls >= 3, `getToken called ${calls} times`);
  await client.publishWithAck("chat.js", { text: "still here" });
  await waitFor("the message", () => got.length === 1);
  assert.equal(got[0].from, "ada");
  assert.deepEqual(got[0].payload, { text: "still here" });
  client.close();
});

test("a refused token stops the retries", async (t) => {
  const errors = [];
  const client = new StarlingClient(URL, {
    WebSocket,
    token: "not-a-token",
    minDelay: 10,
    onError: (err) => errors.push(err),
  });
  t.after(() => client.close());
  await waitFor("closed", () => client.state === "closed");
  assert.equal(client.attempts, 0, "no reconnect after 1008");
  assert.ok(errors.some((err) => err.code === "terminated" && err.message.includes("1008")));
});

test("after a refusal getToken may give a new token, and only then", async (t) => {
  let calls = 0;
  const recovering = new StarlingClient(URL, {
    WebSocket,
    minDelay: 10,
    getToken: () => (calls++ === 0 ? "not-a-token" : token("bob", 60)),
    onError: quiet,
  });
  t.after(() => recovering.close());
  await waitFor("connected", () => recovering.connected);
  assert.equal(calls, 2);
  recovering.close();

  const stuck = new StarlingClient(URL, {
    WebSocket,
    minDelay: 10,
    getToken: () => "not-a-token",
    onError: quiet,
  });
  t.after(() => stuck.close());
  await waitFor("closed", () => stuck.state === "closed");
});
