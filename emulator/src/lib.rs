//! iotcore-emulator: a local stand-in for the parts of AWS IoT Core that
//! fleet provisioning touches: mutual TLS, MQTT 3.1.1 and 5, IoT policies,
//! a certificate and thing registry in SQLite, the Fleet Provisioning
//! MQTT APIs, and part of the control-plane HTTP API that boto3 speaks
//! (loopback only: SigV4 signatures are not checked).
#![forbid(unsafe_code)]

mod broker;
mod certificate_provider;
pub mod config;
mod control;
mod csr;
mod emulator;
mod external;
mod hook;
pub mod jobs;
mod keypool;
pub mod link;
mod listener;
mod mqtt;
mod outbound;
pub mod packet_log;
pub mod pki;
pub mod policy;
mod provisioning;
pub mod registry;
mod retained;
mod rotation;
mod subscriptions;
pub mod template;
pub mod throttle;
pub mod tls;
pub mod topic;

pub use broker::{MAX_CLIENT_ID, MAX_SUBSCRIBE_FILTERS};
pub use config::{
    EmulatorConfig, ResponseFault, ThrottleConfig, TokenReuse, AWS_NOT_AFTER_UNIX,
    DEFAULT_CERTIFICATE_VALIDITY, DEFAULT_RSA_KEY_POOL, ROTATION_REPORT_FILTER,
};
pub use emulator::{Credential, DataDir, Emulator, EmulatorError, EmulatorHandle};
pub use jobs::{JobExecutionRecord, JobExecutionStatus, JobRecord};
pub use link::{LinkError, LinkSimulation};
#[cfg(fuzzing)]
pub use mqtt::fuzz_decode;
pub use mqtt::MAX_PAYLOAD;
pub use packet_log::{ConnectionLog, LoggedPacket, PacketRecord};
pub use registry::{
    AttributeUpdate, BillingGroupRecord, CertStatus, CertificateProviderRecord, CertificateRecord,
    NewThingGroup, PolicyRecord, Registry, RegistryError, TemplateRecord, ThingGroupRecord,
    ThingRecord, ThingTypeRecord, ThingUpdate, CREATE_CERTIFICATE_FROM_CSR,
};
pub use retained::MAX_RETAINED_TOPICS;
pub use subscriptions::MAX_SUBSCRIPTIONS_PER_CONNECTION;
pub use throttle::Rate;
