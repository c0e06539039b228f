//! Per-connection inbound rate limiting: a token bucket.

use tokio::time::Instant;

/// What the limiter says about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the allowance.
    Allow,
    /// Over the allowance: answer `rate_limited`.
    Deny,
    /// Over it for a whole second's worth of frames: close with 4029.
    Disconnect,
}

/// A token bucket of `rate` frames per second with a burst of one second.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    tokens: f64,
    refilled: Instant,
    denied: u32,
}

impl RateLimiter {
    pub(crate) fn new(rate: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            refilled: Instant::now(),
            denied: 0,
        }
    }

    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            if self.tokens >= self.rate / 2.0 {
                self.denied = 0;
            }
            return Verdict::Allow;
        }
        self.denied += 1;
        if f64::from(self.denied) > self.rate.max(10.0) {
            Verdict::Disconnect
        } else {
            Verdict::Deny
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_the_rate_then_denies_then_disconnects() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10);
        for _ in 0..10 {
            assert_eq!(limiter.check(start), Verdict::Allow);
        }
        for _ in 0..10 {
            assert_eq!(limiter.check(start), Verdict::Deny);
        }
        assert_eq!(limiter.check(start), Verdict::Disconnect);
    }

    #[test]
    fn refills_over_time() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10);
        for _ in 0..10 {
            limiter.check(start);
        }
        assert_eq!(limiter.check(start), Verdict::Deny);
        assert_eq!(
            limiter.check(start + Duration::from_millis(200)),
            Verdict::Allow
        );
    }
}
