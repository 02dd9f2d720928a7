//! The scheduler end to end: toklock in front of mock-anthropic under tight budgets.
//! Every scenario asserts what a user would notice: no 429 reaches a caller, no agent
//! starves, the upstream is not flooded, and budgets stay apart.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use mock_anthropic::MockConfig;

/// Outcome counts per agent: status code → number of responses.
type Tally = Arc<Mutex<BTreeMap<String, BTreeMap<u16, u32>>>>;

/// For each `(agent, loops)`, runs `loops` concurrent streaming request loops for `run`,
/// with `extra` headers, waits for them all and returns the statuses each agent saw.
async fn run_agents(
    pair: &Pair,
    agents: &[(&str, usize)],
    run: Duration,
    extra: Vec<(&'static str, String)>,
) -> Tally {
    let tally: Tally = Default::default();
    let until = Instant::now() + run;
    let tasks: Vec<_> = agents
        .iter()
        .flat_map(|&(agent, loops)| (0..loops).map(move |_| agent))
        .map(|agent| {
            let url = pair.url("/v1/messages");
            let agent = agent.to_string();
            let extra = extra.clone();
            let tally = tally.clone();
            tokio::spawn(async move {
                let c = client();
                while Instant::now() < until {
                    let mut headers: Vec<(&str, &str)> = vec![("x-toklock-agent", &agent)];
                    headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
                    let response =
                        send(&c, post(&url, message_body(SONNET, 16, true), &headers)).await;
                    let (status, _, _) = collect(response).await;
                    // Only the window in which every agent was backlogged counts: requests
                    // still queued at the deadline would skew toward the greediest agent.
                    if Instant::now() > until {
                        break;
                    }
                    *tally
                        .lock()
                        .unwrap()
                        .entry(agent.clone())
                        .or_default()
                        .entry(status.as_u16())
                        .or_default() += 1;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    tally
}

fn ok_count(tally: &Tally, agent: &str) -> u32 {
    tally
        .lock()
        .unwrap()
        .get(agent)
        .and_then(|t| t.get(&200).copied())
        .unwrap_or(0)
}

fn non_ok(tally: &Tally) -> Vec<(String, u16, u32)> {
    let tally = tally.lock().unwrap();
    tally
        .iter()
        .flat_map(|(agent, statuses)| {
            statuses
                .iter()
                .filter(|(status, _)| **status != 200)
                .map(move |(status, n)| (agent.clone(), *status, *n))
        })
        .collect()
}

fn cost_200() -> Vec<(&'static str, String)> {
    vec![("x-mock-input-tokens", "200".to_string())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn greedy_agent_gets_its_share_and_no_caller_sees_a_429() {
    let pair = Pair::start(pressured(), |c| {
        c.scheduler.slow_below = 2_000;
        c.scheduler.pause_below = 600;
    })
    .await;
    let agents = [("greedy", 8), ("steady-b", 1), ("steady-c", 1)];
    let tally = run_agents(&pair, &agents, Duration::from_secs(8), cost_200()).await;

    assert!(
        non_ok(&tally).is_empty(),
        "callers saw errors: {:?}",
        non_ok(&tally)
    );
    let (g, b, c) = (
        ok_count(&tally, "greedy"),
        ok_count(&tally, "steady-b"),
        ok_count(&tally, "steady-c"),
    );
    let total = g + b + c;
    assert!(total >= 20, "too little got through: {g} {b} {c}");
    // Round-robin over three backlogged agents: about a third each. The greedy agent's
    // eight connections must not buy it eight shares.
    assert!(g <= b.min(c) * 3 / 2 + 2, "greedy {g} vs steady {b}, {c}");
    assert!(
        b * 4 >= total && c * 4 >= total,
        "steady agents starved: {g} {b} {c}"
    );
    let peak = pair.mock.peak_concurrency();
    assert!(
        peak <= 3,
        "in flight at the upstream peaked at {peak}, above the limit of 3"
    );
    let limited = pair.mock.rate_limited_count();
    assert!(
        limited as u32 * 10 <= total,
        "{limited} upstream 429s for {total} requests"
    );
}

#[tokio::test]
async fn streams_hold_their_slot_until_the_body_ends() {
    // Plenty of budget: three in flight at most, and a stream counts until its last byte.
    let mock = MockConfig {
        tokens_per_sec: 50.0,
        default_output_tokens: 20,
        ..MockConfig::default()
    };
    let pair = Pair::start(mock, |_| {}).await;
    let run = Duration::from_millis(1500);
    let tally = run_agents(&pair, &[("streamer", 8)], run, vec![]).await;
    assert!(non_ok(&tally).is_empty());
    assert_eq!(
        pair.mock.peak_concurrency(),
        3,
        "plenty of budget should allow exactly 3 streams at once"
    );
}

#[tokio::test]
async fn tier_one_limits_do_not_trap_toklock_in_the_slow_lane() {
    // Tier 1: 50 RPM, 30k input and 8k output tokens a minute. The output bucket is always
    // under 10,000, which kept the original at one request at a time.
    let mock = MockConfig {
        requests_per_minute: 50,
        input_tokens_per_minute: 30_000,
        output_tokens_per_minute: 8_000,
        tokens_per_sec: 40.0,
        default_output_tokens: 20,
        ..MockConfig::default()
    };
    let pair = Pair::start(mock, |_| {}).await;
    let run = Duration::from_millis(1200);
    let tally = run_agents(&pair, &[("tier1", 6)], run, vec![]).await;
    assert!(non_ok(&tally).is_empty(), "{:?}", non_ok(&tally));
    assert_eq!(pair.mock.peak_concurrency(), 3);
}

/// Sends a request for `agent` into an empty bucket and waits until the upstream has answered
/// it with a 429: the lane is paused and the request waits at the front of its queue.
async fn meets_a_429(pair: &Pair, agent: &str) -> tokio::task::JoinHandle<Reply> {
    let url = pair.url("/v1/messages");
    let request = spawn_messages(url, SONNET, &[("x-toklock-agent", agent)]);
    let limited = || pair.mock.rate_limited_count() >= 1;
    assert!(eventually(Duration::from_secs(5), limited).await);
    request
}

#[tokio::test]
async fn a_429_goes_back_to_the_front_and_the_caller_never_sees_it() {
    // One request a second, starting empty: the first call gets a 429 with retry-after.
    let pair = Pair::start(empty_bucket(60), |_| {}).await;
    let first = meets_a_429(&pair, "first").await;
    let url = pair.url("/v1/messages");
    // Others arrive while the lane is paused; none may jump ahead of the requeued request.
    let others: Vec<_> = ["second", "third"]
        .into_iter()
        .map(|agent| spawn_messages(url.clone(), SONNET, &[("x-toklock-agent", agent)]))
        .collect();
    let (status, headers, _) = first.await.unwrap();
    assert_eq!(status, StatusCode::OK, "the caller must not see the 429");
    let waited = header_u64(&headers, "x-toklock-queue-ms");
    assert!(
        waited >= 300,
        "the queue wait should include the pause, got {waited} ms"
    );
    for other in others {
        assert_eq!(other.await.unwrap().0, StatusCode::OK);
    }
    let served: Vec<String> = pair
        .mock
        .records()
        .into_iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| r.caller)
        .collect();
    assert_eq!(
        served.first().map(String::as_str),
        Some("first"),
        "order served: {served:?}"
    );
}

#[tokio::test]
async fn a_queued_client_that_leaves_never_reaches_the_upstream() {
    let pair = Pair::start(empty_bucket(30), |_| {}).await;
    // The first request meets an empty bucket and pauses the lane for about two seconds.
    let warm = meets_a_429(&pair, "warm").await;
    let url = pair.url("/v1/messages");
    let gone = spawn_messages(url, SONNET, &[("x-toklock-agent", "gone")]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    gone.abort();
    let _ = gone.await;
    assert_eq!(warm.await.unwrap().0, StatusCode::OK);
    // Give a cancelled request every chance to leak through before checking.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let callers: Vec<_> = pair
        .mock
        .records()
        .into_iter()
        .filter_map(|r| r.caller)
        .collect();
    assert!(
        !callers.iter().any(|c| c == "gone"),
        "a cancelled request reached the upstream: {callers:?}"
    );
}

#[tokio::test]
async fn spend_limit_and_do_not_retry_429s_reach_the_caller_at_once() {
    let mock = MockConfig {
        spend_limit_reached: true,
        ..MockConfig::default()
    };
    let pair = Pair::start(mock, |_| {}).await;
    let started = Instant::now();
    let (status, _, body) = messages(&pair, SONNET, &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        json(&body)["error"]["details"]["error_code"],
        "enforced_spend_limit_reached"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(pair.mock.records().len(), 1, "never retried");

    // The same, gzipped (the SDKs ask for gzip): still recognised, still passed on as sent.
    let mock = MockConfig {
        spend_limit_reached: true,
        gzip: true,
        ..MockConfig::default()
    };
    let pair = Pair::start(mock, |_| {}).await;
    let started = Instant::now();
    let (status, headers, body) = messages(&pair, SONNET, &[("accept-encoding", "gzip")]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(&body[..2], &[0x1f, 0x8b]);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(pair.mock.records().len(), 1, "never retried");

    // A request too big to ever fit: the mock says x-should-retry: false.
    let mock = MockConfig {
        input_tokens_per_minute: 1_000,
        ..MockConfig::default()
    };
    let pair = Pair::start(mock, |_| {}).await;
    let (status, headers, _) = messages(&pair, SONNET, &[("x-mock-input-tokens", "5000")]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["x-should-retry"], "false");
    assert_eq!(pair.mock.records().len(), 1);
}

#[tokio::test]
async fn subscription_rejections_are_not_queued_for_hours() {
    let mock = MockConfig {
        subscription: true,
        subscription_rejected: true,
        ..MockConfig::default()
    };
    let pair = Pair::start(mock, |_| {}).await;
    let started = Instant::now();
    let (status, headers, _) = messages(&pair, SONNET, &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["anthropic-ratelimit-unified-status"], "rejected");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Drains one lane (a request bucket of 2 a minute), then checks another lane is not slowed.
async fn drain_then_time_other(
    drained: &[(&str, &str)],
    other: &[(&str, &str)],
    model_drained: &str,
    model_other: &str,
) -> Duration {
    let mock = MockConfig {
        requests_per_minute: 2,
        ..MockConfig::default()
    };
    let pair = Pair::start(mock, |_| {}).await;
    for _ in 0..2 {
        let (status, _, _) = messages(&pair, model_drained, drained).await;
        assert_eq!(status, StatusCode::OK);
    }
    // The third waits about 30 s for its lane to refill; leave it queued.
    let stuck = spawn_messages(pair.url("/v1/messages"), model_drained, drained);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (status, _, _) = messages(&pair, model_other, other).await;
    assert_eq!(status, StatusCode::OK);
    let elapsed = started.elapsed();
    assert!(
        !stuck.is_finished(),
        "the drained lane should still be waiting"
    );
    stuck.abort();
    elapsed
}

#[tokio::test]
async fn two_api_keys_have_independent_budgets() {
    let elapsed = drain_then_time_other(
        &[("x-api-key", "sk-ant-key-one")],
        &[("x-api-key", "sk-ant-key-two")],
        SONNET,
        SONNET,
    )
    .await;
    assert!(
        elapsed < Duration::from_secs(2),
        "key two waited {elapsed:?} behind key one"
    );
}

#[tokio::test]
async fn a_drained_opus_budget_does_not_slow_haiku() {
    let elapsed = drain_then_time_other(&[], &[], OPUS, HAIKU).await;
    assert!(
        elapsed < Duration::from_secs(2),
        "haiku waited {elapsed:?} behind opus"
    );
}

#[tokio::test]
async fn a_drained_lane_resumes_on_partial_refill_not_full_reset() {
    // 1,000 input tokens a second. The first request leaves 500 of 60,000: full refill is
    // about a minute away, but the pause watermark (3,000) is back in about 2.5 s.
    let mock = MockConfig {
        input_tokens_per_minute: 60_000,
        ..MockConfig::default()
    };
    let pair = Pair::start(mock, |_| {}).await;
    let (status, headers, _) = messages(&pair, SONNET, &[("x-mock-input-tokens", "59500")]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(header_u64(&headers, "anthropic-ratelimit-input-tokens-remaining") < 1_000);

    let started = Instant::now();
    let (status, headers, _) = messages(&pair, SONNET, &[("x-mock-input-tokens", "100")]).await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert!(
        elapsed >= Duration::from_millis(1500),
        "the lane should have paused, took {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "paused until full refill? took {elapsed:?}"
    );
    assert!(header_u64(&headers, "x-toklock-queue-ms") >= 1500);

    // Non-inference calls never wait behind a paused lane: queue a request that needs most
    // of a minute's refill, then probe.
    let most_of_a_minute = [("x-mock-input-tokens", "59000")];
    let waiting = spawn_messages(pair.url("/v1/messages"), SONNET, &most_of_a_minute);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    assert_eq!(count_tokens(&pair).await.0, StatusCode::OK);
    let (status, headers, _) = get(&pair.url("/v1/models"), true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-toklock-queue-ms"], "0");
    assert_eq!(head(&pair.url("/")).await.0, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "pass-through calls waited {:?}",
        started.elapsed()
    );
    assert!(
        !waiting.is_finished(),
        "the big request should still be waiting for its budget"
    );
    waiting.abort();
}

#[tokio::test]
async fn overloaded_upstream_is_retried_then_passed_through() {
    let pair = Pair::start(MockConfig::default(), |c| {
        c.scheduler.overload_backoff.base = Duration::from_millis(50);
        c.scheduler.overload_backoff.cap = Duration::from_millis(200);
    })
    .await;
    pair.mock.update(|c| c.fail_next_overloaded = 2);
    let (status, _, _) = messages(&pair, SONNET, &[]).await;
    assert_eq!(status, StatusCode::OK, "two 529s are retried away");
    assert_eq!(pair.mock.overloaded_count(), 2);

    let pair = Pair::start(MockConfig::default(), |c| {
        c.scheduler.overload_retries = 1;
        c.scheduler.overload_backoff.base = Duration::from_millis(50);
        c.scheduler.overload_backoff.cap = Duration::from_millis(200);
    })
    .await;
    pair.mock.update(|c| c.fail_next_overloaded = 5);
    let (status, _, body) = messages(&pair, SONNET, &[]).await;
    assert_eq!(
        status.as_u16(),
        529,
        "after the retries the caller gets the upstream's answer"
    );
    assert_eq!(json(&body)["error"]["type"], "overloaded_error");
    assert_eq!(pair.mock.overloaded_count(), 2, "one try plus one retry");
}

#[tokio::test]
async fn max_wait_answers_504_never_429() {
    let mock = empty_bucket(1);
    let pair = Pair::start(mock, |c| c.max_wait = Some(Duration::from_millis(800))).await;
    let started = Instant::now();
    let (status, _, body) = messages(&pair, SONNET, &[]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let error = json(&body);
    assert_eq!(error["error"]["type"], "timeout_error");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--max-wait"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn queue_memory_is_capped_with_a_503() {
    let pair = Pair::start(MockConfig::default(), |c| {
        c.scheduler.max_queued_bytes = 1_000
    })
    .await;
    let big = format!("{{\"model\":\"{SONNET}\",\"max_tokens\":8,\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}", "x".repeat(2_000));
    let (status, _, body) = call(&pair.url("/v1/messages"), big, &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let error = json(&body);
    assert_eq!(error["error"]["type"], "overloaded_error");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--max-queued-bytes"));
    assert!(pair.mock.records().is_empty());
    // Small requests still go through.
    let (status, _, _) = messages(&pair, SONNET, &[]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn agent_path_prefix_is_stripped_before_forwarding() {
    let pair = Pair::start(MockConfig::default(), |_| {}).await;
    let body = message_body(SONNET, 8, false);
    let (status, headers, _) = call(&pair.url("/a/alice/v1/messages?beta=true"), body, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.contains_key("x-toklock-queue-ms"));
    let record = pair.mock.records().pop().unwrap();
    assert_eq!(record.path, "/v1/messages?beta=true");
}

#[tokio::test]
async fn status_and_metrics_report_what_happened() {
    let pair = Pair::start(empty_bucket(60), |_| {}).await;
    let (status, _, _) = messages(&pair, SONNET, &[]).await;
    assert_eq!(status, StatusCode::OK);
    get(&pair.url("/v1/models"), true).await;

    let (status, headers, body) = get(&pair.url("/toklock/metrics"), false).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(body.to_vec()).unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
    };
    assert_eq!(value("toklock_requests_total{kind=\"scheduled\"}"), 1.0);
    assert_eq!(value("toklock_requests_total{kind=\"passthrough\"}"), 1.0);
    assert!(value("toklock_upstream_rate_limited_total{action=\"requeued\"}") >= 1.0);
    assert_eq!(value("toklock_queue_wait_seconds_count"), 1.0);
    assert!(value("toklock_queue_wait_seconds_sum") > 0.3);
    assert!(!text.contains(KEY), "metrics must never carry a key");

    let (status, _, body) = get(&pair.url("/toklock/status"), false).await;
    assert_eq!(status, StatusCode::OK);
    let snapshot = json(&body);
    let lane = &snapshot["queue"]["lanes"][0];
    assert_eq!(lane["family"], "sonnet");
    assert_eq!(lane["credential"].as_str().unwrap().len(), 12);
    assert!(!body.windows(KEY.len()).any(|w| w == KEY.as_bytes()));
}

#[tokio::test]
async fn a_new_lane_probes_with_one_request_before_going_wide() {
    // The budget is empty and toklock has never heard from it: five callers at once must cost
    // one upstream 429, not one per slot.
    let pair = Pair::start(empty_bucket(120), |_| {}).await;
    let url = pair.url("/v1/messages");
    let callers: Vec<_> = (0..5)
        .map(|i| {
            spawn_messages(
                url.clone(),
                SONNET,
                &[("x-toklock-agent", &format!("agent-{i}"))],
            )
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(
        pair.mock.rate_limited_count(),
        1,
        "only the probe may meet the empty bucket"
    );
}
