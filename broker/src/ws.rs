//! The server side of WebSocket framing (RFC 6455, section 5), without I/O.
//!
//! A connection reads client frames into one buffer and parses them in place
//! ([`FrameReader`]); it writes server frames straight into one outbound
//! buffer ([`write_frame`]). A delivery is encoded once per codec as a
//! complete frame, header included, so handing it to a subscriber is one copy
//! into that subscriber's buffer: no message object, no reference count and
//! no header formatting per subscriber.
//!
//! Headers are parsed and formatted by tungstenite's [`FrameHeader`]; this
//! module adds what a server must check (RFC 6455, 5.1-5.5): client frames
//! are masked, reserved bits are clear, control frames are short and whole,
//! fragments arrive in order, text is UTF-8 and the message fits the limit.
//! Every violation maps to the close code the connection is failed with.

use std::io::Cursor;
use std::ops::ControlFlow;

use starling_protocol::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{
    CloseCode as WsCloseCode, Control, Data, OpCode,
};

/// The most payload a control frame may carry (RFC 6455, 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// The kind of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    Binary,
}

impl Kind {
    fn opcode(self) -> OpCode {
        match self {
            Kind::Text => OpCode::Data(Data::Text),
            Kind::Binary => OpCode::Data(Data::Binary),
        }
    }
}

/// One thing the peer sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// A complete message (reassembled if it came in fragments); text has
    /// been checked to be UTF-8.
    Message(Kind, &'a [u8]),
    /// A ping, to be answered with a pong carrying the same bytes.
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame, with the peer's (valid) close code, if it gave one.
    Close(Option<u16>),
}

/// A frame that breaks RFC 6455 or the size limit: the connection is failed
/// with `code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub(crate) struct Violation {
    pub(crate) code: CloseCode,
    pub(crate) reason: String,
}

impl Violation {
    fn protocol(reason: impl Into<String>) -> Self {
        Violation {
            code: CloseCode::Protocol,
            reason: reason.into(),
        }
    }

    fn not_utf8() -> Self {
        Violation {
            code: CloseCode::InvalidPayload,
            reason: "text is not valid UTF-8".into(),
        }
    }

    fn too_big(size: u64, max: usize) -> Self {
        Violation {
            code: CloseCode::TooBig,
            reason: format!("message of {size} bytes is over the limit of {max}"),
        }
    }
}

/// A message that came in fragments and is not complete yet.
#[derive(Debug)]
struct Fragments {
    kind: Kind,
    data: Vec<u8>,
}

/// Parses client frames out of the bytes read so far.
///
/// The buffer holds only bytes not parsed yet, and gives its memory back as
/// soon as it is empty: a quiet connection holds no read buffer at all.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    fragments: Option<Box<Fragments>>,
}

impl FrameReader {
    /// The buffer to read into: parsing takes from its front.
    pub(crate) fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Bytes held: unparsed input and unfinished fragments.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buf.len() + self.fragments.as_ref().map_or(0, |f| f.data.len())
    }

    /// Hands every complete frame in the buffer to `each`, in order, until
    /// the buffer runs out, `each` breaks, or a frame breaks the rules.
    /// Messages over `max_message` bytes are refused before they are read.
    pub(crate) fn parse<B>(
        &mut self,
        max_message: usize,
        mut each: impl FnMut(Event<'_>) -> ControlFlow<B>,
    ) -> Result<ControlFlow<B>, Violation> {
        let mut pos = 0;
        let flow = loop {
            match self.next_event(&mut pos, max_message)? {
                None => break ControlFlow::Continue(()),
                Some(Step::Fragment) => {}
                Some(Step::Frame { kind, start, end }) => {
                    let payload = &self.buf[start..end];
                    let event = match kind {
                        FrameKind::Message(kind) => Event::Message(kind, payload),
                        FrameKind::Ping => Event::Ping(payload),
                        FrameKind::Pong => Event::Pong,
                        FrameKind::Close(code) => Event::Close(code),
                    };
                    if let ControlFlow::Break(b) = each(event) {
                        break ControlFlow::Break(b);
                    }
                }
                Some(Step::Reassembled(fragments)) => {
                    if let ControlFlow::Break(b) =
                        each(Event::Message(fragments.kind, &fragments.data))
                    {
                        break ControlFlow::Break(b);
                    }
                }
            }
        };
        self.consume(pos);
        Ok(flow)
    }

    /// Drops the first `n` bytes; frees the buffer once it is empty.
    fn consume(&mut self, n: usize) {
        if n >= self.buf.len() {
            self.buf = Vec::new();
        } else if n > 0 {
            self.buf.drain(..n);
        }
    }

    /// Parses the frame at `pos`, unmasks it in place and advances `pos`
    /// past it. `None` when the frame is not complete yet.
    fn next_event(&mut self, pos: &mut usize, max: usize) -> Result<Option<Step>, Violation> {
        let mut cursor = Cursor::new(&self.buf[*pos..]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(None),
            Err(error) => return Err(Violation::protocol(error.to_string())),
        };
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(Violation::protocol("reserved bits are set"));
        }
        let Some(mask) = header.mask else {
            return Err(Violation::protocol("client frames must be masked"));
        };
        if let OpCode::Control(_) = header.opcode {
            if !header.is_final {
                return Err(Violation::protocol("control frames must not be fragmented"));
            }
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(Violation::protocol(
                    "control frames carry at most 125 bytes",
                ));
            }
        }
        let held = self.fragments.as_ref().map_or(0, |f| f.data.len() as u64);
        if held.saturating_add(len) > max as u64 {
            return Err(Violation::too_big(held.saturating_add(len), max));
        }
        let start = *pos + cursor.position() as usize;
        // Fits in usize: it is at most `max`.
        let end = start + len as usize;
        if end > self.buf.len() {
            // Not all here yet. The buffer grows as bytes arrive, not as the
            // header announces: a header alone costs the broker nothing.
            return Ok(None);
        }
        apply_mask(&mut self.buf[start..end], mask);
        *pos = end;
        let payload = &self.buf[start..end];

        let kind = match header.opcode {
            OpCode::Data(Data::Text | Data::Binary) if self.fragments.is_some() => {
                return Err(Violation::protocol(
                    "a new message started before the fragmented one ended",
                ));
            }
            OpCode::Data(data @ (Data::Text | Data::Binary)) => {
                let kind = if data == Data::Text {
                    Kind::Text
                } else {
                    Kind::Binary
                };
                if !header.is_final {
                    self.fragments = Some(Box::new(Fragments {
                        kind,
                        data: payload.to_vec(),
                    }));
                    return Ok(Some(Step::Fragment));
                }
                if kind == Kind::Text && std::str::from_utf8(payload).is_err() {
                    return Err(Violation::not_utf8());
                }
                FrameKind::Message(kind)
            }
            OpCode::Data(Data::Continue) => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(Violation::protocol(
                        "continuation frame without a message to continue",
                    ));
                };
                fragments.data.extend_from_slice(payload);
                if !header.is_final {
                    return Ok(Some(Step::Fragment));
                }
                let fragments = self.fragments.take().expect("checked above");
                if fragments.kind == Kind::Text && std::str::from_utf8(&fragments.data).is_err() {
                    return Err(Violation::not_utf8());
                }
                return Ok(Some(Step::Reassembled(fragments)));
            }
            OpCode::Control(Control::Ping) => FrameKind::Ping,
            OpCode::Control(Control::Pong) => FrameKind::Pong,
            OpCode::Control(Control::Close) => FrameKind::Close(close_code(payload)?),
            // FrameHeader::parse refuses reserved opcodes.
            OpCode::Data(Data::Reserved(op)) | OpCode::Control(Control::Reserved(op)) => {
                return Err(Violation::protocol(format!("reserved opcode {op}")));
            }
        };
        Ok(Some(Step::Frame { kind, start, end }))
    }
}

/// What one parsed frame amounts to.
enum Step {
    /// A fragment was added to an unfinished message.
    Fragment,
    /// A whole frame at `start..end` of the buffer.
    Frame {
        kind: FrameKind,
        start: usize,
        end: usize,
    },
    /// The last fragment of a message arrived.
    Reassembled(Box<Fragments>),
}

enum FrameKind {
    Message(Kind),
    Ping,
    Pong,
    Close(Option<u16>),
}

/// The close code in a close frame's payload, checked (RFC 6455, 5.5.1 and
/// 7.4): none, or a code an endpoint may send, followed by UTF-8.
fn close_code(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::protocol("close frame with a one-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !WsCloseCode::from(code).is_allowed() {
                return Err(Violation::protocol(format!("invalid close code {code}")));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(Violation::not_utf8());
            }
            Ok(Some(code))
        }
    }
}

/// Unmasks (or masks) `buf` with the 4-byte `mask`, eight bytes at a time.
fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
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

/// Appends one unfragmented, unmasked server frame to `out`.
pub(crate) fn write_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    header
        .format(payload.len() as u64, out)
        .expect("formatting into a Vec cannot fail");
    out.extend_from_slice(payload);
}

/// Appends a data message as one frame.
pub(crate) fn write_message(out: &mut Vec<u8>, kind: Kind, payload: &[u8]) {
    write_frame(out, kind.opcode(), payload);
}

/// Appends a close frame with `code` and as much of `reason` as fits.
pub(crate) fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    write_frame(out, OpCode::Control(Control::Close), &payload);
}

/// Appends a ping (`pong == false`) or a pong carrying `payload`.
pub(crate) fn write_control(out: &mut Vec<u8>, pong: bool, payload: &[u8]) {
    let control = if pong { Control::Pong } else { Control::Ping };
    write_frame(out, OpCode::Control(control), payload);
}

/// The frame boundaries around byte `pos` of `out`, a run of whole server
/// frames from its start: the last boundary at or before `pos` and the first
/// at or after it (equal when `pos` is one).
pub(crate) fn frame_boundaries(out: &[u8], pos: usize) -> (usize, usize) {
    let mut start = 0;
    while start < pos {
        match server_frame_end(out, start) {
            Some(end) if end <= pos => start = end,
            Some(end) => return (start, end.min(out.len())),
            None => return (start, out.len()),
        }
    }
    (start, start)
}

/// The end of the unmasked server frame that starts at `start`, if all of
/// its header is in `out`.
fn server_frame_end(out: &[u8], start: usize) -> Option<usize> {
    let mut cursor = Cursor::new(out.get(start..)?);
    let (_, len) = FrameHeader::parse(&mut cursor).ok()??;
    Some(start + cursor.position() as usize + len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as RFC 6455 requires.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    const TEXT: u8 = 0x81;
    const BINARY: u8 = 0x82;

    /// Feeds `bytes` and collects what comes out, as owned values.
    fn parse(reader: &mut FrameReader, bytes: &[u8]) -> Result<Vec<String>, Violation> {
        reader.buffer().extend_from_slice(bytes);
        let mut seen = Vec::new();
        let _ = reader.parse(1 << 20, |event| {
            seen.push(match event {
                Event::Message(kind, data) => {
                    format!("{kind:?}:{}", String::from_utf8_lossy(data))
                }
                Event::Ping(data) => format!("ping:{}", String::from_utf8_lossy(data)),
                Event::Pong => "pong".into(),
                Event::Close(code) => format!("close:{code:?}"),
            });
            ControlFlow::<()>::Continue(())
        })?;
        Ok(seen)
    }

    #[test]
    fn parses_masked_frames_of_every_length_format() {
        let mut reader = FrameReader::default();
        for len in [0, 5, 125, 126, 300, 65535, 65536, 70000] {
            let body = "x".repeat(len);
            let seen = parse(&mut reader, &client_frame(TEXT, body.as_bytes())).unwrap();
            assert_eq!(seen, vec![format!("Text:{body}")], "length {len}");
            assert_eq!(reader.held(), 0);
            assert_eq!(reader.buf.capacity(), 0, "an empty buffer is freed");
        }
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_in_order() {
        let mut wire = client_frame(TEXT, b"hello");
        wire.extend(client_frame(0x89, b"p"));
        wire.extend(client_frame(BINARY, &[0u8; 200]));
        wire.extend(client_frame(0x8a, b""));
        wire.extend(client_frame(0x88, &[0x03, 0xe8]));
        for split in 0..wire.len() {
            let mut reader = FrameReader::default();
            let mut seen = parse(&mut reader, &wire[..split]).unwrap();
            seen.extend(parse(&mut reader, &wire[split..]).unwrap());
            let binary = format!("Binary:{}", "\0".repeat(200));
            assert_eq!(
                seen,
                vec![
                    "Text:hello".to_owned(),
                    "ping:p".into(),
                    binary,
                    "pong".into(),
                    "close:Some(1000)".into()
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn fragments_are_reassembled_around_control_frames() {
        let mut wire = client_frame(0x01, b"hel");
        wire.extend(client_frame(0x89, b"mid"));
        wire.extend(client_frame(0x00, b"lo "));
        wire.extend(client_frame(0x80, b"world"));
        let mut reader = FrameReader::default();
        let seen = parse(&mut reader, &wire).unwrap();
        assert_eq!(seen, vec!["ping:mid", "Text:hello world"]);
        assert_eq!(reader.held(), 0);
    }

    fn violation(bytes: &[u8]) -> Violation {
        let mut reader = FrameReader::default();
        parse(&mut reader, bytes).expect_err("the frame breaks the rules")
    }

    #[test]
    fn rule_breaking_frames_fail_with_the_right_code() {
        let mut unmasked = vec![TEXT, 2];
        unmasked.extend_from_slice(b"hi");
        assert_eq!(violation(&unmasked).code, CloseCode::Protocol);
        assert_eq!(
            violation(&client_frame(0xc1, b"x")).code,
            CloseCode::Protocol
        ); // RSV1
        assert_eq!(
            violation(&client_frame(0x83, b"x")).code,
            CloseCode::Protocol
        ); // opcode 3
        assert_eq!(
            violation(&client_frame(0x8b, b"x")).code,
            CloseCode::Protocol
        ); // opcode 11
        assert_eq!(
            violation(&client_frame(0x09, b"x")).code,
            CloseCode::Protocol
        ); // fragmented ping
        assert_eq!(
            violation(&client_frame(0x89, &[0; 126])).code,
            CloseCode::Protocol
        );
        assert_eq!(
            violation(&client_frame(0x80, b"x")).code,
            CloseCode::Protocol
        ); // lone continuation
        let mut two_starts = client_frame(0x01, b"a");
        two_starts.extend(client_frame(TEXT, b"b"));
        assert_eq!(violation(&two_starts).code, CloseCode::Protocol);
        assert_eq!(
            violation(&client_frame(TEXT, &[0xff, 0xfe])).code,
            CloseCode::InvalidPayload
        );
        let mut split_utf8 = client_frame(0x01, &[0xe2, 0x82]);
        split_utf8.extend(client_frame(0x80, &[0xac]));
        let mut reader = FrameReader::default();
        assert_eq!(parse(&mut reader, &split_utf8).unwrap(), vec!["Text:€"]);
        assert_eq!(
            violation(&client_frame(0x88, &[3])).code,
            CloseCode::Protocol
        );
        assert_eq!(
            violation(&client_frame(0x88, &1005u16.to_be_bytes())).code,
            CloseCode::Protocol
        );
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xff);
        assert_eq!(
            violation(&client_frame(0x88, &bad_reason)).code,
            CloseCode::InvalidPayload
        );
    }

    #[test]
    fn a_header_alone_reserves_nothing_for_its_payload() {
        let mut reader = FrameReader::default();
        let header = &client_frame(BINARY, &[0; 60_000])[..8];
        reader.buffer().extend_from_slice(header);
        let flow = reader.parse(1 << 20, |_| ControlFlow::<()>::Continue(()));
        assert_eq!(flow, Ok(ControlFlow::Continue(())));
        assert!(reader.buf.capacity() < 1024, "{}", reader.buf.capacity());
    }

    #[test]
    fn oversized_messages_are_refused_from_the_header() {
        let mut reader = FrameReader::default();
        // Only the header: the payload is refused before it is read.
        let header = &client_frame(BINARY, &[0; 2000])[..8];
        reader.buffer().extend_from_slice(header);
        let error = reader
            .parse(1000, |_| ControlFlow::<()>::Continue(()))
            .unwrap_err();
        assert_eq!(error.code, CloseCode::TooBig);
        // Fragments count together.
        let mut reader = FrameReader::default();
        reader.buffer().extend(
            client_frame(0x02, &[0; 600])
                .into_iter()
                .chain(client_frame(0x00, &[0; 600])),
        );
        let error = reader
            .parse(1000, |_| ControlFlow::<()>::Continue(()))
            .unwrap_err();
        assert_eq!(error.code, CloseCode::TooBig);
    }

    #[test]
    fn parsing_stops_where_the_handler_breaks() {
        let mut reader = FrameReader::default();
        let mut wire = client_frame(TEXT, b"one");
        wire.extend(client_frame(TEXT, b"two"));
        reader.buffer().extend_from_slice(&wire);
        let flow = reader
            .parse(1 << 20, |_| ControlFlow::Break("stop"))
            .unwrap();
        assert_eq!(flow, ControlFlow::Break("stop"));
        assert_eq!(parse(&mut reader, &[]).unwrap(), vec!["Text:two"]);
    }

    #[test]
    fn server_frames_round_trip_through_tungstenite() {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        let mut out = Vec::new();
        write_message(&mut out, Kind::Text, b"hi");
        write_message(&mut out, Kind::Binary, &[7; 300]);
        write_close(&mut out, 4008, &"é".repeat(100));
        write_control(&mut out, true, b"p");
        let mut cursor = Cursor::new(&out[..]);
        let mut frames = Vec::new();
        while let Some((header, len)) = FrameHeader::parse(&mut cursor).unwrap() {
            let at = cursor.position() as usize;
            let payload = out[at..at + len as usize].to_vec();
            cursor.set_position((at + len as usize) as u64);
            frames.push(Frame::from_payload(header, payload.into()));
        }
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0].payload(), b"hi");
        assert_eq!(frames[1].payload().len(), 300);
        assert!(frames[2].payload().len() <= 125);
        assert_eq!(&frames[2].payload()[..2], &4008u16.to_be_bytes());
        assert!(std::str::from_utf8(&frames[2].payload()[2..]).is_ok());
        assert_eq!(frames[3].header().opcode, OpCode::Control(Control::Pong));
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

        /// A client message and the frames it is sent as.
        fn message() -> impl Strategy<Value = (bool, Vec<u8>, Vec<usize>)> {
            (
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec(1usize..100, 0..4),
            )
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..64), 0..16)
            ) {
                let mut reader = FrameReader::default();
                for chunk in chunks {
                    reader.buffer().extend_from_slice(&chunk);
                    if reader.parse(4096, |_| ControlFlow::<()>::Continue(())).is_err() {
                        break;
                    }
                }
            }

            #[test]
            fn fragmented_messages_split_anywhere_come_out_whole(
                messages in proptest::collection::vec(message(), 1..6),
                split in any::<proptest::sample::Index>(),
            ) {
                let mut wire = Vec::new();
                let mut expected = Vec::new();
                for (binary, data, cuts) in &messages {
                    // Binary keeps arbitrary bytes; text is made valid UTF-8.
                    let data = if *binary {
                        data.clone()
                    } else {
                        String::from_utf8_lossy(data).into_owned().into_bytes()
                    };
                    let mut pieces = Vec::new();
                    let mut rest = &data[..];
                    for &cut in cuts {
                        let at = cut.min(rest.len());
                        pieces.push(&rest[..at]);
                        rest = &rest[at..];
                    }
                    pieces.push(rest);
                    let first_opcode = if *binary { 0x2 } else { 0x1 };
                    let last = pieces.len() - 1;
                    for (i, piece) in pieces.iter().enumerate() {
                        let opcode = if i == 0 { first_opcode } else { 0x0 };
                        let fin = if i == last { 0x80 } else { 0 };
                        wire.extend(client_frame(fin | opcode, piece));
                    }
                    let kind = if *binary { "Binary" } else { "Text" };
                    expected.push(format!("{kind}:{}", String::from_utf8_lossy(&data)));
                }
                let at = split.index(wire.len() + 1);
                let mut reader = FrameReader::default();
                let mut seen = parse(&mut reader, &wire[..at]).unwrap();
                seen.extend(parse(&mut reader, &wire[at..]).unwrap());
                prop_assert_eq!(seen, expected);
                prop_assert_eq!(reader.held(), 0);
            }
        }
    }
}
