//! The WebSocket framing (RFC 6455, section 5) the subscribers' read loop
//! needs once a connection is set up: frame headers from the server, parsed
//! in place, and the masked control frames a client sends (pong, close).
//!
//! Errors are tungstenite's, so that a broken connection is reported with
//! the same reason as when tungstenite read it.

use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data};

pub(crate) const OP_CONTINUE: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xa;

/// The largest payload of a control frame.
const MAX_CONTROL_PAYLOAD: usize = 125;
/// The largest frame this parser accepts (a 64-bit length must not have its
/// top bit set, and the whole frame must be addressable).
const MAX_FRAME: u64 = (isize::MAX as u64) - 16;

/// The header of a frame from a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The last frame of its message.
    pub(crate) fin: bool,
    pub(crate) opcode: u8,
    /// Bytes of the header: 2, 4 or 10 (a server does not mask).
    pub(crate) header_len: usize,
    pub(crate) payload_len: usize,
}

impl Header {
    /// Bytes of the whole frame, header and payload.
    pub(crate) fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Parses the header of the server frame at the start of `bytes`: `Ok(None)`
/// while `bytes` does not hold all of it. Refuses what tungstenite refuses
/// from a server: reserved bits, a mask, unknown opcodes, fragmented or
/// oversized control frames.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<Option<Header>, WsError> {
    let [first, second, ..] = *bytes else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(ProtocolError::NonZeroReservedBits.into());
    }
    if second & 0x80 != 0 {
        return Err(ProtocolError::MaskedFrameFromServer.into());
    }
    let fin = first & 0x80 != 0;
    let opcode = first & 0x0f;
    let (header_len, len) = match second & 0x7f {
        126 => match bytes.get(2..4) {
            Some(&[a, b]) => (4, u64::from(u16::from_be_bytes([a, b]))),
            _ => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(b) => (
                10,
                u64::from_be_bytes(b.try_into().expect("a slice of 8 bytes")),
            ),
            None => return Ok(None),
        },
        n => (2, u64::from(n)),
    };
    match opcode {
        OP_CONTINUE | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame.into());
            }
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::ControlFrameTooBig.into());
            }
        }
        0x3..=0x7 => return Err(ProtocolError::UnknownDataFrameType(opcode).into()),
        _ => return Err(ProtocolError::UnknownControlFrameType(opcode).into()),
    }
    if len > MAX_FRAME {
        return Err(WsError::Capacity(CapacityError::MessageTooLong {
            size: usize::try_from(len).unwrap_or(usize::MAX),
            max_size: MAX_FRAME as usize,
        }));
    }
    Ok(Some(Header {
        fin,
        opcode,
        header_len,
        payload_len: len as usize,
    }))
}

/// The error for a data frame that starts a message while another is still
/// being reassembled.
pub(crate) fn expected_fragment(opcode: u8) -> WsError {
    let data = if opcode == OP_TEXT {
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
        Some(code) if CloseCode::from(code).is_allowed() => code.to_be_bytes().to_vec(),
        Some(_) => u16::from(CloseCode::Protocol).to_be_bytes().to_vec(),
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
    frame.push(0x80 | opcode);
    frame.push(0x80 | payload.len() as u8);
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode;
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

    fn header(bytes: &[u8]) -> Header {
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
            let h = header(&bytes);
            assert_eq!(
                h,
                Header {
                    fin: true,
                    opcode: OP_TEXT,
                    header_len,
                    payload_len: len
                }
            );
            assert_eq!(h.frame_len(), bytes.len());
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
            (OpCode::Data(Data::Continue), OP_CONTINUE),
            (OpCode::Data(Data::Text), OP_TEXT),
            (OpCode::Data(Data::Binary), OP_BINARY),
        ] {
            for fin in [true, false] {
                let bytes = tungstenite_frame(b"abc", opcode, fin);
                let h = header(&bytes);
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
        assert_eq!(header(&ping).opcode, OP_PING);
    }

    #[test]
    fn refuses_what_a_server_must_not_send() {
        let refused = |bytes: &[u8]| parse_header(bytes).unwrap_err().to_string();
        assert!(refused(&[0x81 | 0x40, 0]).contains("Reserved bits"));
        assert!(refused(&[0x81, 0x80, 1, 2, 3, 4]).contains("masked"));
        assert!(refused(&[0x09, 0]).contains("Fragmented control frame"));
        assert!(refused(&[0x89, 126, 0, 126]).contains("Control frame too big"));
        assert!(refused(&[0x83, 0]).contains("Unknown data frame type"));
        assert!(refused(&[0x8b, 0]).contains("Unknown control frame type"));
        assert!(refused(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]).contains("Message too long"));
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
    fn masked_control_frames_unmask_to_their_payload() {
        let mask = Masks::new(42).next();
        let frame = masked_control(OP_PONG, b"ping data", mask);
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
            (
                OpCode::Control(
                    tokio_tungstenite::tungstenite::protocol::frame::coding::Control::Pong
                ),
                true,
                Some(mask),
                9
            )
        );
        assert_eq!(masked_control(OP_CLOSE, &[0; 200], mask).len(), 6 + 125);
    }

    #[test]
    fn masks_vary() {
        let mut masks = Masks::new(0);
        let a = masks.next();
        let b = masks.next();
        assert_ne!(a, b);
    }
}
