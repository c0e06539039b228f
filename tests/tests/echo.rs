//! The echo mode of `starling_broker::internals::echo_broker`, which the
//! Autobahn TestSuite runs against (docs/conformance.md): messages come back
//! as they came, through the broker's own handshake, framing and connection
//! loop.

use std::net::SocketAddr;
use std::time::Duration;

use starling_broker::Config;
use starling_tests::{RawFrame, RawWs, within};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An echo broker on `127.0.0.1:0` with `max_message_bytes` raised as the
/// `echo` example does; its address, and what stops it.
async fn echo_broker() -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
    let mut config = Config::ephemeral();
    config.max_message_bytes = 64 << 20;
    let listener = starling_broker::bind(config.listen, 128).expect("bind");
    let addr = listener.local_addr().unwrap();
    let broker = starling_broker::internals::echo_broker(config).expect("echo broker");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let signal = async move {
            let _ = stopped.await;
        };
        starling_broker::serve(listener, broker, signal)
            .await
            .expect("serves");
    });
    (addr, stop, task)
}

/// Connects by hand; an echo connection starts with no `welcome`.
async fn connect(addr: SocketAddr) -> RawWs {
    let (answer, raw) = RawWs::handshake(addr, None).await;
    assert_eq!(answer.status, 101, "{answer:?}");
    raw
}

fn frame(head: u8, payload: &[u8]) -> RawFrame {
    RawFrame {
        head,
        payload: payload.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_come_back_as_they_came() {
    let (addr, stop, task) = echo_broker().await;
    let mut raw = connect(addr).await;
    raw.send_frame(0x81, "héllo".as_bytes(), true).await;
    raw.send_frame(0x82, &[0, 0xff, 7], true).await;
    // Not an envelope: echoed all the same, not answered with an error.
    raw.send_frame(0x81, b"{\"type\":\"ping\"", true).await;
    // A fragmented message, with a ping in the middle, comes back whole
    // after the pong.
    raw.send_frame(0x01, b"frag", true).await;
    raw.send_frame(0x89, b"p", true).await;
    raw.send_frame(0x00, b"men", true).await;
    raw.send_frame(0x80, b"ted", true).await;
    raw.send_frame(0x81, b"", true).await;
    let expected = [
        frame(0x81, "héllo".as_bytes()),
        frame(0x82, &[0, 0xff, 7]),
        frame(0x81, b"{\"type\":\"ping\""),
        frame(0x8a, b"p"),
        frame(0x81, b"fragmented"),
        frame(0x81, b""),
    ];
    for want in expected {
        assert_eq!(raw.read_frame().await, Some(want));
    }
    // The close handshake: the peer's code comes back.
    raw.send_frame(0x88, &[0x0f, 0xa0, b'b', b'y', b'e'], true)
        .await;
    assert_eq!(raw.read_frame().await, Some(frame(0x88, &[0x0f, 0xa0])));
    assert_eq!(
        raw.read_frame().await,
        None,
        "then the broker ends the stream"
    );
    let _ = stop.send(());
    within("echo broker stops", task).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn text_that_is_not_utf8_fails_with_1007_at_its_first_bad_fragment() {
    let (addr, stop, task) = echo_broker().await;
    let mut raw = connect(addr).await;
    // The message never ends: the second fragment alone breaks it.
    raw.send_frame(0x01, "κόσμε".as_bytes(), true).await;
    raw.send_frame(0x00, &[0xf4, 0x90], true).await;
    let (code, reason, before) = raw.recv_close().await;
    assert_eq!((code, before), (1007, vec![]), "{reason}");
    let _ = stop.send(());
    within("echo broker stops", task).await.unwrap();
}

/// A message far larger than the outbound bound and the socket buffers,
/// read late: its echo is written over many turns of the connection loop,
/// during which nothing is read (the outbound buffer is full). Once it is
/// all written, the connection must read again by itself: the next message
/// is echoed too.
#[tokio::test(flavor = "multi_thread")]
async fn reading_resumes_after_a_large_echo_is_written() {
    let (addr, stop, task) = echo_broker().await;
    let mut raw = connect(addr).await;
    let large: Vec<u8> = (0..16 << 20).map(|i| (i % 251) as u8).collect();
    for sent_before_reading in [false, true] {
        raw.send_frame(0x82, &large, true).await;
        if sent_before_reading {
            raw.send_frame(0x81, b"next", true).await;
        }
        // The socket buffers fill up before anything is read.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let echo = raw.read_frame().await.expect("the large echo");
        assert_eq!(echo.head, 0x82);
        assert!(echo.payload == large, "the large echo is whole");
        if !sent_before_reading {
            raw.send_frame(0x81, b"next", true).await;
        }
        assert_eq!(raw.read_frame().await, Some(frame(0x81, b"next")));
    }
    let _ = stop.send(());
    within("echo broker stops", task).await.unwrap();
}
