//! Frame opcodes (RFC 6455, 5.2): the low four bits of the first byte.

/// A continuation of a fragmented message.
pub const CONTINUATION: u8 = 0x0;
/// The first (or only) frame of a text message.
pub const TEXT: u8 = 0x1;
/// The first (or only) frame of a binary message.
pub const BINARY: u8 = 0x2;
/// A close frame.
pub const CLOSE: u8 = 0x8;
/// A ping.
pub const PING: u8 = 0x9;
/// A pong.
pub const PONG: u8 = 0xa;

/// Whether `op` is a control opcode (close, ping, pong or a reserved one).
#[inline]
pub const fn is_control(op: u8) -> bool {
    op & 0x8 != 0
}

/// Whether `op` is reserved (3-7 and 11-15): no frame may carry it.
#[inline]
pub const fn is_reserved(op: u8) -> bool {
    matches!(op, 0x3..=0x7 | 0xb..=0xf)
}
