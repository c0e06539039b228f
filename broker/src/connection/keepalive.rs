//! A connection's timers: WebSocket pings to a quiet peer, the idle
//! timeout, the write timeout of a socket that takes nothing, and the
//! expiry of its token.

use std::time::Duration;

use starling_protocol::CloseCode;
use tokio::time::Instant;

use crate::config::Config;
use crate::connection::exit::Exit;
use crate::connection::outbox::Outbox;
use starling_protocol::framing;

/// When the peer was last heard from and pinged, and since when the
/// outbound buffer has been full.
#[derive(Debug)]
pub(crate) struct Keepalive {
    pub(crate) last_seen: Instant,
    last_ping: Instant,
    stalled_since: Option<Instant>,
}

impl Keepalive {
    pub(crate) fn new(now: Instant) -> Self {
        Keepalive {
            last_seen: now,
            last_ping: now,
            stalled_since: None,
        }
    }

    /// Notes when the outbound buffer fills up (`room` false) and when it
    /// has room again. Returns whether that changed.
    pub(crate) fn track_stall(&mut self, room: bool) -> bool {
        match (room, self.stalled_since) {
            (false, None) => self.stalled_since = Some(Instant::now()),
            (true, Some(_)) => self.stalled_since = None,
            _ => return false,
        }
        true
    }

    /// The next time the connection must check on its peer (or on its
    /// token, which expires at `token_expires`).
    pub(crate) fn next_deadline(&self, config: &Config, token_expires: Option<Instant>) -> Instant {
        let ping = Duration::from_millis(config.ping_interval_ms);
        let idle = Duration::from_millis(config.idle_timeout_ms);
        let mut deadline = Instant::now() + Duration::from_secs(3600);
        if !ping.is_zero() {
            deadline = deadline.min(self.last_ping + ping);
        }
        if !idle.is_zero() {
            deadline = deadline.min(self.last_seen + idle);
        }
        if let Some(since) = self.stalled_since {
            deadline = deadline.min(since + config.write_timeout());
        }
        if let Some(expires) = token_expires {
            deadline = deadline.min(expires);
        }
        deadline
    }

    /// Keepalive and stall checks, when the timer fires: a ping (into
    /// `out`) for a quiet peer, or why the connection must end.
    pub(crate) fn on_timer(
        &mut self,
        config: &Config,
        out: &mut Outbox,
        token_expires: Option<Instant>,
    ) -> Option<Exit> {
        let ping = Duration::from_millis(config.ping_interval_ms);
        let idle = Duration::from_millis(config.idle_timeout_ms);
        let now = Instant::now();
        if token_expires.is_some_and(|expires| now >= expires) {
            return Some(Exit::close(
                CloseCode::Policy,
                "unauthorized: token expired",
            ));
        }
        if let Some(since) = self.stalled_since
            && now >= since + config.write_timeout()
        {
            return Some(Exit::close(
                CloseCode::SlowConsumer,
                "slow consumer: the socket took nothing within the write timeout",
            ));
        }
        if !idle.is_zero() && now >= self.last_seen + idle {
            return Some(Exit::close(
                CloseCode::IdleTimeout,
                "idle timeout: no frame or pong from the client",
            ));
        }
        if !ping.is_zero() && now >= self.last_ping + ping {
            self.last_ping = now;
            if now >= self.last_seen + ping {
                framing::write_control(&mut out.buf, false, &[]);
            }
        }
        None
    }
}
