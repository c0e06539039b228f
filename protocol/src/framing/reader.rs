//! Reading the peer's frames: [`FrameReader`] parses them in place, checks
//! every rule, and reassembles fragmented messages into [`Event`]s.

use std::ops::ControlFlow;

use super::frame::{Header, Kind, Role, Violation, apply_mask, parse_close};
use super::opcode;

/// One thing the peer sent, as [`FrameReader::parse`] hands it over.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete message (reassembled if it came in fragments); text has
    /// been checked to be UTF-8.
    Message(Kind, &'a [u8]),
    /// A ping, to be answered with a pong carrying the same bytes.
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame, with the peer's (valid) close code, if it gave one.
    /// [`parse_close`] reads the reason from a raw close payload.
    Close(Option<u16>),
}

/// The most room a read buffer keeps once what needed more is parsed.
const KEEP_CAPACITY: usize = 64 * 1024;

/// A message that came in fragments and is not complete yet.
#[derive(Debug)]
struct Fragments {
    kind: Kind,
    data: Vec<u8>,
    /// For text: how much of `data` is known to be UTF-8, up to a
    /// character boundary (a character may continue in the next fragment).
    checked: usize,
}

impl Fragments {
    /// Checks the text added since the last check, so that a message that
    /// stops being UTF-8 fails at the fragment that breaks it, not at its
    /// end (each byte is checked once either way). On the last fragment
    /// (`fin`), a character cut off at the end breaks it too.
    fn check_utf8(&mut self, fin: bool) -> Result<(), Violation> {
        if self.kind != Kind::Text {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.checked..]) {
            Ok(_) => self.checked = self.data.len(),
            // Valid so far, with the start of a character at the end.
            Err(error) if error.error_len().is_none() && !fin => {
                self.checked += error.valid_up_to();
            }
            Err(_) => return Err(Violation::not_utf8()),
        }
        Ok(())
    }
}

/// Parses the peer's frames out of the bytes read so far.
///
/// The buffer holds only bytes not parsed yet, and gives its memory back as
/// soon as it is empty: a quiet connection holds no read buffer at all.
#[derive(Debug)]
pub struct FrameReader {
    role: Role,
    buf: Vec<u8>,
    fragments: Option<Box<Fragments>>,
}

impl Default for FrameReader {
    /// A server's reader.
    fn default() -> Self {
        FrameReader::new(Role::Server)
    }
}

impl FrameReader {
    /// A reader for an endpoint playing `role`: [`Role::Server`] reads
    /// masked client frames, [`Role::Client`] unmasked server frames.
    pub fn new(role: Role) -> Self {
        FrameReader {
            role,
            buf: Vec::new(),
            fragments: None,
        }
    }

    /// The role this reader reads for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The buffer to read into: parsing takes from its front.
    #[inline]
    pub fn buffer(&mut self) -> &mut Vec<u8> {
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
    pub fn parse<B>(
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

    /// Drops the first `n` bytes; frees the buffer once it is empty, and
    /// gives back the room a large frame needed once it is parsed (so that
    /// the next read cannot take in more than a usual chunk's worth of
    /// frames).
    fn consume(&mut self, n: usize) {
        if n >= self.buf.len() {
            self.buf = Vec::new();
        } else if n > 0 {
            self.buf.drain(..n);
            if self.buf.capacity() > KEEP_CAPACITY && self.buf.len() <= KEEP_CAPACITY / 2 {
                self.buf.shrink_to(KEEP_CAPACITY / 2);
            }
        }
    }

    /// Parses the frame at `pos`, unmasks it in place and advances `pos`
    /// past it. `None` when the frame is not complete yet.
    #[inline]
    fn next_event(&mut self, pos: &mut usize, max: usize) -> Result<Option<Step>, Violation> {
        let Some(header) = Header::parse(&self.buf[*pos..])? else {
            return Ok(None);
        };
        header.check(self.role)?;
        let len = header.payload_len;
        let held = self.fragments.as_ref().map_or(0, |f| f.data.len() as u64);
        if held.saturating_add(len) > max as u64 {
            return Err(Violation::too_big(held.saturating_add(len), max));
        }
        let start = *pos + header.header_len;
        // Fits in usize: it is at most `max`.
        let end = start + len as usize;
        if end > self.buf.len() {
            // Not all here yet. The buffer grows as bytes arrive, not as the
            // header announces: a header alone costs nothing.
            return Ok(None);
        }
        if let Some(mask) = header.mask {
            apply_mask(&mut self.buf[start..end], mask);
        }
        *pos = end;
        let payload = &self.buf[start..end];

        let kind = match header.opcode {
            opcode::TEXT | opcode::BINARY if self.fragments.is_some() => {
                return Err(Violation::protocol(
                    "a new message started before the fragmented one ended",
                ));
            }
            opcode::TEXT | opcode::BINARY => {
                let kind = if header.opcode == opcode::TEXT {
                    Kind::Text
                } else {
                    Kind::Binary
                };
                if !header.fin {
                    let mut fragments = Box::new(Fragments {
                        kind,
                        data: payload.to_vec(),
                        checked: 0,
                    });
                    fragments.check_utf8(false)?;
                    self.fragments = Some(fragments);
                    return Ok(Some(Step::Fragment));
                }
                if kind == Kind::Text && std::str::from_utf8(payload).is_err() {
                    return Err(Violation::not_utf8());
                }
                FrameKind::Message(kind)
            }
            opcode::CONTINUATION => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(Violation::protocol(
                        "continuation frame without a message to continue",
                    ));
                };
                fragments.data.extend_from_slice(payload);
                fragments.check_utf8(header.fin)?;
                if !header.fin {
                    return Ok(Some(Step::Fragment));
                }
                let fragments = self.fragments.take().expect("checked above");
                return Ok(Some(Step::Reassembled(fragments)));
            }
            opcode::PING => FrameKind::Ping,
            opcode::PONG => FrameKind::Pong,
            opcode::CLOSE => FrameKind::Close(parse_close(payload)?.map(|(code, _)| code)),
            // Header::check refuses reserved opcodes.
            op => return Err(Violation::protocol(format!("reserved opcode {op}"))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CloseCode;
    use crate::framing::frame::{
        write_close, write_control, write_frame_raw, write_masked, write_message,
    };

    use crate::framing::frame::test_frames::{KEY, client_frame, server_frame};

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
        let mut bad_split_utf8 = client_frame(0x01, &[0xe2, 0x82]);
        bad_split_utf8.extend(client_frame(0x80, &[0x28]));
        assert_eq!(violation(&bad_split_utf8).code, CloseCode::InvalidPayload);
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
    fn the_room_of_a_large_frame_is_given_back_once_it_is_parsed() {
        let mut reader = FrameReader::default();
        let mut wire = client_frame(0x82, &vec![7; 512 * 1024]);
        // The start of the next frame, not complete yet.
        wire.extend_from_slice(&client_frame(0x82, b"next")[..3]);
        let got = parse(&mut reader, &wire).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(reader.buf.len(), 3);
        assert!(
            reader.buf.capacity() <= KEEP_CAPACITY,
            "{}",
            reader.buf.capacity()
        );
    }

    #[test]
    fn fragmented_text_fails_at_the_fragment_that_breaks_utf8() {
        // Autobahn 6.4.1 and 6.4.2: the message is failed before its last
        // fragment is sent.
        for bad in [&[0xf4, 0x90, 0x80, 0x80][..], &[0xf4, 0x90], &[0xc0]] {
            let mut wire = client_frame(0x01, "κόσμε".as_bytes());
            wire.extend(client_frame(0x00, bad));
            assert_eq!(violation(&wire).code, CloseCode::InvalidPayload, "{bad:?}");
        }
        // A first fragment that is not UTF-8 is failed at once.
        assert_eq!(
            violation(&client_frame(0x01, &[b'a', 0xff])).code,
            CloseCode::InvalidPayload
        );
        // A character cut across fragments, even one byte per fragment, is fine...
        let mut wire = client_frame(0x01, b"a\xe2");
        wire.extend(client_frame(0x00, b"\x82"));
        wire.extend(client_frame(0x00, b""));
        wire.extend(client_frame(0x80, b"\xacb"));
        let mut reader = FrameReader::default();
        assert_eq!(parse(&mut reader, &wire).unwrap(), vec!["Text:a€b"]);
        // ...unless the message ends inside it.
        let mut cut = client_frame(0x01, b"a\xe2");
        cut.extend(client_frame(0x80, b"\x82"));
        assert_eq!(violation(&cut).code, CloseCode::InvalidPayload);
        // Binary fragments are never checked.
        let mut binary = client_frame(0x02, &[0xff]);
        binary.extend(client_frame(0x80, &[0xfe]));
        let mut reader = FrameReader::default();
        assert_eq!(parse(&mut reader, &binary).unwrap().len(), 1);
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
        // The largest length a header can announce, for either role.
        let mut huge = vec![0x82, 0xff];
        huge.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        huge.extend_from_slice(&KEY);
        assert_eq!(violation(&huge).code, CloseCode::TooBig);
        let mut unmasked_huge = vec![0x82, 0x7f];
        unmasked_huge.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        let mut reader = FrameReader::new(Role::Client);
        let error = parse(&mut reader, &unmasked_huge).unwrap_err();
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
    fn a_client_reads_unmasked_frames_and_refuses_masked_ones() {
        let mut reader = FrameReader::new(Role::Client);
        assert_eq!(reader.role(), Role::Client);
        let mut wire = server_frame(TEXT, b"hello");
        wire.extend(server_frame(0x02, b"a"));
        wire.extend(server_frame(0x89, b"ping"));
        wire.extend(server_frame(0x80, b"b"));
        wire.extend(server_frame(0x88, &[0x0f, 0xa0]));
        assert_eq!(
            parse(&mut reader, &wire).unwrap(),
            vec!["Text:hello", "ping:ping", "Binary:ab", "close:Some(4000)"]
        );
        assert_eq!(reader.held(), 0);
        let mut reader = FrameReader::new(Role::Client);
        let error = parse(&mut reader, &client_frame(TEXT, b"hello")).unwrap_err();
        assert_eq!(error.code, CloseCode::Protocol);
        assert_eq!(error.reason, "server frames must not be masked");
        // Every other rule holds for a client too.
        for bad in [
            server_frame(0xc1, b"x"),
            server_frame(0x83, b"x"),
            server_frame(0x09, b"x"),
            server_frame(0x80, b"x"),
            server_frame(0x88, &[3]),
        ] {
            let mut reader = FrameReader::new(Role::Client);
            assert_eq!(
                parse(&mut reader, &bad).unwrap_err().code,
                CloseCode::Protocol
            );
        }
        let mut reader = FrameReader::new(Role::Client);
        assert_eq!(
            parse(&mut reader, &server_frame(TEXT, &[0xc3, 0x28]))
                .unwrap_err()
                .code,
            CloseCode::InvalidPayload
        );
    }

    #[test]
    fn server_writers_round_trip_to_a_client_reader() {
        let mut out = Vec::new();
        write_message(&mut out, Kind::Text, b"hi");
        write_message(&mut out, Kind::Binary, &[7; 300]);
        write_message(&mut out, Kind::Binary, &[8; 70_000]);
        write_close(&mut out, 4008, &"é".repeat(100));
        write_control(&mut out, true, b"p");
        write_control(&mut out, false, b"q");
        // Frame by frame, through the headers.
        let mut at = 0;
        let mut frames = Vec::new();
        while let Some(header) = Header::parse(&out[at..]).unwrap() {
            header.check(Role::Client).unwrap();
            let start = at + header.header_len;
            at = start + header.payload_len as usize;
            frames.push((header.head(), out[start..at].to_vec()));
        }
        assert_eq!(at, out.len());
        assert_eq!(frames.len(), 6);
        assert_eq!(frames[0], (TEXT, b"hi".to_vec()));
        assert_eq!(frames[1], (BINARY, vec![7; 300]));
        assert_eq!(frames[2], (BINARY, vec![8; 70_000]));
        let (head, close) = &frames[3];
        assert_eq!(*head, 0x88);
        assert!(close.len() <= 125);
        let (code, reason) = parse_close(close).unwrap().unwrap();
        assert_eq!(code, 4008);
        assert_eq!(reason, "é".repeat(61), "cut at a character boundary");
        assert_eq!(frames[4], (0x8a, b"p".to_vec()));
        assert_eq!(frames[5], (0x89, b"q".to_vec()));
        // And through a client's reader.
        let mut reader = FrameReader::new(Role::Client);
        let seen = parse(&mut reader, &out).unwrap();
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[0], "Text:hi");
        assert_eq!(seen[3], "close:Some(4008)");
        assert_eq!(seen[4], "pong");
        assert_eq!(seen[5], "ping:q");
    }

    #[test]
    fn client_writers_round_trip_to_a_server_reader() {
        let mut out = Vec::new();
        write_masked(&mut out, TEXT, b"hi", [1, 2, 3, 4]);
        write_masked(&mut out, 0x02, &[9; 70_000], [5, 6, 7, 8]);
        write_masked(&mut out, 0x8a, b"pong", [9, 9, 9, 9]);
        write_masked(&mut out, 0x80, &[10; 3], [0, 0, 0, 0]);
        write_masked(&mut out, 0x88, &[0x03, 0xe8, b'o', b'k'], [0xff; 4]);
        let mut reader = FrameReader::new(Role::Server);
        let seen = parse(&mut reader, &out).unwrap();
        let mut binary = vec![9; 70_000];
        binary.extend([10; 3]);
        assert_eq!(
            seen,
            vec![
                "Text:hi".to_owned(),
                "pong".into(),
                format!("Binary:{}", String::from_utf8_lossy(&binary)),
                "close:Some(1000)".into()
            ]
        );
        let header = Header::parse(&out).unwrap().unwrap();
        assert_eq!(header.mask, Some([1, 2, 3, 4]));
        assert_eq!(header.check(Role::Server), Ok(()));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// A message and the frames it is sent as.
        fn message() -> impl Strategy<Value = (bool, Vec<u8>, Vec<usize>)> {
            (
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec(1usize..100, 0..4),
            )
        }

        /// The frames of `messages`, as `role`'s peer sends them, and what
        /// a reader in `role` makes of them.
        fn wire(
            messages: &[(bool, Vec<u8>, Vec<usize>)],
            role: Role,
            key: [u8; 4],
        ) -> (Vec<u8>, Vec<String>) {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for (binary, data, cuts) in messages {
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
                    let mask = (role == Role::Server).then_some(key);
                    write_frame_raw(&mut wire, fin | opcode, piece, mask);
                }
                let kind = if *binary { "Binary" } else { "Text" };
                expected.push(format!("{kind}:{}", String::from_utf8_lossy(&data)));
            }
            (wire, expected)
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..64), 0..16),
                client in any::<bool>(),
            ) {
                let role = if client { Role::Client } else { Role::Server };
                let mut reader = FrameReader::new(role);
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
                client in any::<bool>(),
                key in any::<[u8; 4]>(),
            ) {
                let role = if client { Role::Client } else { Role::Server };
                let (wire, expected) = wire(&messages, role, key);
                let at = split.index(wire.len() + 1);
                let mut reader = FrameReader::new(role);
                let mut seen = parse(&mut reader, &wire[..at]).unwrap();
                seen.extend(parse(&mut reader, &wire[at..]).unwrap());
                prop_assert_eq!(seen, expected);
                prop_assert_eq!(reader.held(), 0);
            }

        }
    }
}
