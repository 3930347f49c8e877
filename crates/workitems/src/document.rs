//! The event as work item queries and actions see it: the published event (exact, as sent)
//! with `message_id` and `transaction_label` added.

/// Appends `message_id` and `transaction_label` to the event body (a JSON object).
pub fn event_document(body: &[u8], message_id: &str, transaction_label: Option<&str>) -> Result<String, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("event body is not UTF-8: {e}"))?.trim();
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| "event body is not a JSON object".to_owned())?;
    let label = match transaction_label {
        Some(label) => serde_json::Value::from(label).to_string(),
        None => "null".to_owned(),
    };
    let separator = if inner.trim().is_empty() { "" } else { "," };
    Ok(format!(
        "{{{inner}{separator}\"message_id\":{},\"transaction_label\":{label}}}",
        serde_json::Value::from(message_id)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_the_message_id_and_label_and_keeps_the_rest_exact() {
        let doc = event_document(br#"{"table_name":"public.t","new":{"n":1.50}}"#, "0/1:2", Some("signup")).unwrap();
        assert_eq!(
            doc,
            r#"{"table_name":"public.t","new":{"n":1.50},"message_id":"0/1:2","transaction_label":"signup"}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(parsed["transaction_label"], "signup");
        let doc = event_document(b" {} ", "0/1:0", None).unwrap();
        assert_eq!(doc, r#"{"message_id":"0/1:0","transaction_label":null}"#);
        assert!(event_document(b"[1]", "x", None).is_err());
    }
}
