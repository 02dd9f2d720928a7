//! `--schedule token-fair` end to end (defect 8 of the original: round-robin counts requests,
//! so an agent with 40x bigger requests gets 40x the tokens). One request in flight at a
//! time, so both agents stay backlogged; the tokens each is served while both are backlogged
//! are compared with Jain's index.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use mock_anthropic::MockConfig;
use toklock::scheduler::PolicyKind;
use toklock::usage::UsageScanner;

const OUTPUT: u64 = 5;
/// Concurrent clients per agent: enough that each always has requests queued.
const WORKERS: usize = 4;

struct Agent {
    name: &'static str,
    input_tokens: u64,
}

const AGENTS: [Agent; 2] = [
    Agent {
        name: "big",
        input_tokens: 4_000,
    },
    Agent {
        name: "small",
        input_tokens: 100,
    },
];

/// Weighted tokens (input x1, output x2) served per agent, counting responses completed
/// before `run` is over, read from the responses' own usage.
async fn tokens_served(policy: PolicyKind, run: Duration) -> Vec<u64> {
    let mock = MockConfig {
        first_byte_latency: Duration::from_millis(10),
        ..MockConfig::default()
    };
    let pair = Pair::start(mock, |config| {
        config.scheduler.max_inflight = 1;
        config.scheduler.policy = policy;
    })
    .await;
    let url = pair.url("/v1/messages");
    let deadline = Instant::now() + run;
    let mut tasks = Vec::new();
    for agent in &AGENTS {
        for worker in 0..WORKERS {
            let url = url.clone();
            let name = agent.name;
            let input = agent.input_tokens.to_string();
            // Half the clients stream, half do not: both usage shapes are read.
            let stream = worker % 2 == 0;
            tasks.push(tokio::spawn(async move {
                let client = client();
                let mut served = 0u64;
                let mut requests = 0u64;
                while Instant::now() < deadline {
                    let request = post(
                        &url,
                        message_body(SONNET, 64, stream),
                        &[
                            ("x-toklock-agent", name),
                            ("x-mock-input-tokens", &input),
                            ("x-mock-output-tokens", &OUTPUT.to_string()),
                        ],
                    );
                    let (status, headers, body) = collect(send(&client, request).await).await;
                    assert_eq!(status, StatusCode::OK);
                    let mut usage = UsageScanner::for_response(status, &headers);
                    assert!(usage.is_scanning(), "{headers:?}");
                    usage.feed(&body);
                    let usage = usage.usage();
                    assert_eq!(usage.input_tokens, input.parse::<u64>().unwrap());
                    assert_eq!(usage.output_tokens, OUTPUT);
                    if Instant::now() < deadline {
                        served += usage.cost();
                        requests += 1;
                    }
                }
                (name, served, requests)
            }));
        }
    }
    let mut served = vec![0u64; AGENTS.len()];
    let mut requests = vec![0u64; AGENTS.len()];
    for task in tasks {
        let (name, tokens, count) = task.await.unwrap();
        let at = AGENTS.iter().position(|a| a.name == name).unwrap();
        served[at] += tokens;
        requests[at] += count;
    }
    // One at a time, as configured: the queue, not the upstream, decided the order.
    assert_eq!(pair.mock.peak_concurrency(), 1);
    eprintln!("{policy:?}: tokens {served:?}, requests {requests:?}");
    served
}

/// Jain's fairness index: 1.0 when all are equal, 1/n when one gets everything.
fn jain(values: &[u64]) -> f64 {
    let sum: f64 = values.iter().map(|&v| v as f64).sum();
    let squares: f64 = values.iter().map(|&v| (v as f64).powi(2)).sum();
    if squares == 0.0 {
        return 0.0;
    }
    sum * sum / (values.len() as f64 * squares)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_fair_shares_tokens_where_round_robin_shares_requests() {
    let round_robin = tokens_served(PolicyKind::RoundRobin, Duration::from_secs(2)).await;
    let [big, small] = [round_robin[0], round_robin[1]];
    assert!(
        small > 0 && big > 10 * small,
        "round-robin: {round_robin:?}"
    );
    assert!(jain(&round_robin) < 0.7, "round-robin: {round_robin:?}");

    let token_fair = tokens_served(PolicyKind::TokenFair, Duration::from_secs(3)).await;
    let [big, small] = [token_fair[0], token_fair[1]];
    // big is not starved: it gets its share, a request at a time.
    assert!(
        big >= 2 * (4_000 + 2 * OUTPUT),
        "token-fair: {token_fair:?}"
    );
    assert!(small > 0, "token-fair: {token_fair:?}");
    let index = jain(&token_fair);
    assert!(index >= 0.9, "token-fair: {token_fair:?}, Jain {index:.3}");
}
