// A small client for the Starling broker, JSON codec (starling.v1.json).
export class StarlingClient {
  constructor(url, { onState = () => {} } = {}) {
    this.url = url;
    this.onState = onState;
    this.handlers = new Map();
    this.connect();
  }

  connect() {
    this.ws = new WebSocket(this.url, "starling.v1.json");
    this.onState("connecting");
    this.ws.onopen = () => {
      this.onState("connected");
      for (const topic of this.handlers.keys()) this.send({ type: "subscribe", topic });
    };
    this.ws.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === "message") {
        const handler = this.handlers.get(frame.sub ?? frame.topic);
        if (handler) handler(frame);
      }
    };
    this.ws.onclose = () => {
      this.onState("reconnecting");
      setTimeout(() => this.connect(), 1000);
    };
  }

  send(frame) {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  subscribe(topic, handler) {
    this.handlers.set(topic, handler);
    this.send({ type: "subscribe", topic });
  }

  publish(topic, payload) {
    this.send({ type: "publish", topic, payload });
  }
}
