//! A connection's presence: its sessions on presence topics, and its
//! `presence` requests.

use std::sync::Arc;

use starling_protocol::{Envelope, ErrorCode, Filter, Topic};

use crate::connection::pending::Ask;
use crate::connection::session::Session;
use crate::presence::{self, Members};
use crate::relay::Answer;

impl<const ECHO: bool> Session<ECHO> {
    /// Starts this connection's session on the presence of `filter`, when
    /// it is a presence topic. The member is the token's `sub`, else the
    /// `name` asked for, else the connection.
    pub(super) fn enter_presence(&self, filter: &Filter, ask: Ask) -> Option<presence::Session> {
        let presence = self.broker.presence()?;
        let topic = filter.as_topic().filter(|topic| presence.covers(topic))?;
        let name: Arc<str> = match (self.auth.identity(), ask.name) {
            (Some(identity), _) => identity.sub.clone(),
            (None, Some(name)) => name.into(),
            (None, None) => format!("{}/{}", self.broker.node_id(), self.admission.id).into(),
        };
        Some(presence.enter(topic, name, ask.info))
    }

    /// Answers a `presence` request: the members of a presence topic.
    pub(super) fn presence(&mut self, id: Option<u64>, topic: Topic) {
        if !self.may_subscribe(id, &Filter::from(topic.clone())) {
            return;
        }
        let Some(presence) = self.broker.presence().filter(|p| p.covers(&topic)) else {
            let message = format!("{topic} keeps no presence (not under a --presence prefix)");
            return self.send_error(id, ErrorCode::InvalidTopic, message);
        };
        match presence.members(&topic) {
            Answer::Now(members) => self.answer_presence(id, topic, members),
            later => self.pending().presence(id, topic, later),
        }
    }

    /// Sends the answer to a `presence` request.
    pub(super) fn answer_presence(
        &mut self,
        id: Option<u64>,
        topic: Topic,
        (count, members): Members,
    ) {
        self.send(&Envelope::Presence {
            id,
            topic,
            count: Some(count),
            members,
        });
    }
}
