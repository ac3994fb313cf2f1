//! iotcore-emulator: a local stand-in for AWS IoT Core fleet provisioning.
#![forbid(unsafe_code)]
pub mod policy;
pub mod template;
