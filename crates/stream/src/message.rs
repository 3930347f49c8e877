//! Messages of a stream: the body as an AMQP 1.0 data section, the message id, content type and
//! encoding as standard properties, and string application properties (the AMQP headers'
//! counterpart).

use std::borrow::Cow;

use rabbitmq_stream_client::types::{Message, SimpleValue};
use rabbitmq_stream_protocol::message::Properties;

/// One message to publish to a stream (an empty message id is left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingStreamMessage {
    pub body: Vec<u8>,
    pub message_id: String,
    pub content_type: Option<Cow<'static, str>>,
    pub content_encoding: Option<Cow<'static, str>>,
    pub application_properties: Vec<(Cow<'static, str>, String)>,
}

impl OutgoingStreamMessage {
    /// The client library's message, with `publishing_id` when the caller numbers messages.
    pub(crate) fn into_message(self, publishing_id: Option<u64>) -> Message {
        let content_type = self.content_type.filter(|c| !c.is_empty());
        let properties = (!self.message_id.is_empty() || content_type.is_some() || self.content_encoding.is_some())
            .then(|| Properties {
                message_id: (!self.message_id.is_empty()).then(|| self.message_id.into()),
                content_type: content_type.map(|c| c.as_ref().into()),
                content_encoding: self.content_encoding.map(|e| e.as_ref().into()),
                ..Properties::default()
            });
        let application = self
            .application_properties
            .into_iter()
            .map(|(name, value)| (name.into_owned(), SimpleValue::String(value)));
        // Built in place: the client library's builder moves the whole message at each step
        // (vendor/README.md, rabbitmq-stream-protocol).
        Message::with_data(publishing_id, self.body, properties, application)
    }
}

/// An application property of a read message, as text (strings, symbols and numbers).
pub fn property(message: &Message, name: &str) -> Option<String> {
    text(message.application_properties()?.get(name)?)
}

/// Every application property of a read message that reads as text, by name.
pub fn properties(message: &Message) -> Vec<(String, String)> {
    let Some(all) = message.application_properties() else { return Vec::new() };
    let mut pairs: Vec<(String, String)> =
        all.iter().filter_map(|(name, value)| Some((name.clone(), text(value)?))).collect();
    pairs.sort();
    pairs
}

fn text(value: &SimpleValue) -> Option<String> {
    match value {
        SimpleValue::String(s) => Some(s.clone()),
        SimpleValue::Symbol(s) => Some(s.to_string()),
        SimpleValue::Ulong(n) => Some(n.to_string()),
        SimpleValue::Long(n) => Some(n.to_string()),
        SimpleValue::Uint(n) => Some(n.to_string()),
        SimpleValue::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_survive_the_message() {
        let outgoing = OutgoingStreamMessage {
            body: b"{}".to_vec(),
            message_id: "0/16B3748:3".into(),
            content_type: Some("application/json".into()),
            content_encoding: None,
            application_properties: vec![("table".into(), "public.t".into()), ("lsn".into(), "0/16B3748".into())],
        };
        let message = outgoing.into_message(Some(7));
        assert_eq!(message.publishing_id(), Some(&7));
        assert_eq!(message.data(), Some(&b"{}"[..]));
        assert_eq!(property(&message, "table").as_deref(), Some("public.t"));
        assert_eq!(property(&message, "lsn").as_deref(), Some("0/16B3748"));
        assert_eq!(property(&message, "nope"), None);
        let names: Vec<String> = properties(&message).into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["lsn", "table"]);
    }

    /// The message built in place is the one the client library's builder makes, with every
    /// property or without any.
    #[test]
    fn the_message_is_the_builders() {
        let full = OutgoingStreamMessage {
            body: b"{\"a\":1}".to_vec(),
            message_id: "0/16B3748:3".into(),
            content_type: Some("application/json".into()),
            content_encoding: Some("gzip".into()),
            application_properties: vec![("table".into(), "public.t".into()), ("action".into(), "I".into())],
        };
        let builders = Message::builder()
            .body(full.body.clone())
            .properties()
            .message_id(full.message_id.clone())
            .content_type("application/json")
            .content_encoding("gzip")
            .message_builder()
            .application_properties()
            .insert("table", "public.t")
            .insert("action", "I")
            .message_builder()
            .publishing_id(9)
            .build();
        assert_eq!(full.into_message(Some(9)), builders);
        let bare = OutgoingStreamMessage { body: b"x".to_vec(), ..Default::default() };
        assert_eq!(bare.into_message(None), Message::builder().body(b"x".to_vec()).build());
    }
}
