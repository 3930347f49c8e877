//! A job: one action to run for one parameters row of one work item and event.

use pgevents_event::Action;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// What every action run gets to know about the event, besides the parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInfo {
    /// `schema.table`.
    pub table_name: String,
    pub action: Action,
    pub lsn: String,
    pub commit_time: String,
    pub message_id: String,
}

/// One action to run; also the body of a work message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// `event message id/work item/row`: the same for every attempt and redelivery.
    pub idempotency_key: String,
    pub work_item: String,
    /// The action's name.
    pub action: String,
    /// Which parameters row of the work item's query (from 0).
    pub row: usize,
    /// What the work item's query returned for this row.
    pub parameters: Map<String, Value>,
    pub event: EventInfo,
    /// The whole event as the query saw it (with `message_id`, `context` and
    /// `transaction_label`); `$2` of SQL actions.
    pub event_json: Box<RawValue>,
    /// Set by `pgevents requeue-dead`: run the job again although it died, with a fresh
    /// attempt budget.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revive: bool,
}

impl Job {
    /// The idempotency key of row `row` of `work_item` for the event `message_id`.
    pub fn key(message_id: &str, work_item: &str, row: usize) -> String {
        format!("{message_id}/{work_item}/{row}")
    }

    /// The action's static parameters overlaid with this job's (the job's values win).
    pub fn merged_parameters(&self, static_parameters: &Map<String, Value>) -> Map<String, Value> {
        let mut merged = static_parameters.clone();
        for (name, value) in &self.parameters {
            merged.insert(name.clone(), value.clone());
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(parameters: Value) -> Job {
        Job {
            idempotency_key: Job::key("0/1:0", "welcome", 0),
            work_item: "welcome".into(),
            action: "mail".into(),
            row: 0,
            parameters: parameters.as_object().cloned().unwrap_or_default(),
            event: EventInfo {
                table_name: "public.users".into(),
                action: Action::Insert,
                lsn: "0/1".into(),
                commit_time: "2026-11-23T00:00:00Z".into(),
                message_id: "0/1:0".into(),
            },
            event_json: RawValue::from_string("{\"a\": 1.000}".into()).unwrap(),
            revive: false,
        }
    }

    #[test]
    fn query_parameters_win_over_static_ones() {
        let statics = json!({"from": "noreply@example.com", "template": "default"});
        let merged =
            job(json!({"template": "welcome", "to": "a@example.com"})).merged_parameters(statics.as_object().unwrap());
        assert_eq!(
            Value::Object(merged),
            json!({"from": "noreply@example.com", "template": "welcome", "to": "a@example.com"})
        );
    }

    #[test]
    fn round_trips_as_a_work_message_with_the_event_text_intact() {
        let original = job(json!({"n": 1}));
        let text = serde_json::to_string(&original).unwrap();
        let back: Job = serde_json::from_str(&text).unwrap();
        assert_eq!(back.idempotency_key, "0/1:0/welcome/0");
        assert_eq!(back.event_json.get(), "{\"a\": 1.000}");
        assert_eq!(back.event, original.event);
    }
}
