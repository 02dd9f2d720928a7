//! `--schedule token-fair`: agents share a lane by the tokens they consume, not by requests.
//!
//! A Virtual Token Counter (Sheng et al., "Fairness in Serving Large Language Models",
//! OSDI 2024), one per lane:
//!
//! * Each agent has a counter, charged with the real tokens its requests consumed as the
//!   upstream reports them ([`crate::usage`]: input and cache-creation tokens x1, output x2).
//! * The backlogged agent with the smallest counter goes next; among equal counters, the one
//!   that has waited longest since it was last served or became backlogged (so equals take
//!   turns, round-robin).
//! * An agent that comes back after a real absence (the others were served more than about a
//!   round each meanwhile) is lifted to at least the smallest counter of the agents already
//!   backlogged (or, if none is, the counter of the agent served last): idle time banks no
//!   credit, and a newcomer does not starve the others until it has caught up. An agent that
//!   is merely between its own requests (a client that sends one at a time has nothing queued
//!   while its request runs) is not lifted, so it keeps the share it is owed.
//!
//! With [`TokenFair::per_request`] every dispatch costs one and usage is ignored: that is the
//! default round-robin policy (one request per agent per turn).
//!
//! Costs are never guessed. A dispatched request costs nothing until the upstream reports its
//! usage: for a stream, its input as soon as the stream opens (`message_start`) and its output
//! as `message_delta`s arrive; for a JSON response, when its body has arrived. So an agent may
//! be ahead by the cost of the requests it has in flight, at most `max_inflight` of them,
//! on top of the paper's bound (two backlogged agents' service differs by at most about twice
//! the largest request's cost). Bodies whose usage cannot be read (compressed, errors) charge
//! nothing.
//!
//! Memory: an agent's counter is kept while it has queued or in-flight requests (a charge may
//! still come). Once it has neither and has been away for a round, the counter is dropped if
//! it is no higher than the lift it would get on coming back (then forgetting it loses
//! nothing). A counter higher
//! than that is debt still to work off: it is kept, so that a one-request-at-a-time agent
//! (every Claude Code agent) cannot shed its debt by going idle between turns. Idle debtors
//! are capped at [`MAX_IDLE_DEBTORS`] per lane, the smallest debts dropped first, and a whole
//! lane's counters go when the lane is forgotten.

use std::collections::HashMap;

use crate::agent::AgentKey;
use crate::scheduler::Policy;

/// Agents with neither queued nor in-flight requests whose counters are kept per lane.
pub const MAX_IDLE_DEBTORS: usize = 1024;

#[derive(Debug, Default)]
pub struct TokenFair {
    accounts: HashMap<AgentKey, Account>,
    /// Counter of the agent picked last: no backlogged agent is below it, and an agent that
    /// becomes backlogged when none is gets lifted to it.
    floor: u64,
    /// Ticks on every activation and pick; orders equal counters.
    clock: u64,
    /// Requests picked so far in this lane: how much service others got while an agent was
    /// away, which decides whether it is lifted on its return.
    picks: u64,
    /// Charge one unit per dispatched request instead of reported tokens: round-robin.
    per_request: bool,
}

#[derive(Debug, Clone, Copy)]
struct Account {
    /// Weighted tokens charged, plus lifts.
    counter: u64,
    /// Has queued requests (between `activate` and `deactivate`).
    backlogged: bool,
    /// `clock` when last picked or backlogged: among equal counters, the smallest goes first.
    turn: u64,
    /// Dispatched and not finished: charges may still come.
    outstanding: u32,
    /// `picks` when the agent last ran out of work (nothing queued, nothing in flight).
    away_since: u64,
}

impl Account {
    fn idle(&self) -> bool {
        !self.backlogged && self.outstanding == 0
    }
}

impl TokenFair {
    /// Fair by the tokens each agent's requests consumed.
    pub fn new() -> TokenFair {
        TokenFair::default()
    }

    /// Fair by requests: every dispatch costs one, so backlogged agents take turns. Unlike a
    /// plain ring, an agent that sends one request at a time keeps its place while its
    /// request runs, instead of rejoining at the back each time.
    pub fn per_request() -> TokenFair {
        TokenFair {
            per_request: true,
            ..TokenFair::default()
        }
    }

    /// Agents that have queued or in-flight work.
    fn active_agents(&self) -> u64 {
        self.accounts.values().filter(|a| !a.idle()).count() as u64
    }

    /// Whether an agent with no work has been gone longer than a pause between its own
    /// requests: the others have had about a round each since.
    fn away(&self, account: &Account) -> bool {
        self.away_given(account, self.active_agents())
    }

    /// `away`, with the count of active agents already taken (it costs a scan).
    fn away_given(&self, account: &Account, active_agents: u64) -> bool {
        account.idle() && self.picks.saturating_sub(account.away_since) > active_agents + 1
    }

    /// The agent's counter, if it is remembered.
    pub fn counter(&self, agent: &AgentKey) -> Option<u64> {
        self.accounts.get(agent).map(|account| account.counter)
    }

    /// Agents whose counters are remembered.
    pub fn remembered(&self) -> usize {
        self.accounts.len()
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Drops the agent's counter if it is idle and owes nothing.
    fn forget_if_settled(&mut self, agent: &AgentKey) {
        let Some(account) = self.accounts.get(agent) else {
            return;
        };
        if !account.idle() {
            return;
        }
        if account.counter <= self.floor && self.away(account) {
            self.accounts.remove(agent);
        } else if self.accounts.len() > MAX_IDLE_DEBTORS {
            self.trim_idle();
        }
    }

    /// Drops every idle counter at or below the floor, then the smallest idle debts beyond
    /// the cap (down to half of it, so this runs rarely).
    fn trim_idle(&mut self) {
        let floor = self.floor;
        // Counted once: per account it would make every trim quadratic in the agents kept.
        let active = self.active_agents();
        let settled: Vec<AgentKey> = self
            .accounts
            .iter()
            .filter(|(_, account)| account.counter <= floor && self.away_given(account, active))
            .map(|(agent, _)| agent.clone())
            .collect();
        for agent in settled {
            self.accounts.remove(&agent);
        }
        let mut idle: Vec<(u64, AgentKey)> = self
            .accounts
            .iter()
            .filter(|(_, account)| account.idle())
            .map(|(agent, account)| (account.counter, agent.clone()))
            .collect();
        if idle.len() <= MAX_IDLE_DEBTORS {
            return;
        }
        idle.sort_unstable();
        let excess = idle.len() - MAX_IDLE_DEBTORS / 2;
        for (_, agent) in idle.into_iter().take(excess) {
            self.accounts.remove(&agent);
        }
    }
}

impl Policy for TokenFair {
    fn activate(&mut self, agent: &AgentKey) {
        let known = self.accounts.get(agent).copied();
        if known.is_some_and(|a| a.backlogged) {
            return;
        }
        // An agent that comes back before the others have had about one round each was not
        // away: it was between its own requests (a client that sends one at a time has
        // nothing queued while its request runs). Lifting it would erase the share it is
        // owed; only a real absence, while others were served, banks credit to take away.
        let continuous = known.is_some_and(|a| !self.away(&a));
        let lift = self
            .accounts
            .values()
            .filter(|account| account.backlogged)
            .map(|account| account.counter)
            .min()
            .unwrap_or(self.floor);
        let turn = self.tick();
        let account = self.accounts.entry(agent.clone()).or_insert(Account {
            counter: 0,
            backlogged: false,
            turn,
            outstanding: 0,
            away_since: 0,
        });
        if !continuous {
            account.counter = account.counter.max(lift);
            account.turn = turn;
        }
        account.backlogged = true;
    }

    fn deactivate(&mut self, agent: &AgentKey) {
        let picks = self.picks;
        if let Some(account) = self.accounts.get_mut(agent) {
            account.backlogged = false;
            if account.idle() {
                account.away_since = picks;
            }
        }
        self.forget_if_settled(agent);
    }

    fn pick(&mut self) -> Option<AgentKey> {
        let (agent, counter) = self
            .accounts
            .iter()
            .filter(|(_, account)| account.backlogged)
            .min_by_key(|(_, account)| (account.counter, account.turn))
            .map(|(agent, account)| (agent.clone(), account.counter))?;
        let turn = self.tick();
        self.picks += 1;
        if let Some(account) = self.accounts.get_mut(&agent) {
            account.turn = turn;
        }
        if counter > self.floor {
            self.floor = counter;
            // Idle debts the floor has caught up with are settled now.
            if self.accounts.values().any(|account| account.idle()) {
                self.trim_idle();
            }
        }
        Some(agent)
    }

    fn dispatched(&mut self, agent: &AgentKey, _body_bytes: u64) {
        let floor = self.floor;
        let turn = self.clock;
        let account = self.accounts.entry(agent.clone()).or_insert(Account {
            counter: floor,
            backlogged: false,
            turn,
            outstanding: 0,
            away_since: 0,
        });
        account.outstanding = account.outstanding.saturating_add(1);
        if self.per_request {
            account.counter = account.counter.saturating_add(1);
        }
    }

    fn charge(&mut self, agent: &AgentKey, tokens: u64) {
        if self.per_request {
            return;
        }
        if let Some(account) = self.accounts.get_mut(agent) {
            account.counter = account.counter.saturating_add(tokens);
        }
    }

    fn finished(&mut self, agent: &AgentKey) {
        let picks = self.picks;
        if let Some(account) = self.accounts.get_mut(agent) {
            account.outstanding = account.outstanding.saturating_sub(1);
            if account.idle() {
                account.away_since = picks;
            }
        }
        self.forget_if_settled(agent);
    }

    fn counters(&self) -> Vec<(AgentKey, u64)> {
        // Request counts are not token shares; round-robin has nothing worth showing.
        if self.per_request {
            return Vec::new();
        }
        self.accounts
            .iter()
            .map(|(agent, account)| (agent.clone(), account.counter))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str) -> AgentKey {
        AgentKey::new(name)
    }

    /// Dispatches one request for the picked agent and charges it at once (as if its usage
    /// arrived before the next pick).
    fn serve(policy: &mut TokenFair, cost: impl Fn(&str) -> u64) -> String {
        let picked = policy.pick().expect("someone is backlogged");
        policy.dispatched(&picked, 0);
        policy.charge(&picked, cost(picked.as_str()));
        policy.finished(&picked);
        picked.as_str().to_string()
    }

    #[test]
    fn forty_times_bigger_requests_get_a_fortieth_of_the_dispatches() {
        let mut policy = TokenFair::new();
        policy.activate(&agent("big"));
        policy.activate(&agent("small"));
        let cost = |name: &str| if name == "big" { 40_000 } else { 1_000 };
        let mut big = 0u64;
        let mut small = 0u64;
        for _ in 0..4_100 {
            match serve(&mut policy, cost).as_str() {
                "big" => big += 1,
                _ => small += 1,
            }
        }
        // 4 100 dispatches: about 100 big and 4 000 small.
        assert!((98..=102).contains(&big), "big {big}, small {small}");
        // Tokens served stay within one big request of each other.
        let gap = (big * 40_000).abs_diff(small * 1_000);
        assert!(gap <= 40_000, "gap {gap}");
        // Both stay backlogged, so both are remembered.
        assert_eq!(policy.remembered(), 2);
    }

    #[test]
    fn equal_costs_take_turns() {
        let mut policy = TokenFair::new();
        for name in ["a", "b", "c"] {
            policy.activate(&agent(name));
        }
        let order: Vec<String> = (0..9).map(|_| serve(&mut policy, |_| 10)).collect();
        assert_eq!(order, ["a", "b", "c", "a", "b", "c", "a", "b", "c"]);
        // Before any usage has arrived, counters are all zero: still round-robin.
        let mut policy = TokenFair::new();
        for name in ["a", "b"] {
            policy.activate(&agent(name));
        }
        let mut picks = Vec::new();
        for _ in 0..4 {
            let picked = policy.pick().unwrap();
            policy.dispatched(&picked, 0);
            picks.push(picked.as_str().to_string());
        }
        assert_eq!(picks, ["a", "b", "a", "b"]);
    }

    #[test]
    fn an_agent_that_becomes_backlogged_is_lifted_to_the_minimum() {
        let mut policy = TokenFair::new();
        policy.activate(&agent("a"));
        policy.activate(&agent("b"));
        let cost = |_: &str| 1_000;
        for _ in 0..100 {
            serve(&mut policy, cost);
        }
        let a = policy.counter(&agent("a")).unwrap();
        let b = policy.counter(&agent("b")).unwrap();
        assert_eq!((a, b), (50_000, 50_000));

        // A newcomer starts at the smallest backlogged counter, not at zero: it does not get
        // 50 turns in a row.
        policy.activate(&agent("late"));
        assert_eq!(policy.counter(&agent("late")), Some(50_000));
        let order: Vec<String> = (0..6).map(|_| serve(&mut policy, cost)).collect();
        for name in ["a", "b", "late"] {
            assert_eq!(order.iter().filter(|n| *n == name).count(), 2, "{order:?}");
        }

        // An agent idle for a while banks no credit either.
        policy.deactivate(&agent("b"));
        for _ in 0..20 {
            serve(&mut policy, cost);
        }
        policy.activate(&agent("b"));
        let min = ["a", "late"]
            .iter()
            .map(|name| policy.counter(&agent(name)).unwrap())
            .min()
            .unwrap();
        assert_eq!(policy.counter(&agent("b")), Some(min));
        let order: Vec<String> = (0..3).map(|_| serve(&mut policy, cost)).collect();
        assert_eq!(order.iter().filter(|n| *n == "b").count(), 1, "{order:?}");
    }

    #[test]
    fn alone_on_the_lane_the_floor_follows_the_served_agent() {
        let mut policy = TokenFair::new();
        policy.activate(&agent("a"));
        for _ in 0..10 {
            serve(&mut policy, |_| 500);
        }
        policy.deactivate(&agent("a"));
        // Nobody backlogged: a newcomer is lifted to the last served agent's counter at its
        // pick, so it cannot claim the lane's whole past.
        policy.activate(&agent("b"));
        assert_eq!(policy.counter(&agent("b")), Some(4_500));
    }

    #[test]
    fn counters_are_forgotten_without_work_and_debts_are_kept() {
        let mut policy = TokenFair::new();
        policy.activate(&agent("a"));
        policy.activate(&agent("b"));
        // a is served; its usage has not arrived yet when its queue empties.
        let first = policy.pick().unwrap();
        assert_eq!(first, agent("a"));
        policy.dispatched(&first, 0);
        policy.deactivate(&first);
        // In flight: remembered, so the charge lands.
        assert_eq!(policy.counter(&first), Some(0));
        policy.charge(&first, 5_000);
        policy.finished(&first);
        // Idle, but 5 000 ahead of b: a one-request-at-a-time agent keeps its debt between
        // turns and comes back behind b.
        assert_eq!(policy.counter(&first), Some(5_000));
        policy.activate(&first);
        assert_eq!(serve(&mut policy, |_| 1_000), "b");
        assert_eq!(serve(&mut policy, |_| 1_000), "b");

        // b's queue empties and its last request ends. Between its own requests it keeps
        // its counter; once a has been served for a round meanwhile, b is away, at or below
        // the floor, and its counter goes (coming back, it would be lifted that high anyway).
        policy.deactivate(&agent("b"));
        assert!(policy.counter(&agent("b")).is_some_and(|c| c <= 5_000));
        serve(&mut policy, |_| 1_000); // a, floor 5 000
        serve(&mut policy, |_| 1_000); // a
        assert!(policy.counter(&agent("b")).is_some(), "not away yet");
        serve(&mut policy, |_| 1_000); // a: b has been away a round
        assert_eq!(policy.counter(&agent("b")), None);
        policy.deactivate(&agent("a"));
        assert_eq!(policy.remembered(), 1, "a's 1 000 of debt is kept");
        // Unknown agents: no-ops, no entries.
        policy.charge(&agent("ghost"), 7);
        policy.finished(&agent("ghost"));
        policy.deactivate(&agent("ghost"));
        assert_eq!(policy.counter(&agent("ghost")), None);
        assert_eq!(policy.pick(), None);
    }

    #[test]
    fn idle_debtors_are_capped() {
        let mut policy = TokenFair::new();
        for i in 0..(3 * MAX_IDLE_DEBTORS) {
            let name = agent(&format!("a{i}"));
            policy.activate(&name);
            let picked = policy.pick().unwrap();
            assert_eq!(picked, name);
            policy.dispatched(&picked, 0);
            policy.deactivate(&picked);
            // Each leaves owing more than the floor.
            policy.charge(&picked, 1_000 + i as u64);
            policy.finished(&picked);
            assert!(policy.remembered() <= MAX_IDLE_DEBTORS + 1);
        }
        // The biggest debts are the ones kept.
        let last = agent(&format!("a{}", 3 * MAX_IDLE_DEBTORS - 1));
        assert!(policy.counter(&last).is_some());
        assert_eq!(policy.counter(&agent("a0")), None);
    }

    /// A client that sends one request at a time has nothing queued while its request runs.
    /// It must keep what it is owed across that gap: a big agent that always has work, and
    /// two small one-at-a-time agents, end up with similar token shares.
    #[test]
    fn one_request_at_a_time_agents_keep_what_they_are_owed() {
        let mut policy = TokenFair::new();
        let (big, b, c) = (agent("big"), agent("b"), agent("c"));
        for name in [&big, &b, &c] {
            policy.activate(name);
        }
        let cost = |name: &AgentKey| if *name == big { 40_000 } else { 1_000 };
        let mut tokens: HashMap<AgentKey, u64> = HashMap::new();
        // One slot. A small agent's request leaves its queue empty; when it finishes, the
        // slot is handed on before the client's next request arrives.
        let mut returning: Option<AgentKey> = None;
        for _ in 0..400 {
            let picked = policy.pick().unwrap();
            policy.dispatched(&picked, 0);
            if picked != big {
                policy.deactivate(&picked);
            }
            policy.charge(&picked, cost(&picked));
            policy.finished(&picked);
            *tokens.entry(picked.clone()).or_default() += cost(&picked);
            if let Some(back) = returning.take() {
                policy.activate(&back);
            }
            if picked != big {
                returning = Some(picked);
            }
        }
        let (big_t, b_t, c_t) = (tokens[&big], tokens[&b], tokens[&c]);
        assert!(
            big_t <= 2 * b_t.min(c_t) + 40_000,
            "big {big_t}, b {b_t}, c {c_t}"
        );
    }
}
