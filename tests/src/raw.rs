//! A WebSocket client written by hand on a plain TCP stream ([`RawWs`]),
//! and what it reads: frames ([`RawFrame`]) and HTTP answers
//! ([`RawHttpAnswer`]).

use std::net::SocketAddr;

use starling_protocol::framing::{self, FIN, Header, opcode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{WAIT, within};

/// One frame read by [`RawWs`]: its first header byte and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// FIN, RSV1-3 and the opcode, as sent.
    pub head: u8,
    /// The unmasked payload.
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The opcode (low four bits of the first byte).
    pub fn opcode(&self) -> u8 {
        self.head & 0x0f
    }
}

/// A WebSocket client written by hand on a plain TCP stream, for sending what
/// a correct WebSocket library refuses to send (invalid UTF-8, unmasked
/// frames, reserved bits).
pub struct RawWs {
    tcp: TcpStream,
    buffer: Vec<u8>,
}

/// The head of an HTTP answer read by hand: status line, headers and body.
#[derive(Debug, Clone)]
pub struct RawHttpAnswer {
    /// The status code.
    pub status: u16,
    /// Header lines, lowercased names, as `(name, value)`.
    pub headers: Vec<(String, String)>,
    /// The body (read up to `Content-Length`; empty for 101).
    pub body: String,
}

impl RawHttpAnswer {
    /// The value of header `name` (case-insensitive), when present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl RawWs {
    /// The headers of a correct WebSocket upgrade request for `/ws` (with
    /// the key of RFC 6455's example), without the request line.
    pub const UPGRADE_HEADERS: [(&'static str, &'static str); 4] = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];

    /// Sends a WebSocket upgrade request for `/ws` by hand, offering
    /// `subprotocol` when given, and reads the answer. On 101 the returned
    /// client is ready for frames (the `welcome` frame is not read yet).
    pub async fn handshake(addr: SocketAddr, subprotocol: Option<&str>) -> (RawHttpAnswer, RawWs) {
        let mut headers = RawWs::UPGRADE_HEADERS.to_vec();
        if let Some(protocol) = subprotocol {
            headers.push(("Sec-WebSocket-Protocol", protocol));
        }
        RawWs::request(addr, "GET", "/ws", &headers).await
    }

    /// Sends `method path` with exactly `headers` (plus `Host`) on a new TCP
    /// connection and reads the answer's head, and its body unless it is 101.
    pub async fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (RawHttpAnswer, RawWs) {
        let mut raw = RawWs::open(addr).await;
        raw.write_raw(RawWs::request_head(addr, method, path, headers).as_bytes())
            .await;
        let answer = raw.read_answer().await;
        (answer, raw)
    }

    /// A TCP connection to `addr` with nothing sent yet.
    pub async fn open(addr: SocketAddr) -> RawWs {
        let tcp = within("tcp connect", TcpStream::connect(addr))
            .await
            .expect("tcp connect");
        RawWs {
            tcp,
            buffer: Vec::new(),
        }
    }

    /// The head of an HTTP/1.1 request: `method path`, `Host`, then exactly
    /// `headers`.
    pub fn request_head(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> String {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request
    }

    /// Writes `bytes` as they are.
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        within("write", self.tcp.write_all(bytes))
            .await
            .expect("write");
    }

    /// Connects with a hand-made handshake (no subprotocol: JSON), expects
    /// 101 and reads the `welcome` frame.
    pub async fn connect(addr: SocketAddr) -> RawWs {
        let mut raw = RawWs::open(addr).await;
        raw.write_raw(RawWs::request_head(addr, "GET", "/ws", &RawWs::UPGRADE_HEADERS).as_bytes())
            .await;
        raw.expect_upgraded().await;
        raw
    }

    /// Reads the answer to an upgrade request with [`RawWs::UPGRADE_HEADERS`]:
    /// a 101 with the right accept key, then the `welcome` frame.
    pub async fn expect_upgraded(&mut self) {
        let answer = self.read_answer().await;
        assert_eq!(answer.status, 101, "{answer:?}");
        assert_eq!(
            answer.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{answer:?}"
        );
        let welcome = self.read_frame().await.expect("welcome frame");
        assert_eq!(welcome.opcode(), 1, "{welcome:?}");
        let text = String::from_utf8(welcome.payload).expect("utf-8 welcome");
        assert!(text.contains(r#""type":"welcome""#), "{text}");
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = within("tcp read", self.tcp.read(&mut chunk))
            .await
            .unwrap_or(0);
        self.buffer.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads an HTTP answer's head, and its body unless it is 101.
    pub async fn read_answer(&mut self) -> RawHttpAnswer {
        let end = loop {
            if let Some(i) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(
                self.fill().await,
                "connection closed before the HTTP answer"
            );
        };
        let head = String::from_utf8(self.buffer[..end].to_vec()).expect("ASCII head");
        self.buffer.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut answer = RawHttpAnswer {
            status,
            headers,
            body: String::new(),
        };
        if status != 101 {
            let length: usize = answer
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while self.buffer.len() < length {
                assert!(self.fill().await, "connection closed inside the body");
            }
            let body: Vec<u8> = self.buffer.drain(..length).collect();
            answer.body = String::from_utf8(body).expect("UTF-8 body");
        }
        answer
    }

    /// Writes one frame: `head` is the first byte (FIN, RSV1-3, opcode),
    /// masked with a fixed key when `masked`.
    pub async fn send_frame(&mut self, head: u8, payload: &[u8], masked: bool) {
        let frame = RawWs::frame(head, payload, masked);
        self.write_raw(&frame).await;
    }

    /// The masking key of the frames [`RawWs`] sends masked.
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// The bytes of one frame, as [`RawWs::send_frame`] writes it: `head`
    /// exactly as given, the shortest length form, and the payload masked
    /// with a fixed key when `masked`.
    pub fn frame(head: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut frame = Vec::new();
        framing::write_frame_raw(&mut frame, head, payload, masked.then_some(RawWs::MASK));
        frame
    }

    /// Reads the next frame from the broker; `None` when the connection ended.
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buffer) {
                self.buffer.drain(..used);
                return Some(frame);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads until the broker's close frame; returns its code, its reason and
    /// the frames before it. Fails when the connection ends without one.
    pub async fn recv_close(&mut self) -> (u16, String, Vec<RawFrame>) {
        let mut before = Vec::new();
        loop {
            let frame = self
                .read_frame()
                .await
                .expect("a close frame before the connection ends");
            if frame.opcode() == 8 {
                assert!(frame.payload.len() >= 2, "close frame without a code");
                let code = u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
                let reason = String::from_utf8_lossy(&frame.payload[2..]).into_owned();
                // Answer it, as a well-behaved client does (errors do not matter here).
                let _ = tokio::time::timeout(WAIT, async {
                    let mut reply = Vec::new();
                    framing::write_masked(
                        &mut reply,
                        FIN | opcode::CLOSE,
                        &frame.payload[..2],
                        [0; 4],
                    );
                    self.tcp.write_all(&reply).await
                })
                .await;
                return (code, reason, before);
            }
            before.push(frame);
        }
    }
}

/// Parses one unmasked or masked frame from the front of `buf`, whatever
/// its first byte holds; `None` while it is incomplete. Fails the test on a
/// header that cannot be read (a 64-bit length with its top bit set).
fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    let header = Header::parse(buf).unwrap_or_else(|v| panic!("unreadable frame header: {v}"))?;
    let end = usize::try_from(header.frame_len()).ok()?;
    let mut payload = buf.get(header.header_len..end)?.to_vec();
    if let Some(mask) = header.mask {
        framing::apply_mask(&mut payload, mask);
    }
    Some((
        RawFrame {
            head: header.head(),
            payload,
        },
        end,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_frames_are_written_byte_for_byte() {
        // RFC 6455, 5.7: "Hello", unmasked and masked with the fixed key.
        assert_eq!(
            RawWs::frame(0x81, b"Hello", false),
            [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
        assert_eq!(
            RawWs::frame(0x81, b"Hello", true),
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
        // The first byte as given, even when it breaks the rules.
        assert_eq!(
            RawWs::frame(0xc3, b"", true),
            [0xc3, 0x80, 0x37, 0xfa, 0x21, 0x3d]
        );
        // 16- and 64-bit lengths.
        let frame = RawWs::frame(0x02, &[0; 65_535], true);
        assert_eq!(
            &frame[..8],
            [0x02, 0xfe, 0xff, 0xff, 0x37, 0xfa, 0x21, 0x3d]
        );
        assert_eq!(frame.len(), 8 + 65_535);
        let frame = RawWs::frame(0x82, &[0; 65_536], false);
        assert_eq!(&frame[..10], [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(frame.len(), 10 + 65_536);
    }

    #[test]
    fn frames_parse_back_whole_or_not_at_all() {
        for masked in [false, true] {
            let mut wire = RawWs::frame(0x41, b"abc", masked);
            wire.extend(RawWs::frame(0x88, &[0x03, 0xe8], masked));
            let (first, used) = parse_frame(&wire).unwrap();
            assert_eq!(
                first,
                RawFrame {
                    head: 0x41,
                    payload: b"abc".to_vec()
                }
            );
            let (close, rest) = parse_frame(&wire[used..]).unwrap();
            assert_eq!((close.opcode(), close.payload), (8, vec![0x03, 0xe8]));
            assert_eq!(used + rest, wire.len());
            for cut in 0..used {
                assert_eq!(parse_frame(&wire[..cut]), None, "cut at {cut}");
            }
        }
    }
}
