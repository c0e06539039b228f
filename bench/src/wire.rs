//! The bench's glue to the shared WebSocket framing
//! ([`starling_protocol::framing`]) for the subscribers' read loop: server
//! frame headers checked as a client checks them, the masked control frames
//! a client sends (pong, close), masking keys, and the reasons a broken
//! connection is reported with.

use std::io;

use starling_protocol::CloseCode;
use starling_protocol::framing::{self, FIN, Header, MAX_CONTROL_PAYLOAD, Role, Violation};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::Data;

use crate::ws;

/// Why the read loop gave up on a connection.
#[derive(Debug)]
pub(crate) enum Broken {
    /// A socket error, or a frame sequence tungstenite refuses as well
    /// (reported with tungstenite's words).
    Ws(WsError),
    /// A frame header that breaks RFC 6455 for a client.
    Frame(Violation),
}

impl Broken {
    /// The short, groupable reason the report tallies.
    pub(crate) fn failure(&self) -> String {
        match self {
            Broken::Ws(e) => ws::failure(e),
            Broken::Frame(v) => format!("protocol: {}", v.reason),
        }
    }
}

impl From<WsError> for Broken {
    fn from(e: WsError) -> Self {
        Broken::Ws(e)
    }
}

impl From<io::Error> for Broken {
    fn from(e: io::Error) -> Self {
        Broken::Ws(WsError::Io(e))
    }
}

impl From<Violation> for Broken {
    fn from(v: Violation) -> Self {
        Broken::Frame(v)
    }
}

/// Parses and checks the header of the server frame at the start of
/// `bytes`, with the length of the whole frame: `Ok(None)` while `bytes`
/// does not hold all of the header. Refuses what a client must refuse
/// ([`Header::check`]): reserved bits and opcodes, a mask, fragmented or
/// oversized control frames.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<Option<(Header, usize)>, Violation> {
    let Some(header) = Header::parse(bytes)? else {
        return Ok(None);
    };
    header.check(Role::Client)?;
    let len = usize::try_from(header.frame_len()).map_err(|_| Violation {
        code: CloseCode::TooBig,
        reason: format!("a frame of {} bytes is not addressable", header.frame_len()),
    })?;
    Ok(Some((header, len)))
}

/// The error for a data frame that starts a message while another is still
/// being reassembled.
pub(crate) fn expected_fragment(opcode: u8) -> WsError {
    let data = if opcode == framing::opcode::TEXT {
        Data::Text
    } else {
        Data::Binary
    };
    ProtocolError::ExpectedFragment(data).into()
}

/// The error for a continuation frame with no message to continue.
pub(crate) fn unexpected_continue() -> WsError {
    ProtocolError::UnexpectedContinueFrame.into()
}

/// The error for a connection that ended without a close frame.
pub(crate) fn reset_without_close() -> WsError {
    ProtocolError::ResetWithoutClosingHandshake.into()
}

/// The status code of a close frame's payload, `None` when it has none.
pub(crate) fn close_code(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match *payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::InvalidCloseSequence.into()),
        [a, b, ..] => Ok(Some(u16::from_be_bytes([a, b]))),
    }
}

/// The payload of the close frame that answers a close with `code`: the
/// code echoed, or 1002 for a code that must not be sent (as tungstenite
/// answers), nothing for a close without a code.
pub(crate) fn close_reply(code: Option<u16>) -> Vec<u8> {
    match code {
        None => Vec::new(),
        Some(code) if framing::close_code_allowed(code) => code.to_be_bytes().to_vec(),
        Some(_) => CloseCode::Protocol.code().to_be_bytes().to_vec(),
    }
}

/// The payload of a close frame with `code` and `reason`.
pub(crate) fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// A final control frame from the client, masked with `mask` (a client
/// masks every frame it sends). `payload` is cut to the 125 bytes a control
/// frame may carry.
pub(crate) fn masked_control(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    let mut frame = Vec::with_capacity(6 + payload.len());
    framing::write_masked(&mut frame, FIN | opcode, payload, mask);
    frame
}

/// Masking keys: xorshift64, seeded by the caller. The keys only need to
/// vary (the broker unmasks whatever it gets); nothing here is secret.
#[derive(Debug, Clone)]
pub(crate) struct Masks(u64);

impl Masks {
    pub(crate) fn new(seed: u64) -> Self {
        Masks(seed | 1)
    }

    pub(crate) fn next(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x as u32).to_le_bytes()
    }
}

/// The shared framing checked against tungstenite, which the bench uses
/// for its handshakes: both must read and write the same bytes.
#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::framing::{Kind, opcode};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{
        CloseCode as WsCloseCode, Control, OpCode,
    };
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

    fn header(bytes: &[u8]) -> (Header, usize) {
        parse_header(bytes).unwrap().unwrap()
    }

    /// A server frame as tungstenite writes it.
    fn tungstenite_frame(payload: &[u8], opcode: OpCode, fin: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut frame = Frame::message(payload.to_vec(), opcode, fin);
        frame.header_mut().mask = None;
        frame.format(&mut out).unwrap();
        out
    }

    /// Every frame in `bytes`, as tungstenite reads them.
    fn tungstenite_frames(bytes: &[u8]) -> Vec<Frame> {
        let mut cursor = std::io::Cursor::new(bytes);
        let mut frames = Vec::new();
        while let Some((header, len)) = FrameHeader::parse(&mut cursor).unwrap() {
            let at = cursor.position() as usize;
            let payload = bytes[at..at + len as usize].to_vec();
            cursor.set_position((at + len as usize) as u64);
            frames.push(Frame::from_payload(header, payload.into()));
        }
        assert_eq!(cursor.position() as usize, bytes.len());
        frames
    }

    #[test]
    fn lengths_of_7_16_and_64_bits() {
        for (len, header_len) in [
            (0, 2),
            (125, 2),
            (126, 4),
            (65_535, 4),
            (65_536, 10),
            (1 << 20, 10),
        ] {
            let bytes = tungstenite_frame(&vec![b'x'; len], OpCode::Data(Data::Text), true);
            let (h, frame_len) = header(&bytes);
            assert_eq!(
                h,
                Header {
                    fin: true,
                    rsv: 0,
                    opcode: opcode::TEXT,
                    mask: None,
                    header_len,
                    payload_len: len as u64,
                }
            );
            assert_eq!(frame_len, bytes.len());
            // Every shorter prefix of the header asks for more bytes.
            for cut in 0..header_len {
                assert_eq!(
                    parse_header(&bytes[..cut]).unwrap(),
                    None,
                    "{len} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn agrees_with_tungstenite_on_opcodes_and_fin() {
        for (opcode, code) in [
            (OpCode::Data(Data::Continue), opcode::CONTINUATION),
            (OpCode::Data(Data::Text), opcode::TEXT),
            (OpCode::Data(Data::Binary), opcode::BINARY),
        ] {
            for fin in [true, false] {
                let bytes = tungstenite_frame(b"abc", opcode, fin);
                let (h, _) = header(&bytes);
                assert_eq!((h.opcode, h.fin, h.payload_len), (code, fin, 3));
                let mut cursor = std::io::Cursor::new(&bytes);
                let (theirs, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
                assert_eq!(
                    (u8::from(theirs.opcode), theirs.is_final, len),
                    (code, fin, 3)
                );
                assert_eq!(cursor.position() as usize, h.header_len);
            }
        }
        let mut ping = Vec::new();
        let mut frame = Frame::ping(b"hi".to_vec());
        frame.header_mut().mask = None;
        frame.format(&mut ping).unwrap();
        assert_eq!(header(&ping).0.opcode, opcode::PING);
    }

    #[test]
    fn refuses_what_a_server_must_not_send() {
        let refused = |bytes: &[u8]| Broken::from(parse_header(bytes).unwrap_err()).failure();
        assert_eq!(
            refused(&[0x81 | 0x40, 0]),
            "protocol: reserved bits are set"
        );
        assert_eq!(
            refused(&[0x81, 0x80, 1, 2, 3, 4]),
            "protocol: server frames must not be masked"
        );
        assert_eq!(
            refused(&[0x09, 0]),
            "protocol: control frames must not be fragmented"
        );
        assert_eq!(
            refused(&[0x89, 126, 0, 126]),
            "protocol: control frames carry at most 125 bytes"
        );
        assert_eq!(refused(&[0x83, 0]), "protocol: reserved opcode 3");
        assert_eq!(refused(&[0x8b, 0]), "protocol: reserved opcode 11");
        assert_eq!(
            refused(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            "protocol: frame length has its most significant bit set"
        );
    }

    #[test]
    fn close_codes_and_replies() {
        assert_eq!(close_code(&[]).unwrap(), None);
        assert!(close_code(&[3]).is_err());
        assert_eq!(close_code(&[0x0f, 0xa0, b'x']).unwrap(), Some(4000));
        assert_eq!(close_reply(None), Vec::<u8>::new());
        assert_eq!(close_reply(Some(1000)), vec![0x03, 0xe8]);
        // 1005 (no status) must never be sent: answer with 1002.
        assert_eq!(close_reply(Some(1005)), vec![0x03, 0xea]);
        assert_eq!(close_payload(1000, "ok"), vec![0x03, 0xe8, b'o', b'k']);
    }

    #[test]
    fn allowed_close_codes_are_tungstenites() {
        for code in 0..=u16::MAX {
            assert_eq!(
                framing::close_code_allowed(code),
                WsCloseCode::from(code).is_allowed(),
                "{code}"
            );
        }
    }

    #[test]
    fn masked_control_frames_unmask_to_their_payload() {
        let mask = Masks::new(42).next();
        let frame = masked_control(opcode::PONG, b"ping data", mask);
        assert_eq!(frame[0], 0x8a);
        assert_eq!(frame[1], 0x80 | 9);
        assert_eq!(&frame[2..6], &mask);
        let unmasked: Vec<u8> = frame[6..]
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect();
        assert_eq!(unmasked, b"ping data");
        // tungstenite, as a server, reads it as the same pong.
        let mut cursor = std::io::Cursor::new(&frame);
        let (h, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert_eq!(
            (h.opcode, h.is_final, h.mask, len),
            (OpCode::Control(Control::Pong), true, Some(mask), 9)
        );
        assert_eq!(
            masked_control(opcode::CLOSE, &[0; 200], mask).len(),
            6 + 125
        );
    }

    #[test]
    fn server_frames_round_trip_through_tungstenite() {
        let mut out = Vec::new();
        framing::write_message(&mut out, Kind::Text, b"hi");
        framing::write_message(&mut out, Kind::Binary, &[7; 300]);
        framing::write_message(&mut out, Kind::Binary, &[8; 70_000]);
        framing::write_close(&mut out, 4008, &"é".repeat(100));
        framing::write_control(&mut out, true, b"p");
        let frames = tungstenite_frames(&out);
        assert_eq!(frames.len(), 5);
        assert_eq!(frames[0].payload(), b"hi");
        assert_eq!(frames[0].header().opcode, OpCode::Data(Data::Text));
        assert_eq!(frames[1].payload().len(), 300);
        assert_eq!(frames[2].payload().len(), 70_000);
        assert!(frames.iter().all(|f| f.header().is_final));
        assert!(frames.iter().all(|f| f.header().mask.is_none()));
        assert!(frames[3].payload().len() <= 125);
        assert_eq!(&frames[3].payload()[..2], &4008u16.to_be_bytes());
        assert!(std::str::from_utf8(&frames[3].payload()[2..]).is_ok());
        assert_eq!(frames[4].header().opcode, OpCode::Control(Control::Pong));
    }

    #[test]
    fn client_frames_round_trip_through_tungstenite() {
        let mut out = Vec::new();
        let mut masks = Masks::new(7);
        let keys = [masks.next(), masks.next()];
        framing::write_masked(&mut out, FIN | opcode::TEXT, b"hello", keys[0]);
        framing::write_masked(&mut out, opcode::BINARY, &[3; 70_000], keys[1]);
        let frames = tungstenite_frames(&out);
        assert_eq!(frames.len(), 2);
        let payloads: Vec<Vec<u8>> = frames
            .iter()
            .zip(keys)
            .map(|(frame, key)| {
                assert_eq!(frame.header().mask, Some(key));
                let mut payload = frame.payload().to_vec();
                framing::apply_mask(&mut payload, key);
                payload
            })
            .collect();
        assert_eq!(payloads[0], b"hello");
        assert!(frames[0].header().is_final);
        assert!(!frames[1].header().is_final);
        assert_eq!(payloads[1], vec![3; 70_000]);
    }

    #[test]
    fn masks_vary() {
        let mut masks = Masks::new(0);
        let a = masks.next();
        let b = masks.next();
        assert_ne!(a, b);
    }
}
