//! Subscribing on a connection that is about to move to the epoll loop,
//! without losing a byte.
//!
//! A WebSocket library reads ahead: whatever arrived with the last `ack`
//! (a presence `join` sent right after it, the first messages of a busy
//! topic) would sit in its buffer and be lost when the socket is taken
//! from it, leaving the loop to parse the middle of a frame. So once the
//! handshake and `welcome` are done (the broker sends nothing more until
//! the client speaks), the socket is taken from the library, the subscribes
//! are written as masked frames, and the answers are read with the loop's
//! own parser; the bytes after the last answer go to the loop with the
//! socket.

use starling_protocol::framing::{self, FIN, opcode};
use starling_protocol::{Codec, Envelope, Filter, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::MaybeTlsStream;

use crate::stats::now_ns;
use crate::wire::{self, Masks};
use crate::ws::{STEP_TIMEOUT, Subscribed};

/// Subscribes to `topics` on `stream` (taken from the library after
/// `welcome`). Returns the answers and the bytes read after the last one.
pub(crate) async fn subscribe(
    stream: &mut MaybeTlsStream<TcpStream>,
    codec: Codec,
    topics: &[&str],
) -> Result<(Subscribed, Vec<u8>), String> {
    let mut masks = Masks::new(now_ns());
    let mut out = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        let envelope = Envelope::Subscribe {
            name: None,
            info: None,
            epoch: None,
            id: Some(i as u64 + 1),
            topic: Filter::new(topic).map_err(|e| format!("bad topic {topic:?}: {e}"))?,
            since: None,
        };
        let (head, payload) = match codec.encode(&envelope) {
            Ok(Frame::Text(text)) => (FIN | opcode::TEXT, text.into_bytes()),
            Ok(Frame::Binary(bytes)) => (FIN | opcode::BINARY, bytes),
            Err(e) => return Err(format!("cannot encode subscribe: {e}")),
        };
        framing::write_masked(&mut out, head, &payload, masks.next());
    }
    let io = |e: std::io::Error| format!("io: {e}");
    stream.write_all(&out).await.map_err(io)?;
    stream.flush().await.map_err(io)?;

    let mut answers = Subscribed::default();
    let mut buf = Vec::new();
    let mut chunk = vec![0; 16 * 1024];
    let mut at = 0;
    while answers.count() < topics.len() {
        // Every complete frame in the buffer, up to the last answer.
        while answers.count() < topics.len() {
            let rest = &buf[at..];
            let Some((header, len)) =
                wire::parse_header(rest).map_err(|v| format!("protocol: {}", v.reason))?
            else {
                break;
            };
            if rest.len() < len {
                break;
            }
            let payload = &rest[header.header_len..len];
            at += len;
            match header.opcode {
                opcode::CLOSE => return Err("closed while subscribing".to_owned()),
                opcode::TEXT | opcode::BINARY if header.fin => {
                    if let Ok(envelope) = codec.decode_bytes(payload) {
                        answers.answer(envelope, topics.len());
                    }
                }
                // Pings, pongs and fragments are not answers.
                _ => {}
            }
        }
        if answers.count() == topics.len() {
            break;
        }
        let n = timeout(STEP_TIMEOUT, stream.read(&mut chunk))
            .await
            .map_err(|_| "subscribe not answered within 10 s".to_owned())?
            .map_err(io)?;
        if n == 0 {
            return Err("closed while subscribing".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((answers, buf.split_off(at)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::framing::Kind;
    use starling_protocol::{Payload, Topic};
    use tokio::net::TcpListener;

    fn server_frame(codec: Codec, envelope: &Envelope) -> Vec<u8> {
        let mut out = Vec::new();
        match codec.encode(envelope).unwrap() {
            Frame::Text(text) => framing::write_message(&mut out, Kind::Text, text.as_bytes()),
            Frame::Binary(bytes) => framing::write_message(&mut out, Kind::Binary, &bytes),
        }
        out
    }

    /// What arrives with the last answer (a whole frame and the start of
    /// another) is handed over, not lost.
    #[tokio::test]
    async fn bytes_after_the_last_answer_are_handed_over() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let codec = Codec::Json;
        let join = server_frame(
            codec,
            &Envelope::Join {
                topic: Topic::new("chat.a").unwrap(),
                member: starling_protocol::Member {
                    name: "ada".into(),
                    sessions: None,
                    info: None,
                },
            },
        );
        let message = server_frame(
            codec,
            &Envelope::Message {
                topic: Topic::new("chat.a").unwrap(),
                payload: Payload::from_json("1").unwrap(),
                offset: None,
                epoch: None,
                sub: None,
                from: None,
            },
        );
        let mut after = join.clone();
        after.extend_from_slice(&message[..5]);
        let sent = after.clone();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let _ = socket.read(&mut buf).await.unwrap();
            let mut reply = server_frame(
                codec,
                &Envelope::Ack {
                    id: 1,
                    offset: None,
                    epoch: None,
                },
            );
            reply.extend_from_slice(&sent);
            socket.write_all(&reply).await.unwrap();
            socket
        });
        let mut stream = MaybeTlsStream::Plain(TcpStream::connect(addr).await.unwrap());
        let (answers, carry) = subscribe(&mut stream, codec, &["chat.a"]).await.unwrap();
        assert_eq!(answers.acked, [0]);
        assert_eq!(carry, after);
        drop(server.await.unwrap());
    }
}
