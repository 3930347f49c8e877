//! Giving a message up without losing it: a copy with the reason (`error` header) and the
//! number of deliveries (`deliveries` header) goes to the dead-letter exchange, and only once
//! RabbitMQ has confirmed the copy is the original acknowledged. If the copy cannot be published
//! the original is rejected, so the broker dead-letters it itself (through the queue's
//! `x-dead-letter-exchange`), without the reason but not lost.

use std::borrow::Cow;

use pgevents_amqp::{Brokers, ConfirmedSender, Delivery};

/// Longest `error` header kept (a reason can quote a whole response body).
const MAX_REASON_BYTES: usize = 4096;

/// How to settle a delivery with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Back to the queue.
    Requeue,
    /// To the queue's dead-letter exchange (or dropped when it has none).
    Reject,
}

/// Where given-up messages go.
pub struct DeadLetters {
    target: Option<(String, ConfirmedSender)>,
}

impl DeadLetters {
    /// Copies go to `exchange` over a connection of their own; `None`: given-up messages are
    /// rejected (and dropped, as the queue has no dead-letter exchange).
    pub fn new(url: &Brokers, exchange: Option<&str>, connection_name: &str) -> DeadLetters {
        let target = exchange.map(|exchange| {
            let name = format!("{connection_name} (dead letters)");
            (exchange.to_owned(), ConfirmedSender::to_exchange(url.clone(), exchange, &name, 16))
        });
        DeadLetters { target }
    }

    /// Dead-letters `delivery` with `reason`; returns how to settle the original.
    pub async fn give_up(&self, delivery: &Delivery, reason: &str, deliveries: u32) -> Settle {
        let Some((exchange, sender)) = &self.target else {
            tracing::warn!(message_id = ?delivery.message_id(), %reason, "giving up a message; no dead-letter exchange is configured, so it is dropped");
            return Settle::Reject;
        };
        let headers =
            vec![(Cow::Borrowed("error"), truncated(reason)), (Cow::Borrowed("deliveries"), deliveries.to_string())];
        match sender.send(delivery.copy_to(exchange, headers)).await {
            Ok(()) => {
                tracing::warn!(message_id = ?delivery.message_id(), %reason, deliveries, %exchange, "gave up a message: dead-lettered");
                Settle::Ack
            }
            Err(e) => {
                tracing::warn!(message_id = ?delivery.message_id(), %reason, error = %e, "could not publish the dead-letter copy; rejecting the message so the broker dead-letters it without the reason");
                Settle::Reject
            }
        }
    }
}

fn truncated(reason: &str) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.to_owned();
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &reason[..end], reason.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        assert_eq!(truncated("short"), "short");
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = truncated(&long);
        assert!(cut.len() < MAX_REASON_BYTES + 40, "{}", cut.len());
        assert!(cut.ends_with(&format!("({} bytes in all)", long.len())));
    }
}
