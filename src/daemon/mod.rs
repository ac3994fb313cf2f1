//! The daemon, `prov-agent run`, and what it needs from its service manager.

pub mod notify;
pub mod run;
