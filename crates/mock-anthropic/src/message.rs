//! The shape of a generated message: text, usage, and the JSON of a non-streaming response.

use serde_json::{json, Value};

/// Generated text is a cycle of these words, one per token, about 4 characters each so that
/// feeding the output back as input costs roughly what it cost as output.
const WORDS: [&str; 8] = [
    "The ", "mock ", "says ", "hi, ", "and ", "then ", "some ", "more. ",
];

/// The text of token `i` (0-based).
pub fn token_text(i: u64) -> &'static str {
    WORDS[(i % WORDS.len() as u64) as usize]
}

/// What one Messages call will produce.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// `max_tokens` when the wanted length was cut by `max_tokens`, else `end_turn`.
    pub stop_reason: &'static str,
}

impl Plan {
    /// The `usage` object: the same fields in non-streaming responses and `message_start`.
    pub fn usage(&self, output_tokens: u64) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": output_tokens,
            "service_tier": "standard",
        })
    }

    /// `content` text for `n` tokens.
    pub fn text(n: u64) -> String {
        (0..n).map(token_text).collect()
    }

    /// A complete non-streaming response body.
    pub fn response(&self) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": Self::text(self.output_tokens)}],
            "stop_reason": self.stop_reason,
            "stop_sequence": null,
            "usage": self.usage(self.output_tokens),
        })
    }
}
