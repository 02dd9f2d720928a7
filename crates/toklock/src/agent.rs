//! Who is an agent: the key that fair queueing is keyed on.

use std::fmt;
use std::sync::Arc;

/// The name of one agent's queue. Never contains a secret.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentKey(Arc<str>);

impl AgentKey {
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        AgentKey(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
