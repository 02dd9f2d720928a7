//! The real token usage of a Messages response, read as its body streams through.
//!
//! The token-fair policy charges agents what the upstream says their requests consumed,
//! never a guess. The upstream reports it in two shapes:
//!
//! * a JSON message (`stream: false`): a top-level `usage` object, the final figures;
//! * server-sent events (`stream: true`): `message_start.message.usage` (input tokens,
//!   output 1) as the stream opens, then `message_delta.usage`, cumulative, whose last holds
//!   the final output count.
//!
//! [`UsageScanner`] reads either incrementally, one body frame at a time, without holding
//! frames back or copying the body: it only keeps the bytes of the event (or object) that
//! carries the usage, at most [`MAX_CARRY`] of them. Events may be split anywhere across
//! frames. Bodies it cannot read cheaply (a `content-encoding`, an error status, another
//! content type) are not scanned and report no usage, so their requests are charged nothing.

use std::io::Write;

use flate2::write::GzDecoder;
use http::{header, HeaderMap, StatusCode};
use serde_json::Value;

/// Weight of one input token in a fair-share counter: `input_tokens` and
/// `cache_creation_input_tokens` both count (they are what the input rate limit counts);
/// `cache_read_input_tokens` do not, as they do not count against current models' limits.
pub const INPUT_WEIGHT: u64 = 1;

/// Weight of one output token: generating costs more than reading, and the output limit is
/// usually the tighter one. 2, as in the Virtual Token Counter paper (Sheng et al., OSDI 2024).
pub const OUTPUT_WEIGHT: u64 = 2;

/// The most bytes kept from one event (or one JSON `usage` object) while it is incomplete.
/// Usage-bearing events are a few hundred bytes; anything longer is skipped unread.
pub const MAX_CARRY: usize = 64 * 1024;

/// Token counts of one response, as far as the upstream has reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    /// Reads a `usage` object leniently: missing, null or non-integer fields count as 0.
    pub fn from_json(value: &Value) -> Usage {
        let field = |name: &str| value.get(name).and_then(Value::as_u64).unwrap_or(0);
        Usage {
            input_tokens: field("input_tokens"),
            cache_creation_input_tokens: field("cache_creation_input_tokens"),
            cache_read_input_tokens: field("cache_read_input_tokens"),
            output_tokens: field("output_tokens"),
        }
    }

    /// What the request costs in a fair-share counter: see [`INPUT_WEIGHT`], [`OUTPUT_WEIGHT`].
    pub fn cost(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cache_creation_input_tokens)
            .saturating_mul(INPUT_WEIGHT)
            .saturating_add(self.output_tokens.saturating_mul(OUTPUT_WEIGHT))
    }

    /// Folds in a later report. Stream figures are cumulative, so each field keeps its
    /// largest value (a later event that leaves a field out or zero does not erase it).
    fn merge(&mut self, later: Usage) {
        self.input_tokens = self.input_tokens.max(later.input_tokens);
        self.cache_creation_input_tokens = self
            .cache_creation_input_tokens
            .max(later.cache_creation_input_tokens);
        self.cache_read_input_tokens = self
            .cache_read_input_tokens
            .max(later.cache_read_input_tokens);
        self.output_tokens = self.output_tokens.max(later.output_tokens);
    }
}

/// Reads usage out of a response body as it passes. Feed it every data frame, in order.
#[derive(Debug)]
pub struct UsageScanner {
    mode: Mode,
    usage: Usage,
    /// For a gzip body: inflates a copy of each frame for the scan (the frames the client
    /// gets are never touched). SDKs ask for gzip, so without this their non-streaming calls
    /// would go uncharged.
    gunzip: Option<Box<GzDecoder<Vec<u8>>>>,
}

#[derive(Debug)]
enum Mode {
    /// Not scanned, or nothing more to learn.
    Off,
    Sse(SseScan),
    Json(JsonScan),
}

impl UsageScanner {
    /// Scans nothing and reports no usage.
    pub fn off() -> UsageScanner {
        UsageScanner {
            mode: Mode::Off,
            usage: Usage::default(),
            gunzip: None,
        }
    }

    /// A scanner for server-sent events.
    pub fn sse() -> UsageScanner {
        UsageScanner {
            mode: Mode::Sse(SseScan::default()),
            usage: Usage::default(),
            gunzip: None,
        }
    }

    /// A scanner for a JSON message.
    pub fn json() -> UsageScanner {
        UsageScanner {
            mode: Mode::Json(JsonScan::default()),
            usage: Usage::default(),
            gunzip: None,
        }
    }

    /// The scanner fitting a response: SSE or JSON for a 2xx with an identity encoding,
    /// otherwise none.
    pub fn for_response(status: StatusCode, headers: &HeaderMap) -> UsageScanner {
        if !status.is_success() {
            return UsageScanner::off();
        }
        let encodings: Vec<&[u8]> = headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&b| b == b','))
            .map(|coding| coding.trim_ascii())
            .filter(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity"))
            .collect();
        let gzip = match encodings.as_slice() {
            [] => false,
            [only]
                if only.eq_ignore_ascii_case(b"gzip") || only.eq_ignore_ascii_case(b"x-gzip") =>
            {
                true
            }
            // br, zstd, deflate or a chain: not worth a decoder here; charge nothing.
            _ => return UsageScanner::off(),
        };
        let mut scanner = Self::for_content_type(headers);
        if gzip && scanner.is_scanning() {
            scanner.gunzip = Some(Box::new(GzDecoder::new(Vec::new())));
        }
        scanner
    }

    fn for_content_type(headers: &HeaderMap) -> UsageScanner {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(|value| value.trim_start().to_ascii_lowercase())
            .unwrap_or_default();
        if content_type.starts_with("text/event-stream") {
            UsageScanner::sse()
        } else if content_type.starts_with("application/json") {
            UsageScanner::json()
        } else {
            UsageScanner::off()
        }
    }

    /// Whether frames still need to be fed.
    pub fn is_scanning(&self) -> bool {
        !matches!(self.mode, Mode::Off)
    }

    /// Scans the next chunk of the body. Returns whether the usage changed.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        let scanning = self.is_scanning();
        let Some(gunzip) = self.gunzip.as_mut() else {
            return self.feed_plain(chunk);
        };
        // flush(): the decoder otherwise keeps the newest output buffered until the next write.
        if !scanning
            || gunzip
                .write_all(chunk)
                .and_then(|()| gunzip.flush())
                .is_err()
        {
            // A broken gzip stream is the client's to notice; the scan just stops.
            self.gunzip = None;
            self.mode = Mode::Off;
            return false;
        }
        let inflated = std::mem::take(gunzip.get_mut());
        let changed = self.feed_plain(&inflated);
        if let Some(gunzip) = self.gunzip.as_mut() {
            // Hand the buffer back so its allocation is reused.
            let mut buffer = inflated;
            buffer.clear();
            *gunzip.get_mut() = buffer;
        }
        if !self.is_scanning() {
            self.gunzip = None;
        }
        changed
    }

    fn feed_plain(&mut self, chunk: &[u8]) -> bool {
        let before = self.usage;
        match &mut self.mode {
            Mode::Off => return false,
            Mode::Sse(scan) => scan.feed(chunk, &mut self.usage),
            Mode::Json(scan) => {
                if scan.feed(chunk, &mut self.usage) {
                    // The top-level usage is the final word: nothing more to read.
                    self.mode = Mode::Off;
                }
            }
        }
        self.usage != before
    }

    /// The usage reported so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }
}

/// Longest SSE field name kept (`event`, `data`, `id`, `retry`); longer ones are ignored.
const MAX_FIELD: usize = 8;
/// Longest event name kept; the ones that matter are `message_start` and `message_delta`.
const MAX_EVENT_NAME: usize = 32;

#[derive(Debug, Default)]
struct SseScan {
    line: LinePart,
    /// The field name of the current line so far.
    field: Vec<u8>,
    /// The `event:` name of the current event, if any (empty when absent).
    event: Vec<u8>,
    /// The event name is too long to be one we read.
    event_overlong: bool,
    /// `data:` of the current event, lines joined by `\n`.
    data: Vec<u8>,
    /// The current event passed [`MAX_CARRY`]: its data is dropped, the next event is read.
    data_overflow: bool,
    /// The previous byte was a `\r`, so a `\n` right after it ends nothing.
    after_cr: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum LinePart {
    /// Reading the field name (the line so far has no `:`).
    #[default]
    Field,
    /// Just after the `:`: one space, if there, is not part of the value.
    ValueStart(Target),
    Value(Target),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Event,
    Data,
    /// A field that is not read (comments, `id`, `retry`, skipped data).
    Skip,
}

impl SseScan {
    fn feed(&mut self, mut chunk: &[u8], usage: &mut Usage) {
        loop {
            // Skipped values (most of a stream: content deltas) are passed over in one go.
            if self.line == LinePart::Value(Target::Skip) {
                match chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
                    Some(end) => chunk = &chunk[end..],
                    None => return,
                }
            }
            let Some((&byte, rest)) = chunk.split_first() else {
                return;
            };
            chunk = rest;
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    self.end_line(usage);
                }
                _ => self.push(byte),
            }
        }
    }

    fn push(&mut self, byte: u8) {
        match self.line {
            LinePart::Field if byte == b':' => {
                let target = match self.field.as_slice() {
                    b"event" => Target::Event,
                    b"data" if self.wants_data() => Target::Data,
                    _ => Target::Skip,
                };
                self.line = LinePart::ValueStart(target);
            }
            LinePart::Field => {
                if self.field.len() < MAX_FIELD {
                    self.field.push(byte);
                } else {
                    // No field we read is this long.
                    self.line = LinePart::Value(Target::Skip);
                }
            }
            LinePart::ValueStart(target) => {
                self.line = LinePart::Value(target);
                if byte != b' ' {
                    self.push(byte);
                }
            }
            LinePart::Value(Target::Event) => {
                if self.event.len() < MAX_EVENT_NAME {
                    self.event.push(byte);
                } else {
                    self.event_overlong = true;
                }
            }
            LinePart::Value(Target::Data) => {
                if self.data.len() < MAX_CARRY {
                    self.data.push(byte);
                } else {
                    self.drop_data();
                }
            }
            LinePart::Value(Target::Skip) => {}
        }
    }

    /// Only events that can carry usage are kept; an unnamed event might, so it is kept too.
    fn wants_data(&self) -> bool {
        !self.data_overflow
            && !self.event_overlong
            && matches!(
                self.event.as_slice(),
                b"" | b"message_start" | b"message_delta"
            )
    }

    fn drop_data(&mut self) {
        self.data = Vec::new();
        self.data_overflow = true;
        self.line = LinePart::Value(Target::Skip);
    }

    fn end_line(&mut self, usage: &mut Usage) {
        match self.line {
            // A blank line ends the event.
            LinePart::Field if self.field.is_empty() => self.dispatch(usage),
            // A line with no colon is a field with an empty value.
            LinePart::Field if self.field.as_slice() == b"data" && self.wants_data() => {
                self.data.push(b'\n');
            }
            LinePart::ValueStart(Target::Data) | LinePart::Value(Target::Data) => {
                if self.data.len() < MAX_CARRY {
                    self.data.push(b'\n');
                } else {
                    self.drop_data();
                }
            }
            _ => {}
        }
        self.field.clear();
        self.line = LinePart::Field;
    }

    fn dispatch(&mut self, usage: &mut Usage) {
        if !self.data.is_empty() && !self.data_overflow && !self.event_overlong {
            if let Some(reported) = event_usage(&self.data) {
                usage.merge(reported);
            }
        }
        self.event.clear();
        self.event_overlong = false;
        self.data_overflow = false;
        // Keep a small allocation for the next event; let a big one go.
        if self.data.capacity() > 4096 {
            self.data = Vec::new();
        } else {
            self.data.clear();
        }
    }
}

/// The usage an event's data reports, if it is a `message_start` or `message_delta` one.
fn event_usage(data: &[u8]) -> Option<Usage> {
    let value: Value = serde_json::from_slice(data).ok()?;
    let usage = match value.get("type")?.as_str()? {
        "message_start" => value.get("message")?.get("usage")?,
        "message_delta" => value.get("usage")?,
        _ => return None,
    };
    usage.is_object().then(|| Usage::from_json(usage))
}

/// Longest top-level key remembered; only `usage` matters.
const MAX_KEY: usize = 8;

/// Finds the top-level `"usage": {...}` of a JSON object, tracking strings and nesting so
/// that a `usage` key inside content (a tool's input, say) or text is never mistaken for it.
#[derive(Debug, Default)]
struct JsonScan {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The last string closed at depth 1 (a key, when a `:` follows), if short.
    key: Vec<u8>,
    key_overlong: bool,
    /// Between the `usage` key's `:` and its value.
    after_usage_key: bool,
    /// Bytes of the usage object while it is being read.
    capture: Option<Vec<u8>>,
}

impl JsonScan {
    /// Returns true once the usage has been read (or cannot be): stop feeding.
    fn feed(&mut self, chunk: &[u8], usage: &mut Usage) -> bool {
        let mut at = 0;
        while at < chunk.len() {
            if self.in_string && self.capture.is_none() && !self.escaped {
                // Fast path through string contents outside the usage object.
                let Some(offset) = chunk[at..].iter().position(|&b| b == b'"' || b == b'\\') else {
                    if self.depth == 1 {
                        self.extend_key(&chunk[at..]);
                    }
                    return false;
                };
                if self.depth == 1 {
                    self.extend_key(&chunk[at..at + offset]);
                }
                at += offset;
            }
            let byte = chunk[at];
            at += 1;
            if let Some(capture) = &mut self.capture {
                if capture.len() >= MAX_CARRY {
                    // Far too big for a usage object: give up on this body.
                    self.capture = None;
                    return true;
                }
                capture.push(byte);
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    if self.depth == 1 && self.capture.is_none() {
                        // An escaped character: no key we look for has one.
                        self.key_overlong = true;
                    }
                } else if byte == b'\\' {
                    self.escaped = true;
                } else if byte == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match byte {
                b'"' => {
                    self.in_string = true;
                    if self.depth == 1 && self.capture.is_none() {
                        self.key.clear();
                        self.key_overlong = false;
                    }
                }
                b'{' | b'[' => {
                    if self.depth == 1 && self.after_usage_key && byte == b'{' {
                        self.capture = Some(vec![b'{']);
                    }
                    self.after_usage_key = false;
                    self.depth = self.depth.saturating_add(1);
                }
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 1 {
                        if let Some(capture) = self.capture.take() {
                            if let Ok(value) = serde_json::from_slice::<Value>(&capture) {
                                usage.merge(Usage::from_json(&value));
                            }
                            return true;
                        }
                    }
                    if self.depth == 0 {
                        // The top-level value ended without a usage object.
                        return true;
                    }
                }
                b':' if self.depth == 1 && self.capture.is_none() => {
                    self.after_usage_key = !self.key_overlong && self.key.as_slice() == b"usage";
                }
                b',' => self.after_usage_key = false,
                _ => {}
            }
        }
        false
    }

    fn extend_key(&mut self, bytes: &[u8]) {
        if self.key_overlong || self.key.len() + bytes.len() > MAX_KEY {
            self.key_overlong = true;
        } else {
            self.key.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, creation: u64, read: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            cache_creation_input_tokens: creation,
            cache_read_input_tokens: read,
            output_tokens: output,
        }
    }

    /// A stream as the real API sends it: every event type, a ping, an unknown event, and
    /// cumulative message_delta usage.
    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",",
        "\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",",
        "\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":1200,",
        "\"cache_creation_input_tokens\":300,\"cache_read_input_tokens\":5000,",
        "\"cache_creation\":{\"ephemeral_5m_input_tokens\":300,\"ephemeral_1h_input_tokens\":0},",
        "\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",",
        "\"text\":\"usage: {\\\"output_tokens\\\": 999999} message_delta\"}}\n\n",
        "event: future_event_type\n",
        "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":777777}}\n\n",
        ": a comment line\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},",
        "\"usage\":{\"output_tokens\":40}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"input_tokens\":1200,",
        "\"cache_creation_input_tokens\":300,\"cache_read_input_tokens\":5000,\"output_tokens\":87}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    const STREAM_USAGE: Usage = Usage {
        input_tokens: 1200,
        cache_creation_input_tokens: 300,
        cache_read_input_tokens: 5000,
        output_tokens: 87,
    };

    fn scan_sse(chunks: &[&[u8]]) -> Usage {
        let mut scanner = UsageScanner::sse();
        for chunk in chunks {
            scanner.feed(chunk);
        }
        scanner.usage()
    }

    fn scan_json(chunks: &[&[u8]]) -> Usage {
        let mut scanner = UsageScanner::json();
        for chunk in chunks {
            scanner.feed(chunk);
        }
        scanner.usage()
    }

    #[test]
    fn cost_weights_input_once_output_twice_and_skips_cache_reads() {
        assert_eq!(STREAM_USAGE.cost(), 1200 + 300 + 2 * 87);
        assert_eq!(usage(0, 0, 1_000_000, 0).cost(), 0);
        assert_eq!(usage(u64::MAX, 1, 0, u64::MAX).cost(), u64::MAX);
    }

    #[test]
    fn sse_usage_from_start_and_last_delta() {
        assert_eq!(scan_sse(&[STREAM.as_bytes()]), STREAM_USAGE);
    }

    #[test]
    fn sse_split_at_every_byte_boundary() {
        let bytes = STREAM.as_bytes();
        for cut in 0..=bytes.len() {
            assert_eq!(
                scan_sse(&[&bytes[..cut], &bytes[cut..]]),
                STREAM_USAGE,
                "cut at {cut}"
            );
        }
        for cut in 0..bytes.len() {
            for second in [cut + 1, cut + 7, cut + 64] {
                let second = second.min(bytes.len());
                assert_eq!(
                    scan_sse(&[&bytes[..cut], &bytes[cut..second], &bytes[second..]]),
                    STREAM_USAGE,
                    "cuts at {cut} and {second}"
                );
            }
        }
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(scan_sse(&single), STREAM_USAGE);
    }

    #[test]
    fn sse_reports_input_as_soon_as_the_stream_opens() {
        let mut scanner = UsageScanner::sse();
        let start_end = STREAM.find("event: content_block_start").unwrap();
        assert!(scanner.feed(&STREAM.as_bytes()[..start_end]));
        assert_eq!(scanner.usage(), usage(1200, 300, 5000, 1));
        // Nothing new until the message_delta.
        let delta_at = STREAM.find("event: message_delta").unwrap();
        assert!(!scanner.feed(&STREAM.as_bytes()[start_end..delta_at]));
        assert!(scanner.feed(&STREAM.as_bytes()[delta_at..]));
        assert_eq!(scanner.usage(), STREAM_USAGE);
    }

    #[test]
    fn sse_line_endings_and_unnamed_events() {
        let crlf = STREAM.replace('\n', "\r\n");
        let bytes = crlf.as_bytes();
        for cut in 0..=bytes.len() {
            assert_eq!(scan_sse(&[&bytes[..cut], &bytes[cut..]]), STREAM_USAGE);
        }
        let cr = STREAM.replace('\n', "\r");
        assert_eq!(scan_sse(&[cr.as_bytes()]), STREAM_USAGE);
        // No `event:` lines: the data's type decides; no space after the colon; data split
        // over two lines (joined with a newline, which JSON reads as whitespace).
        let unnamed = concat!(
            "data:{\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\n",
            "data:\"output_tokens\":1}}}\n\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\n\n",
        );
        assert_eq!(scan_sse(&[unnamed.as_bytes()]), usage(10, 0, 0, 5));
    }

    #[test]
    fn sse_garbage_is_ignored_and_reading_resumes() {
        let garbage = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":\n\n",
            "\u{0}\u{1}\u{ff}: not sse at all\n",
            "event: message_delta\n",
            "data: [1,2,3]\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":\"many\",\"input_tokens\":-3}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"usage\":null}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":12}}\n\n",
        );
        assert_eq!(scan_sse(&[garbage.as_bytes()]), usage(0, 0, 0, 12));
        let mut scanner = UsageScanner::sse();
        for _ in 0..1000 {
            scanner.feed(b"\xff\xfe{{{:::\r\n\n\x00data");
        }
        assert_eq!(scanner.usage(), Usage::default());
        // An error event mid-stream: what was reported before it stays.
        let errored = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
            "event: error\n",
            "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        assert_eq!(scan_sse(&[errored.as_bytes()]), usage(9, 0, 0, 1));
    }

    #[test]
    fn sse_over_cap_event_is_dropped_and_memory_stays_bounded() {
        let mut scanner = UsageScanner::sse();
        // An unnamed event whose data never ends: kept only up to the cap.
        scanner.feed(b"data: {\"type\":\"message_start\",\"pad\":\"");
        let pad = vec![b'x'; 4096];
        for _ in 0..100 {
            scanner.feed(&pad);
        }
        let Mode::Sse(scan) = &scanner.mode else {
            panic!("still scanning SSE");
        };
        assert!(
            scan.data.capacity() <= 2 * MAX_CARRY,
            "{}",
            scan.data.capacity()
        );
        scanner.feed(b"\",\"message\":{\"usage\":{\"input_tokens\":5}}}\n\n");
        assert_eq!(scanner.usage(), Usage::default());
        // The next event is read normally.
        scanner.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n\n");
        assert_eq!(scanner.usage(), usage(0, 0, 0, 3));

        // Long content deltas are skipped without being kept at all.
        let mut scanner = UsageScanner::sse();
        scanner.feed(b"event: content_block_delta\ndata: ");
        for _ in 0..100 {
            scanner.feed(&pad);
        }
        let Mode::Sse(scan) = &scanner.mode else {
            panic!("still scanning SSE");
        };
        assert_eq!(scan.data.capacity(), 0);
        scanner.feed(b"\n\n");
        scanner.feed(STREAM.as_bytes());
        assert_eq!(scanner.usage(), STREAM_USAGE);
    }

    const MESSAGE: &str = concat!(
        "{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-opus-4-1\",",
        "\"content\":[{\"type\":\"text\",\"text\":\"the \\\"usage\\\": {\\\"output_tokens\\\": 5} key \\\\\"},",
        "{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"x\",\"input\":{\"usage\":{\"input_tokens\":99999}}}],",
        "\"stop_reason\":\"end_turn\",\"stop_sequence\":null,",
        "\"usage\" : {\"input_tokens\":2095,\"cache_creation_input_tokens\":0,",
        "\"cache_read_input_tokens\":10,\"output_tokens\":503,\"service_tier\":\"standard\",",
        "\"server_tool_use\":{\"web_search_requests\":0},\"note\":\"}{\\\"\"}}",
    );

    #[test]
    fn json_usage_at_top_level_only_at_every_split() {
        let expected = usage(2095, 0, 10, 503);
        let bytes = MESSAGE.as_bytes();
        assert!(serde_json::from_slice::<Value>(bytes).is_ok());
        assert_eq!(scan_json(&[bytes]), expected);
        for cut in 0..=bytes.len() {
            assert_eq!(
                scan_json(&[&bytes[..cut], &bytes[cut..]]),
                expected,
                "cut at {cut}"
            );
        }
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(scan_json(&single), expected);
        // Pretty-printed, usage first: read at once, the rest is not scanned.
        let pretty = concat!(
            "{\n  \"usage\" :\n  {\n    \"input_tokens\": 2095,\n    \"cache_read_input_tokens\": 10,\n",
            "    \"output_tokens\": 503\n  },\n  \"content\": [{\"type\": \"text\", \"text\": \"x\"}]\n}\n",
        );
        assert!(serde_json::from_str::<Value>(pretty).is_ok());
        let mut scanner = UsageScanner::json();
        let usage_end = pretty.find("},").unwrap() + 1;
        assert!(scanner.feed(&pretty.as_bytes()[..usage_end]));
        assert!(!scanner.is_scanning());
        assert_eq!(scanner.usage(), expected);
    }

    #[test]
    fn json_without_usage_or_garbage_reports_nothing() {
        assert_eq!(scan_json(&[b"{\"type\":\"message\"}"]), Usage::default());
        assert_eq!(scan_json(&[b"{\"usage\":null,\"x\":1}"]), Usage::default());
        assert_eq!(
            scan_json(&[b"[{\"usage\":{\"input_tokens\":3}}]"]),
            Usage::default()
        );
        assert_eq!(
            scan_json(&[b"\xff\x00}}}]]{{{\"usage\":"]),
            Usage::default()
        );
        assert_eq!(
            scan_json(&[b"{\"usages\":{\"input_tokens\":3},\"usag\":{\"input_tokens\":4}}"]),
            Usage::default()
        );
        // A usage object that never closes is abandoned at the cap.
        let mut scanner = UsageScanner::json();
        scanner.feed(b"{\"usage\":{\"input_tokens\":1,\"pad\":[");
        let pad = vec![b'1'; 4096];
        for _ in 0..20 {
            scanner.feed(&pad);
        }
        assert!(!scanner.is_scanning());
        assert_eq!(scanner.usage(), Usage::default());
    }

    #[test]
    fn scanner_is_chosen_from_status_and_headers() {
        fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, http::HeaderValue::from_static(value));
            }
            map
        }
        let sse = headers(&[("content-type", "text/event-stream; charset=utf-8")]);
        let json = headers(&[("content-type", "application/json")]);
        assert!(matches!(
            UsageScanner::for_response(StatusCode::OK, &sse).mode,
            Mode::Sse(_)
        ));
        assert!(matches!(
            UsageScanner::for_response(StatusCode::OK, &json).mode,
            Mode::Json(_)
        ));
        let gzipped = headers(&[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ]);
        let identity = headers(&[
            ("content-type", "application/json"),
            ("content-encoding", "identity"),
        ]);
        assert!(UsageScanner::for_response(StatusCode::OK, &gzipped).is_scanning());
        let brotli = headers(&[
            ("content-type", "application/json"),
            ("content-encoding", "br"),
        ]);
        assert!(!UsageScanner::for_response(StatusCode::OK, &brotli).is_scanning());
        assert!(UsageScanner::for_response(StatusCode::OK, &identity).is_scanning());
        assert!(!UsageScanner::for_response(StatusCode::BAD_REQUEST, &json).is_scanning());
        assert!(!UsageScanner::for_response(StatusCode::OK, &HeaderMap::new()).is_scanning());
        let mut off = UsageScanner::off();
        assert!(!off.feed(STREAM.as_bytes()));
        assert_eq!(off.usage(), Usage::default());
    }

    #[test]
    fn gzipped_json_is_inflated_for_the_scan_in_any_chunking() {
        let body = br#"{"id":"msg_1","type":"message","content":[{"type":"text","text":"usage: {\"input_tokens\": 999}"}],"usage":{"input_tokens":120,"cache_creation_input_tokens":30,"cache_read_input_tokens":7,"output_tokens":45}}"#;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(body).unwrap();
        let gz = encoder.finish().unwrap();
        let mut gzipped = HeaderMap::new();
        gzipped.insert("content-type", "application/json".parse().unwrap());
        gzipped.insert("content-encoding", "gzip".parse().unwrap());
        for size in [1, 3, 7, 64, gz.len()] {
            let mut scanner = UsageScanner::for_response(StatusCode::OK, &gzipped);
            for chunk in gz.chunks(size) {
                scanner.feed(chunk);
            }
            let usage = scanner.usage();
            assert_eq!(
                (
                    usage.input_tokens,
                    usage.cache_creation_input_tokens,
                    usage.output_tokens
                ),
                (120, 30, 45),
                "chunks of {size}"
            );
        }
        let mut broken = UsageScanner::for_response(StatusCode::OK, &gzipped);
        broken.feed(b"definitely not gzip");
        assert!(!broken.is_scanning());
        assert_eq!(broken.usage(), Usage::default());
    }
}
