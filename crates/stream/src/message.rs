//! Messages of a stream: the body as an AMQP 1.0 data section, the message id, content type and
//! encoding as standard properties, and string application properties (the AMQP headers'
//! counterpart).

use std::borrow::Cow;

use rabbitmq_stream_client::types::{Message, SimpleValue};

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
        let mut properties = Message::builder().body(self.body).properties();
        if !self.message_id.is_empty() {
            properties = properties.message_id(self.message_id);
        }
        if let Some(content_type) = self.content_type.as_ref().filter(|c| !c.is_empty()) {
            properties = properties.content_type(content_type.as_ref());
        }
        if let Some(encoding) = &self.content_encoding {
            properties = properties.content_encoding(encoding.as_ref());
        }
        let mut application = properties.message_builder().application_properties();
        for (name, value) in self.application_properties {
            application = application.insert(name.into_owned(), value);
        }
        let builder = application.message_builder();
        match publishing_id {
            Some(id) => builder.publishing_id(id).build(),
            None => builder.build(),
        }
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
}
