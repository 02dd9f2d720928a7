//! Regression tests for the original toklock's defects (see the reference notes), where no
//! other test already covers them. Defects 2-6, 8 and 9 are covered in `scheduling.rs` and
//! `token_fair.rs`; HTTP-date `retry-after` parsing in `ratelimit`'s unit tests.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use http::StatusCode;
use toklock::agent::FairBy;

/// Runs three client processes (8 connections, 1 and 1) for a few seconds with no agent
/// names, and returns the successful requests of each.
async fn three_processes(fair_by: FairBy) -> (u64, u64, u64) {
    let pair = Pair::start(pressured(), |c| {
        c.fair_by = fair_by;
        c.scheduler.slow_below = 2_000;
        c.scheduler.pause_below = 600;
    })
    .await;
    let addr = pair.proxy.local_addr();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/loop_client.py");
    let spawn = |threads: &str| {
        Command::new("python3")
            .arg(&script)
            .args([
                &addr.ip().to_string(),
                &addr.port().to_string(),
                threads,
                "6",
                "200",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs")
    };
    let children = [spawn("8"), spawn("1"), spawn("1")];
    let mut counts = Vec::new();
    for child in children {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let line = String::from_utf8_lossy(&output.stdout);
        let tally: serde_json::Value =
            serde_json::from_str(line.trim()).unwrap_or_else(|_| panic!("client said {line:?}"));
        let statuses = tally.as_object().unwrap();
        assert!(
            statuses.keys().all(|s| s == "200"),
            "a client saw errors: {tally}"
        );
        counts.push(tally["200"].as_u64().unwrap_or(0));
    }
    (counts[0], counts[1], counts[2])
}

/// Defect 7: fairness keyed on TCP connections gives an agent with k connections k shares.
/// By default toklock finds the client process behind each connection instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_process_with_many_connections_gets_one_share() {
    let (greedy, b, c) = three_processes(FairBy::Auto).await;
    assert!(
        greedy + b + c >= 20,
        "too little got through: {greedy} {b} {c}"
    );
    assert!(
        greedy <= b.min(c) * 3 / 2 + 2,
        "by process: greedy {greedy} vs {b}, {c}"
    );

    // The original's keying, for contrast: the same clients, one queue per connection.
    let (greedy, b, c) = three_processes(FairBy::Connection).await;
    assert!(
        greedy >= b.max(c) * 2,
        "by connection the greedy process should win: {greedy} vs {b}, {c}"
    );
}

/// CPU ticks (user + system) a process has used, from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Defect 10: the original polled every 20 ms. toklock sleeps until something happens, even
/// while a paused lane holds a queued request.
#[tokio::test]
async fn no_busy_polling_while_idle_or_paused() {
    let mock = mock_anthropic::MockServer::start(empty_bucket(1))
        .await
        .unwrap();
    let upstream = mock.url();
    let (mut child, url) = tokio::task::spawn_blocking(move || {
        spawn_toklock(
            &["--port", "0", "--log", "warn", "--upstream", &upstream],
            &[],
        )
    })
    .await
    .unwrap();
    let pid = child.id();

    let idle_before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = cpu_ticks(pid) - idle_before;

    // One request meets an empty bucket: 429 with a long retry-after, the lane pauses, the
    // request waits in its queue.
    let waiting = spawn_messages(format!("{url}/v1/messages"), SONNET, &[]);
    assert!(eventually(Duration::from_secs(5), || mock.rate_limited_count() >= 1).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let paused_before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paused = cpu_ticks(pid) - paused_before;
    assert!(!waiting.is_finished());
    waiting.abort();
    let _ = child.kill();
    let _ = child.wait();

    // A tick is 10 ms; polling every 20 ms for 2 s would cost far more than 5 ticks.
    assert!(idle <= 5, "idle toklock used {idle} CPU ticks in 2 s");
    assert!(paused <= 5, "paused toklock used {paused} CPU ticks in 2 s");
}

/// Defect 1: the original image bound 127.0.0.1, unreachable through `docker run -p`.
#[tokio::test]
async fn the_image_listens_on_all_interfaces() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Dockerfile"))
            .unwrap();
    assert!(
        dockerfile
            .lines()
            .any(|l| l.contains("TOKLOCK_HOST=0.0.0.0")),
        "the image must set TOKLOCK_HOST=0.0.0.0"
    );
    assert!(dockerfile.contains("EXPOSE 4000"));
    // And the binary accepts it: a wildcard listener answers on loopback.
    let proxy = start_proxy("http://127.0.0.1:1", |c| {
        c.listen = "0.0.0.0:0".parse().unwrap()
    })
    .await;
    assert_eq!(
        proxy.base_url(),
        format!("http://127.0.0.1:{}", proxy.local_addr().port())
    );
    let health = format!("{}/toklock/health", proxy.base_url());
    assert_eq!(get(&health, false).await.0, StatusCode::OK);
}
