//! What each role of the soak did, counted as it happens by all the tasks
//! of the role together (a task cut short at the end loses nothing).

use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};

use crate::stats::Tally;

/// The counts of one role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Connections opened (the broker's `welcome` arrived).
    pub(crate) connections: u64,
    /// Connections that did not open, by reason.
    pub(crate) connect_failures: Tally,
    /// Subscriptions acknowledged.
    pub(crate) subscriptions: u64,
    /// Subscriptions refused, by error code.
    pub(crate) refused: Tally,
    /// `publish` frames sent.
    pub(crate) published: u64,
    /// `ack` frames received.
    pub(crate) acks: u64,
    /// Of those, acks that carried an offset (the topic keeps history).
    pub(crate) acks_with_offset: u64,
    /// Data and close frames read.
    pub(crate) frames_read: u64,
    /// Of those, `message` frames.
    pub(crate) messages: u64,
    /// `lagged` frames.
    pub(crate) lagged_frames: u64,
    /// The sum of their `missed`.
    pub(crate) missed: u64,
    /// `error` frames, by code.
    pub(crate) errors: Tally,
    /// Close codes the broker sent of its own accord.
    pub(crate) closes: Tally,
    /// Connections that ended without a close frame from the broker, by reason.
    pub(crate) disconnects: Tally,
    /// Connections the bench closed with 1000 and the broker answered.
    pub(crate) closed_cleanly: u64,
    /// Connections the bench closed with 1000 that got no answer in time.
    pub(crate) close_unanswered: u64,
    /// Connections the bench dropped without a close frame, on purpose.
    pub(crate) dropped: u64,
    /// `subscribe` frames with `since` sent (each followed by an `unsubscribe`).
    pub(crate) replay_requests: u64,
}

impl Counts {
    /// Adds the counts of `other`.
    pub(crate) fn merge(&mut self, other: &Counts) {
        self.connections += other.connections;
        self.connect_failures.merge(&other.connect_failures);
        self.subscriptions += other.subscriptions;
        self.refused.merge(&other.refused);
        self.published += other.published;
        self.acks += other.acks;
        self.acks_with_offset += other.acks_with_offset;
        self.frames_read += other.frames_read;
        self.messages += other.messages;
        self.lagged_frames += other.lagged_frames;
        self.missed += other.missed;
        self.errors.merge(&other.errors);
        self.closes.merge(&other.closes);
        self.disconnects.merge(&other.disconnects);
        self.closed_cleanly += other.closed_cleanly;
        self.close_unanswered += other.close_unanswered;
        self.dropped += other.dropped;
        self.replay_requests += other.replay_requests;
    }

    /// One object, for the JSON summary.
    pub(crate) fn to_json(&self, tasks: u64) -> Value {
        json!({
            "tasks": tasks,
            "connections": self.connections,
            "connect_failures": self.connect_failures.to_json(),
            "subscriptions": self.subscriptions,
            "subscribe_refused": self.refused.to_json(),
            "published": self.published,
            "acks": self.acks,
            "acks_with_offset": self.acks_with_offset,
            "frames_read": self.frames_read,
            "messages": self.messages,
            "lagged_frames": self.lagged_frames,
            "missed": self.missed,
            "errors": self.errors.to_json(),
            "close_codes": self.closes.to_json(),
            "disconnects": self.disconnects.to_json(),
            "closed_cleanly": self.closed_cleanly,
            "close_unanswered": self.close_unanswered,
            "dropped": self.dropped,
            "replay_requests": self.replay_requests,
        })
    }

    /// The figures that are not zero, in words, connections first.
    pub(crate) fn line(&self) -> String {
        let mut parts = vec![format!("{} connections", self.connections)];
        let failed = self.connect_failures.total();
        let figures = [
            (failed, "failed to connect"),
            (self.subscriptions, "subscriptions"),
            (self.refused.total(), "subscriptions refused"),
            (self.published, "published"),
            (self.acks, "acked"),
            (self.replay_requests, "replay requests"),
            (self.frames_read, "frames read"),
            (self.messages, "messages"),
            (self.lagged_frames, "lagged"),
            (self.missed, "missed"),
            (self.closed_cleanly, "closed with 1000"),
            (self.close_unanswered, "close unanswered"),
            (self.dropped, "dropped"),
        ];
        parts.extend(
            figures
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, what)| format!("{n} {what}")),
        );
        parts.join(", ")
    }

    /// How the broker ended connections of this role, in words; `None`
    /// when it ended none.
    pub(crate) fn ended_by_broker(&self) -> Option<String> {
        match (self.closes.is_empty(), self.disconnects.is_empty()) {
            (true, true) => None,
            (false, true) => Some(format!("close {}", self.closes)),
            (true, false) => Some(format!("no close frame: {}", self.disconnects)),
            (false, false) => Some(format!(
                "close {}; no close frame: {}",
                self.closes, self.disconnects
            )),
        }
    }
}

/// The counts of one role, shared by its tasks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shared(Arc<Mutex<Counts>>);

impl Shared {
    /// Counts something.
    pub(crate) fn update(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The counts so far.
    pub(crate) fn snapshot(&self) -> Counts {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_what_happened() {
        let mut c = Counts {
            connections: 3,
            published: 10,
            acks: 9,
            ..Counts::default()
        };
        assert_eq!(c.line(), "3 connections, 10 published, 9 acked");
        assert_eq!(c.ended_by_broker(), None);
        c.closes.add("4008");
        assert_eq!(c.ended_by_broker().unwrap(), "close 4008: 1");
        c.disconnects.add("reset");
        assert_eq!(
            c.ended_by_broker().unwrap(),
            "close 4008: 1; no close frame: reset: 1"
        );
    }

    #[test]
    fn merged_counts_add_up() {
        let mut total = Counts {
            published: 1,
            ..Counts::default()
        };
        let mut part = Counts {
            published: 2,
            missed: 5,
            ..Counts::default()
        };
        part.closes.add("4008");
        total.merge(&part);
        total.merge(&part);
        assert_eq!((total.published, total.missed), (5, 10));
        assert_eq!(total.closes.to_string(), "4008: 2");
    }

    #[test]
    fn shared_counts_add_up() {
        let shared = Shared::default();
        let other = shared.clone();
        shared.update(|c| c.frames_read += 2);
        other.update(|c| c.frames_read += 3);
        assert_eq!(shared.snapshot().frames_read, 5);
        assert_eq!(shared.snapshot().to_json(1)["frames_read"], 5);
    }
}
