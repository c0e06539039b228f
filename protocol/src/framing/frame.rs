//! One frame on the wire (RFC 6455, 5.2-5.5 and 7.4): the roles and kinds,
//! the header (parsed, checked for a role, written), masking, the writers
//! of whole frames, close payloads, and the rules' [`Violation`]s.

use crate::CloseCode;

use super::opcode;

/// The FIN bit of a frame's first byte: the last frame of its message.
pub const FIN: u8 = 0x80;

/// The RSV1, RSV2 and RSV3 bits of a frame's first byte.
pub const RSV: u8 = 0x70;

/// The most payload a control frame may carry (RFC 6455, 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The mask bit of a frame's second byte.
const MASKED: u8 = 0x80;

/// The side of a connection an endpoint plays: it reads the other side's
/// frames and writes its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reads masked client frames; writes unmasked frames.
    Server,
    /// Reads unmasked server frames; writes frames masked with a fresh key.
    Client,
}

/// The kind of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// UTF-8 text.
    Text,
    /// Bytes.
    Binary,
}

impl Kind {
    /// The opcode of the message's first frame.
    #[inline]
    pub const fn opcode(self) -> u8 {
        match self {
            Kind::Text => opcode::TEXT,
            Kind::Binary => opcode::BINARY,
        }
    }
}

/// A frame that breaks RFC 6455 or the size limit: the connection is failed
/// with `code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Violation {
    /// The close code to fail the connection with.
    pub code: CloseCode,
    /// What was wrong, for the close frame and the logs.
    pub reason: String,
}

impl Violation {
    #[cold]
    pub(super) fn protocol(reason: impl Into<String>) -> Self {
        Violation {
            code: CloseCode::Protocol,
            reason: reason.into(),
        }
    }

    #[cold]
    pub(super) fn not_utf8() -> Self {
        Violation {
            code: CloseCode::InvalidPayload,
            reason: "text is not valid UTF-8".into(),
        }
    }

    #[cold]
    pub(super) fn too_big(size: u64, max: usize) -> Self {
        Violation {
            code: CloseCode::TooBig,
            reason: format!("message of {size} bytes is over the limit of {max}"),
        }
    }
}

/// One frame header (RFC 6455, 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The last frame of its message.
    pub fin: bool,
    /// The RSV1-3 bits, in their place in the first byte (see [`RSV`]):
    /// zero unless an extension gave them a meaning.
    pub rsv: u8,
    /// The opcode (see [`opcode`]).
    pub opcode: u8,
    /// The masking key, when the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// Bytes of payload after the header.
    pub payload_len: u64,
    /// Bytes of the header: 2, 4 or 10, plus 4 when masked.
    pub header_len: usize,
}

impl Header {
    /// Parses the header at the start of `bytes`: `Ok(None)` while `bytes`
    /// does not hold all of it. The only rule checked here is the one
    /// without which the header cannot be read: a 64-bit length must have
    /// its most significant bit clear (1002). [`Header::check`] checks the
    /// rest.
    #[inline]
    pub fn parse(bytes: &[u8]) -> Result<Option<Header>, Violation> {
        let [first, second, ref rest @ ..] = *bytes else {
            return Ok(None);
        };
        let (payload_len, len_bytes) = match second & 0x7f {
            126 => match rest.first_chunk::<2>() {
                Some(len) => (u64::from(u16::from_be_bytes(*len)), 2),
                None => return Ok(None),
            },
            127 => match rest.first_chunk::<8>() {
                Some(len) => (u64::from_be_bytes(*len), 8),
                None => return Ok(None),
            },
            n => (u64::from(n), 0),
        };
        if payload_len >> 63 != 0 {
            return Err(Violation::protocol(
                "frame length has its most significant bit set",
            ));
        }
        let mask = if second & MASKED != 0 {
            match rest[len_bytes..].first_chunk::<4>() {
                Some(key) => Some(*key),
                None => return Ok(None),
            }
        } else {
            None
        };
        Ok(Some(Header {
            fin: first & FIN != 0,
            rsv: first & RSV,
            opcode: first & 0x0f,
            mask,
            payload_len,
            header_len: 2 + len_bytes + if mask.is_some() { 4 } else { 0 },
        }))
    }

    /// Checks the header of a frame read by an endpoint playing `role`
    /// (RFC 6455, 5.1-5.5), in this order: the opcode is not reserved, the
    /// reserved bits are clear, the frame is masked if and only if it comes
    /// from a client (a server reads masked frames, a client unmasked ones),
    /// and a control frame is final and carries at most 125 bytes. Every
    /// violation is a protocol error (1002).
    #[inline]
    pub fn check(&self, role: Role) -> Result<(), Violation> {
        if opcode::is_reserved(self.opcode) {
            return Err(Violation::protocol(format!(
                "reserved opcode {}",
                self.opcode
            )));
        }
        if self.rsv != 0 {
            return Err(Violation::protocol("reserved bits are set"));
        }
        match (role, self.mask.is_some()) {
            (Role::Server, false) => {
                return Err(Violation::protocol("client frames must be masked"));
            }
            (Role::Client, true) => {
                return Err(Violation::protocol("server frames must not be masked"));
            }
            _ => {}
        }
        if opcode::is_control(self.opcode) {
            if !self.fin {
                return Err(Violation::protocol("control frames must not be fragmented"));
            }
            if self.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(Violation::protocol(
                    "control frames carry at most 125 bytes",
                ));
            }
        }
        Ok(())
    }

    /// The first byte of the frame: FIN, RSV1-3 and the opcode.
    #[inline]
    pub fn head(&self) -> u8 {
        (if self.fin { FIN } else { 0 }) | self.rsv | self.opcode
    }

    /// Bytes of the whole frame, header and payload.
    #[inline]
    pub fn frame_len(&self) -> u64 {
        self.header_len as u64 + self.payload_len
    }
}

/// Whether an endpoint may send close code `code` (RFC 6455, 7.4): 1000-1003,
/// 1007-1013 and 3000-4999, as tungstenite's `CloseCode::is_allowed` has it.
/// Never 1004-1006 or 1015 (reserved, or only for reporting), nor codes
/// below 1000, from 1014 to 2999, or from 5000 on.
#[inline]
pub const fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

/// The code and reason of a close frame's payload, checked (RFC 6455, 5.5.1
/// and 7.4): `None` for an empty payload; otherwise a code an endpoint may
/// send ([`close_code_allowed`], else 1002) followed by UTF-8 (else 1007).
pub fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::protocol("close frame with a one-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_allowed(code) {
                return Err(Violation::protocol(format!("invalid close code {code}")));
            }
            match std::str::from_utf8(reason) {
                Ok(reason) => Ok(Some((code, reason))),
                Err(_) => Err(Violation::not_utf8()),
            }
        }
    }
}

/// Unmasks (or masks) `buf` with the 4-byte `mask`, eight bytes at a time.
#[inline]
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("chunks of 8"));
        chunk.copy_from_slice(&(word ^ wide).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// Appends a frame header to `out`: `head` exactly as given (FIN, RSV1-3 and
/// opcode), the length of `payload_len` in its shortest form, and `mask`
/// when given (with the mask bit set).
#[inline]
pub fn write_header(out: &mut Vec<u8>, head: u8, payload_len: u64, mask: Option<[u8; 4]>) {
    let masked = if mask.is_some() { MASKED } else { 0 };
    // Fixed-size copies only: each is a store or two, not a call to memcpy.
    if payload_len < 126 {
        out.extend_from_slice(&[head, masked | payload_len as u8]);
    } else if payload_len <= u64::from(u16::MAX) {
        let [hi, lo] = (payload_len as u16).to_be_bytes();
        out.extend_from_slice(&[head, masked | 126, hi, lo]);
    } else {
        out.extend_from_slice(&[head, masked | 127]);
        out.extend_from_slice(&payload_len.to_be_bytes());
    }
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
}

/// Appends one frame to `out`: `head` exactly as given (FIN, RSV1-3 and
/// opcode, whether valid or not), then `payload`, masked with `mask` when
/// given.
#[inline]
pub fn write_frame_raw(out: &mut Vec<u8>, head: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.reserve(14 + payload.len());
    write_header(out, head, payload.len() as u64, mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        apply_mask(&mut out[start..], mask);
    }
}

/// Appends one client frame: `head` (FIN, RSV1-3 and opcode, e.g.
/// `FIN | opcode::TEXT`), then `payload` masked with `mask`. A client picks
/// a fresh key for every frame (RFC 6455, 5.3).
#[inline]
pub fn write_masked(out: &mut Vec<u8>, head: u8, payload: &[u8], mask: [u8; 4]) {
    write_frame_raw(out, head, payload, Some(mask));
}

/// Appends one unfragmented, unmasked server frame with `op`.
#[inline]
fn write_server_frame(out: &mut Vec<u8>, op: u8, payload: &[u8]) {
    write_frame_raw(out, FIN | op, payload, None);
}

/// Appends a data message as one unmasked (server) frame.
#[inline]
pub fn write_message(out: &mut Vec<u8>, kind: Kind, payload: &[u8]) {
    write_server_frame(out, kind.opcode(), payload);
}

/// Appends an unmasked (server) close frame with `code` and as much of
/// `reason` as fits in a control frame, cut at a character boundary.
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    out.reserve(4 + cut);
    write_header(out, FIN | opcode::CLOSE, 2 + cut as u64, None);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..cut]);
}

/// Appends an unmasked (server) ping (`pong == false`) or pong carrying
/// `payload` (at most 125 bytes).
#[inline]
pub fn write_control(out: &mut Vec<u8>, pong: bool, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
    let op = if pong { opcode::PONG } else { opcode::PING };
    write_server_frame(out, op, payload);
}

/// The frame boundaries around byte `pos` of `out`, a run of whole unmasked
/// frames from its start (as a server writes them): the last boundary at or
/// before `pos` and the first at or after it (equal when `pos` is one).
pub fn frame_boundaries(out: &[u8], pos: usize) -> (usize, usize) {
    let mut start = 0;
    while start < pos {
        match frame_end(out, start) {
            Some(end) if end <= pos => start = end,
            Some(end) => return (start, end.min(out.len())),
            None => return (start, out.len()),
        }
    }
    (start, start)
}

/// The end of the frame that starts at `start`, if all of its header is in
/// `out`.
fn frame_end(out: &[u8], start: usize) -> Option<usize> {
    let header = Header::parse(out.get(start..)?).ok()??;
    usize::try_from(header.frame_len())
        .ok()
        .and_then(|len| start.checked_add(len))
}

/// Frames for the framing module's unit tests.
#[cfg(test)]
pub(crate) mod test_frames {
    use super::{write_frame_raw, write_masked};
    /// The masking key of the frames the tests send as a client.
    pub(crate) const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: masked, as RFC 6455 requires.
    pub(crate) fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_masked(&mut out, first, payload, KEY);
        out
    }

    /// A server frame: unmasked.
    pub(crate) fn server_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame_raw(&mut out, first, payload, None);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_frames::{KEY, client_frame, server_frame};

    const TEXT: u8 = 0x81;

    #[test]
    fn client_frames_are_laid_out_as_rfc_6455_says() {
        // RFC 6455, 5.7: a single-frame masked text message "Hello".
        assert_eq!(
            client_frame(TEXT, b"Hello"),
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
        // An unmasked one, as a server sends it.
        let mut out = Vec::new();
        write_message(&mut out, Kind::Text, b"Hello");
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        // 256 and 65536 bytes of binary: 16- and 64-bit lengths.
        let mut out = Vec::new();
        write_message(&mut out, Kind::Binary, &[0; 256]);
        assert_eq!(&out[..4], [0x82, 0x7e, 0x01, 0x00]);
        let mut out = Vec::new();
        write_message(&mut out, Kind::Binary, &[0; 65536]);
        assert_eq!(&out[..10], [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn headers_of_every_length_format_parse_and_wait_for_their_bytes() {
        for (len, header_len) in [
            (0, 2),
            (125, 2),
            (126, 4),
            (65_535, 4),
            (65_536, 10),
            (1 << 20, 10),
        ] {
            for mask in [None, Some(KEY)] {
                let mut bytes = Vec::new();
                write_frame_raw(&mut bytes, TEXT, &vec![b'x'; len], mask);
                let header_len = header_len + if mask.is_some() { 4 } else { 0 };
                let header = Header::parse(&bytes).unwrap().unwrap();
                assert_eq!(
                    header,
                    Header {
                        fin: true,
                        rsv: 0,
                        opcode: opcode::TEXT,
                        mask,
                        payload_len: len as u64,
                        header_len,
                    }
                );
                assert_eq!(header.frame_len(), bytes.len() as u64);
                assert_eq!(header.head(), TEXT);
                for cut in 0..header_len {
                    assert_eq!(Header::parse(&bytes[..cut]), Ok(None), "{len} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn header_fields_are_read_as_written() {
        let mut bytes = Vec::new();
        write_header(&mut bytes, 0x5a, 3, None);
        let header = Header::parse(&bytes).unwrap().unwrap();
        assert_eq!((header.fin, header.rsv, header.opcode), (false, 0x50, 0xa));
        assert_eq!(header.head(), 0x5a);
        // A 64-bit length must have its top bit clear.
        let top = [0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(Header::parse(&top).unwrap_err().code, CloseCode::Protocol);
    }

    #[test]
    fn header_checks_depend_on_the_role() {
        let check = |bytes: &[u8], role| Header::parse(bytes).unwrap().unwrap().check(role);
        let masked = client_frame(TEXT, b"x");
        let unmasked = server_frame(TEXT, b"x");
        assert_eq!(check(&masked, Role::Server), Ok(()));
        assert_eq!(check(&unmasked, Role::Client), Ok(()));
        let refused = check(&unmasked, Role::Server).unwrap_err();
        assert_eq!(refused.reason, "client frames must be masked");
        let refused = check(&masked, Role::Client).unwrap_err();
        assert_eq!(refused.reason, "server frames must not be masked");
        for role in [Role::Server, Role::Client] {
            let frame = |head, payload: &[u8]| match role {
                Role::Server => client_frame(head, payload),
                Role::Client => server_frame(head, payload),
            };
            for (head, payload, reason) in [
                (0xc1, &b"x"[..], "reserved bits are set"),
                (0xa1, b"x", "reserved bits are set"),
                (0x91, b"x", "reserved bits are set"),
                (0x83, b"x", "reserved opcode 3"),
                (0x87, b"x", "reserved opcode 7"),
                (0x8b, b"x", "reserved opcode 11"),
                (0x8f, b"x", "reserved opcode 15"),
                (0x09, b"x", "control frames must not be fragmented"),
                (0x89, &[0; 126], "control frames carry at most 125 bytes"),
            ] {
                let error = check(&frame(head, payload), role).unwrap_err();
                assert_eq!(
                    (error.code, error.reason.as_str()),
                    (CloseCode::Protocol, reason),
                    "{head:#04x} in {role:?}"
                );
            }
            assert_eq!(check(&frame(0x89, &[0; 125]), role), Ok(()));
            assert_eq!(check(&frame(0x02, &[0; 300]), role), Ok(()));
        }
    }

    #[test]
    fn close_codes_follow_rfc_6455_section_7_4() {
        let allowed: Vec<u16> = (0..=u16::MAX).filter(|&c| close_code_allowed(c)).collect();
        let expected: Vec<u16> = (1000..=1003)
            .chain(1007..=1013)
            .chain(3000..=4999)
            .collect();
        assert_eq!(allowed, expected);
        for code in [
            0,
            999,
            1004,
            1005,
            1006,
            1014,
            1015,
            1016,
            2999,
            5000,
            u16::MAX,
        ] {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(b"bye");
            assert_eq!(
                parse_close(&payload).unwrap_err().code,
                CloseCode::Protocol,
                "{code}"
            );
        }
        assert_eq!(parse_close(&[]), Ok(None));
        assert_eq!(
            parse_close(&[0x0f, 0xa0, b'o', b'k']),
            Ok(Some((4000, "ok")))
        );
        assert_eq!(parse_close(&[0x03, 0xe8]), Ok(Some((1000, ""))));
        assert_eq!(
            parse_close(&[0x03, 0xe8, 0xc3]).unwrap_err().code,
            CloseCode::InvalidPayload
        );
    }

    #[test]
    fn raw_frames_keep_the_first_byte_as_given() {
        for head in [0x00, 0x0f, 0x41, 0x71, 0xf3, 0xff] {
            for mask in [None, Some(KEY)] {
                let mut out = Vec::new();
                write_frame_raw(&mut out, head, b"abc", mask);
                assert_eq!(out[0], head);
                let header = Header::parse(&out).unwrap().unwrap();
                assert_eq!(header.head(), head);
                assert_eq!(header.mask, mask);
                let mut payload = out[header.header_len..].to_vec();
                if let Some(mask) = mask {
                    apply_mask(&mut payload, mask);
                }
                assert_eq!(payload, b"abc");
            }
        }
    }

    #[test]
    fn frame_boundaries_are_found_from_the_start() {
        let mut out = Vec::new();
        write_message(&mut out, Kind::Text, b"abc"); // 0..5
        write_message(&mut out, Kind::Text, &[b'x'; 200]); // 5..209
        assert_eq!(frame_boundaries(&out, 0), (0, 0));
        assert_eq!(frame_boundaries(&out, 4), (0, 5));
        assert_eq!(frame_boundaries(&out, 5), (5, 5));
        assert_eq!(frame_boundaries(&out, 100), (5, 209));
        assert_eq!(frame_boundaries(&out, 209), (209, 209));
        // A frame whose header is cut: the rest of the buffer.
        assert_eq!(frame_boundaries(&out[..6], 6), (5, 6));
    }

    #[test]
    fn masking_matches_the_bytewise_definition() {
        let mask = [1, 2, 3, 4];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            apply_mask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow);
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn headers_round_trip(
                head in any::<u8>(),
                len in prop_oneof![0u64..200, 60_000u64..70_000, (1u64 << 32)..(1u64 << 40)],
                mask in any::<Option<[u8; 4]>>(),
                extra in proptest::collection::vec(any::<u8>(), 0..16),
            ) {
                let mut bytes = Vec::new();
                write_header(&mut bytes, head, len, mask);
                let header_len = bytes.len();
                bytes.extend_from_slice(&extra);
                let header = Header::parse(&bytes).unwrap().unwrap();
                prop_assert_eq!(header.head(), head);
                prop_assert_eq!(header.payload_len, len);
                prop_assert_eq!(header.mask, mask);
                prop_assert_eq!(header.header_len, header_len);
                for cut in 0..header_len {
                    prop_assert_eq!(Header::parse(&bytes[..cut]), Ok(None));
                }
            }
        }
    }
}
