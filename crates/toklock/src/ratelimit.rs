//! Reading Anthropic's rate-limit response headers into an [`Observation`].
//!
//! Pure: no sockets, no tokio, no clock reads. Wall-clock times in headers are turned into
//! `Instant`s with a [`Now`] pair the caller passes in, so every conversion is testable.
//! A malformed header is ignored (logged once per header name); parsing never panics.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};

/// Longest wait any header may ask for. Larger values are clamped so `Instant` arithmetic
/// cannot overflow; a day is far beyond anything a client would wait anyway.
pub const MAX_HEADER_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// "Now" on both clocks at once: headers speak wall-clock time, scheduling speaks `Instant`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub system: SystemTime,
    pub instant: Instant,
}

impl Now {
    /// The real clocks. Everything that must be testable takes a `Now` instead of calling this.
    pub fn from_clocks() -> Now {
        Now {
            system: SystemTime::now(),
            instant: Instant::now(),
        }
    }

    /// The `Instant` matching a wall-clock time, clamped to `[now, now + MAX_HEADER_WAIT]`
    /// (a reset in the past means the bucket is already full).
    pub fn instant_of(&self, wall: SystemTime) -> Instant {
        let ahead = wall
            .duration_since(self.system)
            .unwrap_or(Duration::ZERO)
            .min(MAX_HEADER_WAIT);
        self.instant + ahead
    }
}

/// The four token buckets Anthropic reports, in the order of [`Observation::buckets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bucket {
    Requests,
    Tokens,
    InputTokens,
    OutputTokens,
}

impl Bucket {
    pub const ALL: [Bucket; 4] = [
        Bucket::Requests,
        Bucket::Tokens,
        Bucket::InputTokens,
        Bucket::OutputTokens,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The name used in headers and in the status snapshot.
    pub fn name(self) -> &'static str {
        match self {
            Bucket::Requests => "requests",
            Bucket::Tokens => "tokens",
            Bucket::InputTokens => "input-tokens",
            Bucket::OutputTokens => "output-tokens",
        }
    }

    /// Token buckets get watermarks; the request bucket only pauses at zero.
    pub fn is_tokens(self) -> bool {
        self != Bucket::Requests
    }

    /// `[limit, remaining, reset]` header names.
    fn header_names(self) -> [&'static str; 3] {
        match self {
            Bucket::Requests => [
                "anthropic-ratelimit-requests-limit",
                "anthropic-ratelimit-requests-remaining",
                "anthropic-ratelimit-requests-reset",
            ],
            Bucket::Tokens => [
                "anthropic-ratelimit-tokens-limit",
                "anthropic-ratelimit-tokens-remaining",
                "anthropic-ratelimit-tokens-reset",
            ],
            Bucket::InputTokens => [
                "anthropic-ratelimit-input-tokens-limit",
                "anthropic-ratelimit-input-tokens-remaining",
                "anthropic-ratelimit-input-tokens-reset",
            ],
            Bucket::OutputTokens => [
                "anthropic-ratelimit-output-tokens-limit",
                "anthropic-ratelimit-output-tokens-remaining",
                "anthropic-ratelimit-output-tokens-reset",
            ],
        }
    }
}

/// One bucket as one response reported it. Each field is independent: a malformed or absent
/// header leaves only its own field empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketReading {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// When the bucket will be FULL again (not when it has room).
    pub reset: Option<Instant>,
}

/// What one response's headers said about the budget, at the moment they arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// When the headers were read; refill rates are measured from here.
    pub observed_at: Instant,
    /// Indexed by [`Bucket::index`].
    pub buckets: [BucketReading; 4],
    /// From `retry-after-ms` (preferred, as the SDKs do) or `retry-after`.
    pub retry_after: Option<Duration>,
}

impl Observation {
    /// An observation that says nothing (e.g. a response with no rate-limit headers).
    pub fn empty(observed_at: Instant) -> Observation {
        Observation {
            observed_at,
            buckets: [BucketReading::default(); 4],
            retry_after: None,
        }
    }

    pub fn bucket(&self, bucket: Bucket) -> &BucketReading {
        &self.buckets[bucket.index()]
    }

    /// Reads every rate-limit header it knows; unknown and malformed ones are ignored.
    pub fn from_headers(headers: &HeaderMap, now: Now) -> Observation {
        let mut obs = Observation::empty(now.instant);
        for bucket in Bucket::ALL {
            let [limit, remaining, reset] = bucket.header_names();
            let reading = &mut obs.buckets[bucket.index()];
            reading.limit = read_header(headers, limit, parse_count);
            reading.remaining = read_header(headers, remaining, parse_count);
            reading.reset =
                read_header(headers, reset, parse_rfc3339).map(|wall| now.instant_of(wall));
        }
        obs.retry_after = read_header(headers, "retry-after-ms", |text| {
            parse_decimal_duration(text, 1_000_000)
        })
        .or_else(|| read_header(headers, "retry-after", |text| parse_retry_after(text, now)));
        obs
    }
}

/// Gets and parses one header; a header that is present but unreadable is logged once.
fn read_header<T>(
    headers: &HeaderMap,
    name: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    let value = headers.get(name)?;
    let parsed = value.to_str().ok().map(str::trim).and_then(parse);
    if parsed.is_none() {
        warn_malformed_once(name, value);
    }
    parsed
}

/// Header names already warned about: a misbehaving upstream must not flood the log.
static WARNED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

fn warn_malformed_once(name: &'static str, value: &HeaderValue) {
    let mut warned = WARNED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if warned.contains(&name) {
        return;
    }
    warned.push(name);
    let shown: String = String::from_utf8_lossy(value.as_bytes())
        .chars()
        .take(80)
        .collect();
    tracing::warn!(
        header = name,
        value = %shown,
        "ignoring malformed rate-limit header (further ones with this name are not logged)"
    );
}

/// A non-negative integer made of ASCII digits only (no sign, no exponent, no fraction).
pub fn parse_count(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `retry-after`: delay seconds (integer or fractional) or an HTTP-date.
pub fn parse_retry_after(text: &str, now: Now) -> Option<Duration> {
    if let Some(delay) = parse_decimal_duration(text, 1_000_000_000) {
        return Some(delay);
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(
        when.duration_since(now.system)
            .unwrap_or(Duration::ZERO)
            .min(MAX_HEADER_WAIT),
    )
}

/// A non-negative decimal number of units (`nanos_per_unit` nanoseconds each), e.g. "2",
/// "1.5", "0.250". Clamped to [`MAX_HEADER_WAIT`]; signs, exponents and `inf` are rejected.
fn parse_decimal_duration(text: &str, nanos_per_unit: u64) -> Option<Duration> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (text, ""),
    };
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits_only(whole) || !digits_only(fraction) {
        return None;
    }
    if text.ends_with('.') {
        return None;
    }
    let max_units = MAX_HEADER_WAIT.as_nanos() / u128::from(nanos_per_unit);
    let whole_units: u128 = if whole.is_empty() {
        0
    } else {
        // Overlong digit strings are simply "huge": clamp rather than reject.
        whole.parse::<u128>().unwrap_or(u128::MAX)
    };
    if whole_units >= max_units {
        return Some(MAX_HEADER_WAIT);
    }
    // Fraction digits beyond nanosecond precision are dropped.
    let mut fraction_nanos: u128 = 0;
    let mut scale = u128::from(nanos_per_unit);
    for digit in fraction.bytes() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        fraction_nanos += u128::from(digit - b'0') * scale;
    }
    let nanos = whole_units * u128::from(nanos_per_unit) + fraction_nanos;
    let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
    Some(Duration::from_nanos(nanos).min(MAX_HEADER_WAIT))
}

/// RFC 3339 date-time: `2025-08-21T12:40:59Z`, `...59.123Z`, `...59+02:00`, `...59-05:30`.
/// Lowercase `t`/`z` and a space separator are accepted, as RFC 3339 allows.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = bytes.get(range)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            part.iter()
                .fold(0i64, |acc, digit| acc * 10 + i64::from(digit - b'0')),
        )
    };
    let separators_ok = bytes[4] == b'-'
        && bytes[7] == b'-'
        && matches!(bytes[10], b'T' | b't' | b' ')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !separators_ok {
        return None;
    }
    let year = number(0..4)?;
    let month = number(5..7)?;
    let day = number(8..10)?;
    let hour = number(11..13)?;
    let minute = number(14..16)?;
    let second = number(17..19)?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }

    let mut rest = &bytes[19..];
    let mut nanos: u32 = 0;
    if let Some(after_dot) = rest.strip_prefix(b".") {
        let digit_count = after_dot.iter().take_while(|b| b.is_ascii_digit()).count();
        if digit_count == 0 {
            return None;
        }
        let mut scale = 100_000_000u32;
        for digit in &after_dot[..digit_count] {
            nanos += u32::from(digit - b'0') * scale;
            scale /= 10;
        }
        rest = &after_dot[digit_count..];
    }
    let offset_seconds = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let hours = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let minutes = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if hours > 23 || minutes > 59 {
                return None;
            }
            let magnitude = hours * 3600 + minutes * 60;
            if *sign == b'+' {
                magnitude
            } else {
                -magnitude
            }
        }
        _ => return None,
    };

    // A leap second (:60) is read as the following second.
    let local_seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let unix_seconds = local_seconds - offset_seconds;
    let since_epoch = Duration::new(unix_seconds.unsigned_abs(), 0);
    let whole = if unix_seconds >= 0 {
        UNIX_EPOCH.checked_add(since_epoch)?
    } else {
        UNIX_EPOCH.checked_sub(since_epoch)?
    };
    whole.checked_add(Duration::from_nanos(u64::from(nanos)))
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date, counted year by year from an era
/// start (400-year cycles repeat exactly).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Count from March so the leap day is the last day of the shifted year.
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// What to do with an upstream 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classified429 {
    /// An ordinary rate limit: requeue at the front and pause the lane.
    Retryable,
    /// Must reach the caller as it is; queueing would only delay the bad news.
    PassThrough(PassThroughReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassThroughReason {
    /// `x-should-retry: false`: the API says retrying cannot help.
    ShouldNotRetry,
    /// The organisation's monthly spend cap: retrying only burns time until next month.
    SpendLimit,
    /// Subscription (unified) window exhausted: hours or days long.
    UnifiedRejected,
    /// A 429 whose error type is not `rate_limit_error`.
    NotRateLimitError,
}

/// Decides whether a 429 is one toklock waits out or one the caller must see.
/// An unreadable body is treated as an ordinary rate limit (the headers decide).
pub fn classify_429(headers: &HeaderMap, body: &[u8]) -> Classified429 {
    let header_is = |name: &str, expected: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.trim().eq_ignore_ascii_case(expected))
    };
    if header_is("x-should-retry", "false") {
        return Classified429::PassThrough(PassThroughReason::ShouldNotRetry);
    }
    if header_is("anthropic-ratelimit-unified-status", "rejected") {
        return Classified429::PassThrough(PassThroughReason::UnifiedRejected);
    }
    let Ok(envelope) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Classified429::Retryable;
    };
    let error = &envelope["error"];
    let error_code = error["details"]["error_code"].as_str().unwrap_or_default();
    if error_code.contains("spend_limit") {
        return Classified429::PassThrough(PassThroughReason::SpendLimit);
    }
    match error["type"].as_str() {
        Some(kind) if kind != "rate_limit_error" => {
            Classified429::PassThrough(PassThroughReason::NotRateLimitError)
        }
        _ => Classified429::Retryable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Now {
        Now {
            // 2025-08-21T12:40:00Z
            system: UNIX_EPOCH + Duration::from_secs(1_755_780_000),
            instant: Instant::now(),
        }
    }

    fn unix(text: &str) -> Option<i128> {
        parse_rfc3339(text).map(|t| match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const S: i128 = 1_000_000_000;

    #[test]
    fn rfc3339_variants() {
        assert_eq!(unix("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix("2025-08-21T12:40:59Z"), Some(1_755_780_059 * S));
        assert_eq!(unix("2025-08-21t12:40:59z"), Some(1_755_780_059 * S));
        assert_eq!(unix("2025-08-21 12:40:59Z"), Some(1_755_780_059 * S));
        assert_eq!(
            unix("2025-08-21T12:40:59.5Z"),
            Some(1_755_780_059 * S + S / 2)
        );
        assert_eq!(
            unix("2025-08-21T12:40:59.123456789123Z"),
            Some(1_755_780_059 * S + 123_456_789)
        );
        assert_eq!(unix("2025-08-21T14:40:59+02:00"), Some(1_755_780_059 * S));
        assert_eq!(unix("2025-08-21T07:10:59-05:30"), Some(1_755_780_059 * S));
        assert_eq!(unix("2025-08-21T12:40:59-00:00"), Some(1_755_780_059 * S));
        assert_eq!(unix("2024-02-29T00:00:00Z"), Some(1_709_164_800 * S));
        assert_eq!(unix("2000-03-01T00:00:00Z"), Some(951_868_800 * S));
        assert_eq!(unix("1969-12-31T23:59:59Z"), Some(-S));
        // Leap second reads as the next second.
        assert_eq!(unix("2016-12-31T23:59:60Z"), Some(1_483_228_800 * S));
    }

    #[test]
    fn rfc3339_garbage() {
        for bad in [
            "",
            "2025-08-21",
            "2025-08-21T12:40:59",
            "2025-08-21T12:40:59+0200",
            "2025-08-21T12:40:59+02",
            "2025-13-21T12:40:59Z",
            "2025-02-29T12:40:59Z",
            "2025-08-32T12:40:59Z",
            "2025-08-21T24:00:00Z",
            "2025-08-21T12:60:00Z",
            "2025-08-21T12:40:61Z",
            "2025-08-21T12:40:59.Z",
            "2025-08-21T12:40:59+24:00",
            "2025/08/21T12:40:59Z",
            "2025-08-21T12:40:59ZZ",
            "+025-08-21T12:40:59Z",
            "2025-08-21T12:40:59Z ",
            "1755780059",
            "Thu, 21 Aug 2025 12:40:59 GMT",
            "２０２５-08-21T12:40:59Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_formats() {
        let n = now();
        assert_eq!(parse_retry_after("0", n), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("505", n), Some(Duration::from_secs(505)));
        assert_eq!(
            parse_retry_after("1.5", n),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("0.25", n),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_retry_after(".5", n), Some(Duration::from_millis(500)));
        // HTTP-date, 30 s after `now`; and one in the past means "now".
        assert_eq!(
            parse_retry_after("Thu, 21 Aug 2025 12:40:30 GMT", n),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Thu, 21 Aug 2025 12:00:00 GMT", n),
            Some(Duration::ZERO)
        );
        // Huge values clamp instead of overflowing.
        assert_eq!(
            parse_retry_after("99999999999999999999999999", n),
            Some(MAX_HEADER_WAIT)
        );
        assert_eq!(
            parse_retry_after("18446744073709551616", n),
            Some(MAX_HEADER_WAIT)
        );
        for bad in [
            "", "-1", "+1", "1e3", "inf", "NaN", "1.", ".", "1.2.3", "soon", " 5x",
        ] {
            assert_eq!(parse_retry_after(bad, n), None, "{bad:?}");
        }
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("0"), Some(0));
        assert_eq!(parse_count("30000"), Some(30_000));
        assert_eq!(parse_count("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "-1", "+1", "1.0", "1e3", "18446744073709551616", "abc"] {
            assert_eq!(parse_count(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn observation_from_full_headers() {
        let n = now();
        let map = headers(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "2025-08-21T12:40:01Z"),
            ("anthropic-ratelimit-tokens-limit", "38000"),
            ("anthropic-ratelimit-tokens-remaining", "37000"),
            ("anthropic-ratelimit-tokens-reset", "2025-08-21T12:40:02.5Z"),
            ("anthropic-ratelimit-input-tokens-limit", "30000"),
            ("anthropic-ratelimit-input-tokens-remaining", "30000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2025-08-21T12:40:00Z",
            ),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "7000"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2025-08-21T14:40:07+02:00",
            ),
            ("retry-after", "3"),
        ]);
        let obs = Observation::from_headers(&map, n);
        assert_eq!(obs.observed_at, n.instant);
        let requests = obs.bucket(Bucket::Requests);
        assert_eq!(requests.limit, Some(50));
        assert_eq!(requests.remaining, Some(49));
        assert_eq!(requests.reset, Some(n.instant + Duration::from_secs(1)));
        assert_eq!(
            obs.bucket(Bucket::Tokens).reset,
            Some(n.instant + Duration::from_millis(2500))
        );
        assert_eq!(obs.bucket(Bucket::InputTokens).reset, Some(n.instant));
        assert_eq!(
            obs.bucket(Bucket::OutputTokens).reset,
            Some(n.instant + Duration::from_secs(7))
        );
        assert_eq!(obs.bucket(Bucket::OutputTokens).limit, Some(8000));
        assert_eq!(obs.retry_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn retry_after_ms_wins_and_garbage_is_ignored_field_by_field() {
        let n = now();
        let map = headers(&[
            ("retry-after", "3"),
            ("retry-after-ms", "1500"),
            ("anthropic-ratelimit-tokens-limit", "lots"),
            ("anthropic-ratelimit-tokens-remaining", "-5"),
            ("anthropic-ratelimit-tokens-reset", "tomorrow"),
            ("anthropic-ratelimit-output-tokens-remaining", "100"),
        ]);
        let obs = Observation::from_headers(&map, n);
        assert_eq!(obs.retry_after, Some(Duration::from_millis(1500)));
        assert_eq!(*obs.bucket(Bucket::Tokens), BucketReading::default());
        assert_eq!(obs.bucket(Bucket::OutputTokens).remaining, Some(100));
        assert_eq!(obs.bucket(Bucket::OutputTokens).limit, None);

        // A broken retry-after-ms falls back to retry-after.
        let map = headers(&[("retry-after", "3"), ("retry-after-ms", "x")]);
        let obs = Observation::from_headers(&map, n);
        assert_eq!(obs.retry_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn non_utf8_and_far_future_headers_do_not_panic() {
        let n = now();
        let mut map = HeaderMap::new();
        map.insert(
            "anthropic-ratelimit-requests-remaining",
            HeaderValue::from_bytes(b"\xff\xfe12").unwrap(),
        );
        map.insert("retry-after", HeaderValue::from_bytes(b"\xc3\x28").unwrap());
        map.insert(
            "anthropic-ratelimit-requests-reset",
            HeaderValue::from_static("9999-12-31T23:59:59Z"),
        );
        let obs = Observation::from_headers(&map, n);
        assert_eq!(obs.bucket(Bucket::Requests).remaining, None);
        assert_eq!(obs.retry_after, None);
        assert_eq!(
            obs.bucket(Bucket::Requests).reset,
            Some(n.instant + MAX_HEADER_WAIT)
        );
    }

    #[test]
    fn classify_429_cases() {
        let retryable_body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#;
        assert_eq!(
            classify_429(&headers(&[("retry-after", "5")]), retryable_body),
            Classified429::Retryable
        );
        assert_eq!(
            classify_429(&HeaderMap::new(), b"not json"),
            Classified429::Retryable
        );
        assert_eq!(
            classify_429(&headers(&[("x-should-retry", "false")]), retryable_body),
            Classified429::PassThrough(PassThroughReason::ShouldNotRetry)
        );
        assert_eq!(
            classify_429(&headers(&[("x-should-retry", "true")]), retryable_body),
            Classified429::Retryable
        );
        let spend = br#"{"type":"error","error":{"type":"rate_limit_error","message":"You have reached your specified API usage limits.","details":{"error_code":"enforced_spend_limit_reached"}}}"#;
        assert_eq!(
            classify_429(&HeaderMap::new(), spend),
            Classified429::PassThrough(PassThroughReason::SpendLimit)
        );
        assert_eq!(
            classify_429(
                &headers(&[("anthropic-ratelimit-unified-status", "rejected")]),
                retryable_body
            ),
            Classified429::PassThrough(PassThroughReason::UnifiedRejected)
        );
        assert_eq!(
            classify_429(
                &headers(&[("anthropic-ratelimit-unified-status", "allowed_warning")]),
                retryable_body
            ),
            Classified429::Retryable
        );
        assert_eq!(
            classify_429(
                &HeaderMap::new(),
                br#"{"type":"error","error":{"type":"billing_error","message":"x"}}"#
            ),
            Classified429::PassThrough(PassThroughReason::NotRateLimitError)
        );
    }
}
