//! Presence: who is subscribed to a topic on which the broker keeps it.

use starling_protocol::Member;

/// The answer to [`Client::presence`](crate::Client::presence).
#[derive(Debug, Clone, PartialEq)]
pub struct Presence {
    /// How many members the topic has.
    pub count: u64,
    /// The members (at most 1,000), each with its number of sessions and
    /// the `info` of its newest; in no particular order.
    pub members: Vec<Member>,
}
