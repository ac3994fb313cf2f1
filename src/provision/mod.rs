//! Enrollment and rotation: the journal, the flows, the credential commit.

pub mod journal;
