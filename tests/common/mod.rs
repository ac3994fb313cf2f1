//! Test support shared by the integration tests: each test starts its own
//! software TPM (swtpm) and its own SoftHSM token, and stops them on drop.
#![allow(dead_code)]

pub mod backend;
pub mod conformance;
pub mod device;
pub mod emulator;
pub mod pki;
pub mod softhsm;
pub mod swtpm;
