//! The subscribers' epoll loop, one turn at a time: every subscribed
//! connection, the buffer they are all read into, and what was counted.
//!
//! Each readable socket is read into one buffer shared by all connections,
//! and the frames are parsed in place ([`crate::wire`]), classified by their
//! bytes ([`crate::scan`]) and counted into statistics the loop owns. The
//! clock is read once per read: a frame's receive time is when its bytes
//! were read. A connection keeps only the start of a frame that has not
//! fully arrived, the message a fragmented message has so far, and any
//! control frame the socket did not take at once. The loop answers pings and
//! the broker's close with masked frames, as a client must.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use mio::{Events, Poll, Token};
use starling_protocol::framing::{Header, opcode};
use starling_protocol::{Codec, Envelope};

use crate::publisher::Progress;
use crate::scan::{self, Scan};
use crate::socket::Socket;
use crate::stats::{SubscriberStats, Window, now_ns};
use crate::wire::{self, Broken, Masks};

/// A read gets at least this much room in the shared buffer.
const MIN_READ: usize = 1024;
/// A connection's carried-over bytes keep at most this much capacity
/// between reads (10,000+ idle connections hold one each).
const CARRY_KEEP: usize = 4 * 1024;
/// The token of the main thread's waker: [`Reader::turn`] skips its events.
pub(crate) const WAKER: Token = Token(usize::MAX);

/// One subscriber connection in the loop.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: Socket,
    /// Our close is sent: the connection waits for the broker's.
    closing: bool,
    /// The start of a frame that has not fully arrived (usually empty).
    carry: Vec<u8>,
    /// A fragmented message so far.
    message: Option<Vec<u8>>,
    /// Bytes of control frames the socket has not taken yet.
    outbox: Vec<u8>,
}

/// How a connection ended.
#[derive(Debug)]
enum End {
    /// It received a close frame (and answered it if it had not sent one).
    Closed,
    /// It broke: end of stream without a close frame, or an error.
    Broken(Broken),
}

impl Conn {
    /// A connection whose first bytes (read while it subscribed) are
    /// `carry`.
    pub(crate) fn with_carry(stream: Socket, carry: Vec<u8>) -> Self {
        Conn {
            stream,
            closing: false,
            carry,
            message: None,
            outbox: Vec::new(),
        }
    }

    /// Handles one complete frame. `Ok(true)` once the connection has
    /// received a close frame.
    fn frame(
        &mut self,
        header: Header,
        payload: &[u8],
        counter: &mut Counter,
        masks: &mut Masks,
        now: u64,
    ) -> Result<bool, Broken> {
        match header.opcode {
            opcode::TEXT | opcode::BINARY => {
                if self.message.is_some() {
                    return Err(wire::expected_fragment(header.opcode).into());
                }
                if !header.fin {
                    self.message = Some(payload.to_vec());
                } else if !self.closing {
                    counter.data(payload, now);
                }
            }
            opcode::CONTINUATION => {
                let Some(message) = self.message.as_mut() else {
                    return Err(wire::unexpected_continue().into());
                };
                message.extend_from_slice(payload);
                if header.fin {
                    let message = self.message.take().expect("checked above");
                    if !self.closing {
                        counter.data(&message, now);
                    }
                }
            }
            // No pong after our close.
            opcode::PING if !self.closing => {
                self.send(&wire::masked_control(opcode::PONG, payload, masks.next()))?;
            }
            opcode::CLOSE => {
                let code = wire::close_code(payload)?;
                if !self.closing {
                    counter
                        .stats
                        .closes
                        .add(code.map_or_else(|| "no code".to_owned(), |c| c.to_string()));
                    // The answer is a courtesy: the connection ends either way.
                    let reply = wire::close_reply(code);
                    let _ = self.send(&wire::masked_control(opcode::CLOSE, &reply, masks.next()));
                }
                return Ok(true);
            }
            // Pongs, and pings after our close: nothing to do. The header
            // parser refused other opcodes.
            _ => {}
        }
        Ok(false)
    }

    /// Writes `bytes`, keeping what the socket does not take for later.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.outbox.is_empty() {
            let written = self.stream.write_some(bytes)?;
            self.outbox.extend_from_slice(&bytes[written..]);
        } else {
            self.outbox.extend_from_slice(bytes);
        }
        Ok(())
    }

    /// Writes what is waiting, as far as the socket takes it.
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()?;
        if !self.outbox.is_empty() {
            let written = self.stream.write_some(&self.outbox)?;
            self.outbox.drain(..written);
        }
        Ok(())
    }
}

/// Classifies frames and counts them, for every connection.
pub(crate) struct Counter {
    codec: Codec,
    /// Deliveries sent within it are measured.
    pub(crate) window: Window,
    pub(crate) stats: SubscriberStats,
    /// When the last delivery arrived, in ns since the epoch.
    pub(crate) last_delivery_ns: u64,
    progress: Arc<Progress>,
    /// Deliveries of the current read, not yet told to `progress`.
    unreported: u64,
}

impl Counter {
    /// Counts one data message received at `now`.
    fn data(&mut self, bytes: &[u8], now: u64) {
        match scan::scan(self.codec, bytes) {
            Scan::Message(sent) => self.delivery(sent, now),
            Scan::Ack(_) => {}
            Scan::Other => self.other(bytes, now),
        }
    }

    fn delivery(&mut self, sent_ns: Option<u64>, now: u64) {
        self.unreported += 1;
        self.stats.delivery(self.window, sent_ns, now);
    }

    /// A frame that is not a plainly laid out `message` or `ack`: decode it.
    fn other(&mut self, bytes: &[u8], now: u64) {
        let decoded = self.codec.decode_bytes(bytes);
        if let Ok(Envelope::Message { .. }) = decoded {
            return self.delivery(scan::timestamp(self.codec, bytes), now);
        }
        match decoded {
            Ok(Envelope::Lagged { missed, .. }) => {
                self.stats.lagged_frames += 1;
                self.stats.missed += missed.unwrap_or(0);
            }
            Ok(Envelope::Error { code, .. }) => self.stats.errors.add(code.to_string()),
            Ok(_) => {}
            Err(_) => self.stats.undecodable += 1,
        }
    }

    /// After each read: tells the publishers about its deliveries.
    fn end_of_read(&mut self, now: u64) {
        if self.unreported > 0 {
            self.progress.delivered(self.unreported);
            self.unreported = 0;
            self.last_delivery_ns = now;
        }
    }
}

/// The epoll loop's state: every connection, the shared read buffer and
/// what was counted.
pub(crate) struct Reader {
    poll: Poll,
    /// By token; `None` once ended.
    conns: Vec<Option<Conn>>,
    /// Connections not ended yet.
    pub(crate) open: usize,
    /// Every read goes here; frames are parsed in place.
    buffer: Vec<u8>,
    pub(crate) counter: Counter,
    masks: Masks,
    /// Connections whose closing handshake completed.
    pub(crate) closed_cleanly: u64,
    /// Connections that broke while closing.
    pub(crate) close_timeouts: u64,
}

impl Reader {
    pub(crate) fn new(
        poll: Poll,
        conns: Vec<Option<Conn>>,
        buffer: usize,
        codec: Codec,
        progress: Arc<Progress>,
    ) -> Self {
        Reader {
            poll,
            open: conns.iter().flatten().count(),
            conns,
            buffer: vec![0; buffer.max(MIN_READ)],
            counter: Counter {
                codec,
                window: Window::NONE,
                stats: SubscriberStats::new(),
                last_delivery_ns: 0,
                progress,
                unreported: 0,
            },
            masks: Masks::new(now_ns()),
            closed_cleanly: 0,
            close_timeouts: 0,
        }
    }

    /// Waits at most `timeout` for socket events and handles them. Returns
    /// how many sockets had events.
    pub(crate) fn turn(&mut self, events: &mut Events, timeout: Duration) -> Result<usize> {
        match self.poll.poll(events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e).context("epoll_wait failed"),
        }
        let mut sockets = 0;
        for event in events.iter() {
            let Token(i) = event.token();
            if event.token() == WAKER {
                continue;
            }
            sockets += 1;
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                self.read(i);
            }
            if event.is_writable()
                && let Some(conn) = self.conns[i].as_mut()
                && let Err(e) = conn.flush()
            {
                self.end(i, End::Broken(e.into()));
            }
        }
        Ok(sockets)
    }

    /// Reads connection `i` until the socket has nothing more (edge-triggered
    /// polling reports a socket again only once more bytes arrive).
    fn read(&mut self, i: usize) {
        let Reader {
            conns,
            buffer,
            counter,
            masks,
            ..
        } = self;
        let Some(conn) = conns[i].as_mut() else {
            return;
        };
        // Frames are parsed from buffer[start..filled].
        let mut start = 0;
        let mut filled = conn.carry.len();
        // The length of the incomplete frame at `start`, when known.
        let mut need: usize = 0;
        if filled > 0 {
            if buffer.len() < filled + MIN_READ {
                buffer.resize(filled + MIN_READ, 0);
            }
            buffer[..filled].copy_from_slice(&conn.carry);
            conn.carry.clear();
            if conn.carry.capacity() > CARRY_KEEP {
                conn.carry = Vec::new();
            }
        }
        let end = loop {
            // Room for a read, and for the whole of a frame that has begun.
            if buffer.len() - filled < MIN_READ || start + need > buffer.len() {
                buffer.copy_within(start..filled, 0);
                filled -= start;
                start = 0;
                let want = (filled + MIN_READ).max(need);
                if buffer.len() < want {
                    buffer.resize(want, 0);
                }
            }
            let room = buffer.len() - filled;
            match conn.stream.read(&mut buffer[filled..]) {
                Ok(0) => break Some(End::Broken(wire::reset_without_close().into())),
                Ok(n) => {
                    filled += n;
                    // The frames of this read were received now.
                    let now = now_ns();
                    let parsed = frames(conn, &buffer[start..filled], counter, masks, now);
                    counter.end_of_read(now);
                    match parsed {
                        Ok(Parsed::Closed) => break Some(End::Closed),
                        Ok(Parsed::Partial { used, frame_len }) => {
                            start += used;
                            need = frame_len;
                        }
                        Err(e) => break Some(End::Broken(e)),
                    }
                    if start == filled {
                        start = 0;
                        filled = 0;
                    }
                    // A short read emptied the socket's receive queue: bytes
                    // that arrive later raise a new edge.
                    if n < room && conn.stream.short_read_drains() {
                        break None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(End::Broken(e.into())),
            }
        };
        match end {
            None => conn.carry.extend_from_slice(&buffer[start..filled]),
            Some(end) => self.end(i, end),
        }
    }

    /// Ends connection `i`, counting how.
    fn end(&mut self, i: usize, end: End) {
        let Some(mut conn) = self.conns[i].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        conn.stream.shutdown();
        self.open -= 1;
        match (conn.closing, end) {
            // The broker's close is counted in `closes`.
            (false, End::Closed) => {}
            (false, End::Broken(e)) => self.counter.stats.disconnects.add(e.failure()),
            (true, End::Closed) => self.closed_cleanly += 1,
            (true, End::Broken(_)) => self.close_timeouts += 1,
        }
    }

    /// Sends close 1000 on every open connection.
    pub(crate) fn close_all(&mut self) {
        let payload = wire::close_payload(1000, "bench done");
        for i in 0..self.conns.len() {
            let Some(conn) = self.conns[i].as_mut() else {
                continue;
            };
            conn.closing = true;
            let frame = wire::masked_control(opcode::CLOSE, &payload, self.masks.next());
            if let Err(e) = conn.send(&frame) {
                self.end(i, End::Broken(e.into()));
            }
        }
    }
}

/// What [`frames`] did with the bytes it got.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// Every complete frame is handled: they took `used` bytes; the rest is
    /// the start of a frame of `frame_len` bytes (0: not known yet).
    Partial { used: usize, frame_len: usize },
    /// A close frame came: the connection ends.
    Closed,
}

/// Handles the complete frames at the start of `bytes`.
fn frames(
    conn: &mut Conn,
    bytes: &[u8],
    counter: &mut Counter,
    masks: &mut Masks,
    now: u64,
) -> Result<Parsed, Broken> {
    let mut at = 0;
    loop {
        let rest = &bytes[at..];
        let Some((header, len)) = wire::parse_header(rest)? else {
            return Ok(Parsed::Partial {
                used: at,
                frame_len: 0,
            });
        };
        if rest.len() < len {
            return Ok(Parsed::Partial {
                used: at,
                frame_len: len,
            });
        }
        at += len;
        if conn.frame(header, &rest[header.header_len..len], counter, masks, now)? {
            return Ok(Parsed::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws;
    use mio::Interest;
    use mio::net::TcpStream;
    use starling_protocol::framing::{self, FIN};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream as StdStream};
    use std::time::Instant;

    /// Both ends of a connection: the client's and the server's (which
    /// reads for at most 5 s).
    fn sockets() -> (StdStream, StdStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = StdStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (client, server)
    }

    /// A reader with one connection, and the server's end of it.
    fn pair(codec: Codec) -> (Reader, StdStream, Arc<Progress>) {
        let (client, server) = sockets();
        client.set_nonblocking(true).unwrap();
        let (reader, progress) = reader_on(Socket::Plain(TcpStream::from_std(client)), codec);
        (reader, server, progress)
    }

    /// A reader with one connection on `socket`.
    fn reader_on(mut socket: Socket, codec: Codec) -> (Reader, Arc<Progress>) {
        let poll = Poll::new().unwrap();
        poll.registry()
            .register(
                &mut socket,
                Token(0),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        let progress = Arc::new(Progress::default());
        progress.set_fanout(1);
        // A small buffer, so that frames span reads and the buffer grows.
        let mut reader = Reader::new(
            poll,
            vec![Some(Conn::with_carry(socket, Vec::new()))],
            0,
            codec,
            progress.clone(),
        );
        reader.counter.window = Window {
            start_ns: 0,
            end_ns: u64::MAX,
        };
        (reader, progress)
    }

    /// Turns the loop until `done` holds (at most 5 s).
    fn turn_until(reader: &mut Reader, mut done: impl FnMut(&Reader) -> bool) {
        let mut events = Events::with_capacity(16);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(reader) {
            assert!(Instant::now() < deadline, "timed out");
            reader.turn(&mut events, Duration::from_millis(10)).unwrap();
        }
    }

    /// An unmasked server frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let head = if fin { FIN | opcode } else { opcode };
        let mut out = Vec::new();
        framing::write_frame_raw(&mut out, head, payload, None);
        out
    }

    /// A JSON delivery stamped `t`, padded to about `pad` bytes.
    fn delivery(t: u64, pad: usize) -> Vec<u8> {
        format!(
            r#"{{"type":"message","topic":"bench.x","payload":{{"t":{t},"p":"{}"}}}}"#,
            "x".repeat(pad)
        )
        .into_bytes()
    }

    /// The next frame the client sent: opcode and unmasked payload.
    fn client_frame(server: &mut impl Read) -> (u8, Vec<u8>) {
        let mut bytes = Vec::new();
        let mut byte = [0u8];
        loop {
            if let Some(header) = Header::parse(&bytes).unwrap()
                && bytes.len() as u64 == header.frame_len()
            {
                header.check(framing::Role::Server).unwrap();
                let mask = header.mask.expect("a client masks its frames");
                let mut payload = bytes[header.header_len..].to_vec();
                framing::apply_mask(&mut payload, mask);
                return (header.opcode, payload);
            }
            server.read_exact(&mut byte).unwrap();
            bytes.push(byte[0]);
        }
    }

    #[test]
    fn counts_deliveries_of_every_length_split_anywhere() {
        let (mut reader, mut server, _) = pair(Codec::Json);
        let sent = now_ns() - 2_000_000;
        let mut stream = Vec::new();
        // 7-, 16- and 64-bit lengths.
        for pad in [10, 300, 70_000, 20] {
            stream.extend(frame(true, opcode::TEXT, &delivery(sent, pad)));
        }
        // Written and read in small pieces: frames and headers span reads.
        let mut events = Events::with_capacity(16);
        for piece in stream.chunks(7) {
            server.write_all(piece).unwrap();
            reader.turn(&mut events, Duration::ZERO).unwrap();
        }
        turn_until(&mut reader, |r| r.counter.stats.received_total == 4);
        let stats = &reader.counter.stats;
        assert_eq!(
            (stats.received, stats.unstamped, stats.undecodable),
            (4, 0, 0)
        );
        let latency = stats.latency.percentiles().unwrap();
        assert!(latency.p50 >= 2_000, "{latency:?}");
        assert!(reader.counter.last_delivery_ns >= sent);
        // Nothing is left over once every frame is in.
        assert!(reader.conns[0].as_ref().unwrap().carry.is_empty());
    }

    #[test]
    fn reassembles_fragments_and_answers_pings_between_them() {
        let (mut reader, mut server, progress) = pair(Codec::Json);
        let message = delivery(now_ns(), 100);
        let (a, rest) = message.split_at(30);
        let (b, c) = rest.split_at(50);
        let mut stream = frame(false, opcode::TEXT, a);
        stream.extend(frame(true, opcode::PING, b"are you there"));
        stream.extend(frame(false, opcode::CONTINUATION, b));
        stream.extend(frame(true, opcode::CONTINUATION, c));
        server.write_all(&stream).unwrap();
        turn_until(&mut reader, |r| r.counter.stats.received_total == 1);
        assert_eq!(
            client_frame(&mut server),
            (opcode::PONG, b"are you there".to_vec())
        );
        assert_eq!(reader.counter.stats.received, 1);
        assert_eq!(progress.delivered_count(), 1);
    }

    #[test]
    fn other_frames_are_decoded_and_counted() {
        let (mut reader, mut server, _) = pair(Codec::Json);
        let frames = [
            r#"{"type":"lagged","topic":"bench.x","missed":7}"#,
            r#"{"type":"error","code":"rate_limited","message":"slow down"}"#,
            r#"{"type":"ack","id":3}"#,
            r#"{"type":"message","payload":{"t":5},"topic":"bench.x"}"#,
            "not json",
        ];
        for f in frames {
            server
                .write_all(&frame(true, opcode::TEXT, f.as_bytes()))
                .unwrap();
        }
        turn_until(&mut reader, |r| r.counter.stats.undecodable == 1);
        let stats = &reader.counter.stats;
        assert_eq!((stats.lagged_frames, stats.missed), (1, 7));
        assert_eq!(stats.errors.to_string(), "rate_limited: 1");
        assert_eq!(stats.received_total, 1);
    }

    #[test]
    fn the_brokers_close_is_counted_and_answered() {
        let (mut reader, mut server, _) = pair(Codec::Json);
        server
            .write_all(&frame(
                true,
                opcode::CLOSE,
                &wire::close_payload(4000, "idle"),
            ))
            .unwrap();
        turn_until(&mut reader, |r| r.open == 0);
        assert_eq!(client_frame(&mut server), (opcode::CLOSE, vec![0x0f, 0xa0]));
        assert_eq!(reader.counter.stats.closes.to_string(), "4000: 1");
        assert!(reader.counter.stats.disconnects.is_empty());
        assert_eq!((reader.closed_cleanly, reader.close_timeouts), (0, 0));
    }

    #[test]
    fn our_close_completes_when_the_broker_answers() {
        let (mut reader, mut server, _) = pair(Codec::Json);
        reader.close_all();
        let (opcode, payload) = client_frame(&mut server);
        assert_eq!(opcode, opcode::CLOSE);
        assert_eq!(payload, wire::close_payload(1000, "bench done"));
        // A late delivery, then the answer.
        server
            .write_all(&frame(true, opcode::TEXT, &delivery(now_ns(), 1)))
            .unwrap();
        server
            .write_all(&frame(true, opcode::CLOSE, &1000u16.to_be_bytes()))
            .unwrap();
        turn_until(&mut reader, |r| r.open == 0);
        assert_eq!((reader.closed_cleanly, reader.close_timeouts), (1, 0));
        assert_eq!(reader.counter.stats.received_total, 0);
        assert!(reader.counter.stats.closes.is_empty());
    }

    #[test]
    fn a_connection_that_just_ends_is_a_disconnect() {
        let (mut reader, server, _) = pair(Codec::Json);
        drop(server);
        turn_until(&mut reader, |r| r.open == 0);
        assert_eq!(
            reader.counter.stats.disconnects.to_string(),
            "protocol: Connection reset without closing handshake: 1"
        );
    }

    #[test]
    fn a_masked_frame_from_the_broker_breaks_the_connection() {
        let (mut reader, mut server, _) = pair(Codec::Json);
        server.write_all(&[0x81, 0x81, 1, 2, 3, 4, 5]).unwrap();
        turn_until(&mut reader, |r| r.open == 0);
        assert_eq!(
            reader.counter.stats.disconnects.to_string(),
            "protocol: server frames must not be masked: 1"
        );
    }

    #[test]
    fn msgpack_deliveries_are_counted() {
        use crate::frame::PublishEncoder;
        use starling_protocol::Topic;
        let (mut reader, mut server, _) = pair(Codec::MsgPack);
        let publish = PublishEncoder::new(Codec::MsgPack, 64).encode("bench.x", None, 42);
        let Ok(Envelope::Publish { payload, .. }) =
            Codec::MsgPack.decode_client(ws::data(&publish).unwrap())
        else {
            panic!("a publish");
        };
        let message = Codec::MsgPack
            .encode(&Envelope::Message {
                epoch: None,
                topic: Topic::new("bench.x").unwrap(),
                payload,
                offset: None,
                sub: None,
                from: None,
            })
            .unwrap();
        server
            .write_all(&frame(true, opcode::BINARY, message.as_bytes()))
            .unwrap();
        turn_until(&mut reader, |r| r.counter.stats.received_total == 1);
        assert_eq!(reader.counter.stats.received, 1);
    }

    /// The server's end of a TLS connection: blocking, one record per write.
    type TlsServer = rustls::StreamOwned<rustls::ServerConnection, StdStream>;

    /// A reader with one TLS connection (handshake done, as tokio-rustls
    /// hands it over), and the server's end of it.
    fn tls_pair(codec: Codec) -> (Reader, TlsServer) {
        use crate::tls::TlsSocket;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use rustls::{ClientConnection, ServerConfig, ServerConnection};

        let certs = starling_tests::TestCerts::new();
        let chain = CertificateDer::pem_file_iter(&certs.cert_path)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&certs.key_path).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let (mut client, mut server) = sockets();
        let handshake = std::thread::spawn(move || {
            let mut tls = ServerConnection::new(Arc::new(server_config)).unwrap();
            while tls.is_handshaking() {
                tls.complete_io(&mut server).unwrap();
            }
            rustls::StreamOwned::new(tls, server)
        });
        let name = "localhost".try_into().unwrap();
        let mut tls = ClientConnection::new(certs.client_config(), name).unwrap();
        while tls.is_handshaking() {
            tls.complete_io(&mut client).unwrap();
        }
        let server = handshake.join().unwrap();
        client.set_nonblocking(true).unwrap();
        let socket = TlsSocket::new(TcpStream::from_std(client), tls);
        let (reader, _) = reader_on(Socket::Tls(Box::new(socket)), codec);
        (reader, server)
    }

    #[test]
    fn over_tls_deliveries_split_across_records_are_counted() {
        let (mut reader, mut server) = tls_pair(Codec::Json);
        let sent = now_ns() - 2_000_000;
        let mut stream = Vec::new();
        for pad in [10, 300, 70_000, 20] {
            stream.extend(frame(true, opcode::TEXT, &delivery(sent, pad)));
        }
        // Records of 7 bytes split headers and frames anywhere; records of
        // 16 KB hold more than the reader's 1 KiB reads.
        let (small, large) = stream.split_at(500);
        let mut events = Events::with_capacity(16);
        for piece in small.chunks(7) {
            server.write_all(piece).unwrap();
            reader.turn(&mut events, Duration::ZERO).unwrap();
        }
        for piece in large.chunks(16 * 1024) {
            server.write_all(piece).unwrap();
        }
        turn_until(&mut reader, |r| r.counter.stats.received_total == 4);
        let stats = &reader.counter.stats;
        assert_eq!((stats.received, stats.undecodable), (4, 0));
        assert!(stats.disconnects.is_empty());
        assert!(reader.conns[0].as_ref().unwrap().carry.is_empty());
    }

    #[test]
    fn over_tls_pings_are_answered_and_our_close_completes() {
        let (mut reader, mut server) = tls_pair(Codec::Json);
        let mut stream = frame(true, opcode::PING, b"still there?");
        stream.extend(frame(true, opcode::TEXT, &delivery(now_ns(), 10)));
        server.write_all(&stream).unwrap();
        // The pong is written as soon as the ping is read, before the delivery.
        turn_until(&mut reader, |r| r.counter.stats.received_total == 1);
        let pong = client_frame(&mut server);
        assert_eq!(pong, (opcode::PONG, b"still there?".to_vec()));
        reader.close_all();
        let (opcode, payload) = client_frame(&mut server);
        assert_eq!(opcode, opcode::CLOSE);
        assert_eq!(payload, wire::close_payload(1000, "bench done"));
        server
            .write_all(&frame(true, opcode::CLOSE, &1000u16.to_be_bytes()))
            .unwrap();
        turn_until(&mut reader, |r| r.open == 0);
        assert_eq!((reader.closed_cleanly, reader.close_timeouts), (1, 0));
        // The session ended with close_notify: the server reads its end.
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).unwrap(), 0);
    }

    #[test]
    fn over_tls_a_delivery_right_before_close_notify_is_counted() {
        let (mut reader, mut server) = tls_pair(Codec::Json);
        server
            .write_all(&frame(true, opcode::TEXT, &delivery(now_ns(), 10)))
            .unwrap();
        server.conn.send_close_notify();
        server.flush().unwrap();
        server.sock.shutdown(std::net::Shutdown::Both).unwrap();
        // Both arrive in one read; the end is seen without another edge.
        turn_until(&mut reader, |r| r.open == 0);
        assert_eq!(reader.counter.stats.received, 1);
        assert_eq!(
            reader.counter.stats.disconnects.to_string(),
            "protocol: Connection reset without closing handshake: 1"
        );
    }
}
