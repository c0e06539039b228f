//! A TCP proxy on loopback that holds everything it forwards for a fixed
//! time each way, as a network between a broker and Redis would.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Forwards each connection to `127.0.0.1:<upstream>`, delayed; stops
/// accepting when dropped.
pub struct DelayProxy {
    port: u16,
    /// The delay each way, in microseconds.
    delay: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards what it accepts to
    /// `upstream`, `delay` later each way (a round trip takes twice it).
    /// A connection to an upstream that is down is closed at once, and an
    /// upstream that closes closes the client's side too.
    pub async fn start(upstream: u16, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let port = listener.local_addr().expect("bound").port();
        let delay = Arc::new(AtomicU64::new(delay.as_micros() as u64));
        let shared = delay.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let delay = shared.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        forward(client_read, server_write, delay.clone()),
                        forward(server_read, client_write, delay),
                    );
                });
            }
        });
        DelayProxy {
            port,
            delay,
            accept,
        }
    }

    /// Changes the delay each way, for what is read from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// `redis://127.0.0.1:PORT`, for a proxy in front of Redis.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to`, each chunk `delay` (microseconds) after it was
/// read, in order; closes `to` after `from` ends.
async fn forward(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Arc<AtomicU64>) {
    let (chunks, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let due = Instant::now() + Duration::from_micros(delay.load(Ordering::Relaxed));
            if chunks.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, chunk)) = due.recv().await {
            // (A timer rounds up to the next millisecond: none when due.)
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
