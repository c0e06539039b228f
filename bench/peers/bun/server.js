// A reference peer for comparison, not part of Starling: Bun's built-in
// uWebSockets pub/sub, speaking just enough of Starling's wire protocol
// (/work/shared/PROTOCOL.md) for starling-bench to drive it unmodified.
//
// What it implements, all over JSON (`starling.v1.json`) at ws://HOST:PORT/ws:
//   - the handshake: the subprotocol is echoed; a client that offers
//     subprotocols but not `starling.v1.json` gets HTTP 400;
//   - `welcome` as the first frame (version, node, codec; no `limits`, so the
//     bench assumes Starling's defaults);
//   - `subscribe` -> ws.subscribe(topic), answered with `ack` when it has an id;
//   - `publish` -> the `message` frame is encoded once and handed to
//     server.publish(topic, frame), uWebSockets' own fan-out in C++, then
//     `ack` when it has an id;
//   - `error` with `bad_frame` or `unknown_type`, close 1003 for binary frames.
//
// What it leaves out: MessagePack, `unsubscribe`, `ping`, topic validation,
// patterns (`*`, `>`), `$` topics, history (`since`, `offset`), limits and
// rate limiting, HTTP endpoints, and `lagged`: a subscriber whose send buffer
// is over Bun's backpressureLimit (16 MiB by default) silently misses
// messages. Payloads are re-encoded with JSON.stringify, so integers beyond
// 2^53 lose precision (the bench's nanosecond timestamps by up to 128 ns).
//
// Run: PORT=7080 bun bench/peers/bun/server.js (see bench/peers/README.md).

const PORT = Number(process.env.PORT ?? 7080);
const SUBPROTOCOL = "starling.v1.json";
const WELCOME = JSON.stringify({ type: "welcome", version: 1, node: "bun", codec: "json" });

const ack = (id) => JSON.stringify({ type: "ack", id });
const error = (id, code, message) => JSON.stringify({ type: "error", id, code, message });

const server = Bun.serve({
  port: PORT,
  hostname: "127.0.0.1",

  fetch(req, server) {
    if (new URL(req.url).pathname !== "/ws") {
      return new Response("not found\n", { status: 404 });
    }
    const offered = req.headers.get("sec-websocket-protocol");
    if (offered && !offered.split(",").some((p) => p.trim() === SUBPROTOCOL)) {
      return new Response(`this peer speaks only ${SUBPROTOCOL}\n`, { status: 400 });
    }
    const headers = offered ? { "Sec-WebSocket-Protocol": SUBPROTOCOL } : undefined;
    if (server.upgrade(req, { headers })) return;
    return new Response("expected a WebSocket upgrade\n", { status: 400 });
  },

  websocket: {
    open(ws) {
      ws.send(WELCOME);
    },

    message(ws, data) {
      if (typeof data !== "string") return ws.close(1003, "binary frame on a JSON connection");
      let frame;
      try {
        frame = JSON.parse(data);
      } catch {
        return ws.send(error(undefined, "bad_frame", "not JSON"));
      }
      const { type, id, topic } = frame;
      if ((type === "subscribe" || type === "publish") && typeof topic !== "string") {
        return ws.send(error(id, "bad_frame", "topic must be a string"));
      }
      switch (type) {
        case "subscribe":
          ws.subscribe(topic);
          break;
        case "publish":
          // Encoded once; uWebSockets sends the same bytes to every subscriber.
          server.publish(topic, JSON.stringify({ type: "message", topic, payload: frame.payload }));
          break;
        default:
          return ws.send(error(id, "unknown_type", `this peer does not handle ${JSON.stringify(type)}`));
      }
      if (id !== undefined) ws.send(ack(id));
    },
  },
});

console.log(`bun ${Bun.version} Starling peer on ws://${server.hostname}:${server.port}/ws (pid ${process.pid})`);
