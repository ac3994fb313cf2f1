//! The Fleet Provisioning MQTT APIs: CreateKeysAndCertificate,
//! CreateCertificateFromCsr and RegisterThing, in JSON and CBOR.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::certificate_provider::ProviderRequest;
use crate::config::{EmulatorConfig, ResponseFault, TokenReuse};
use crate::external::{ProgramError, ProgramRunner};
use crate::hook::{HookError, HookRequest};
use crate::keypool::KeyPool;
use crate::pki::{CertificateAuthority, Issued, PkiError, Validity};
use crate::policy::PolicyDocument;
use crate::registry::{
    now_unix, valid_thing_name, CertStatus, CertificateProviderRecord, CertificateRecord,
    ProvisioningOutcome, ProvisioningWrite, Registry, RegistryError, TemplateRecord, ThingRecord,
    CREATE_CERTIFICATE_FROM_CSR,
};
use crate::template::{
    self, CertStatusSpec, CertificateSpec, ExistingThing, PolicySpec, Template, ThingSpec,
};
use crate::throttle::TokenBucket;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    CreateKeysAndCertificate,
    CreateCertificateFromCsr,
    RegisterThing(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Cbor,
}

/// Recognises a request topic.
pub(crate) fn parse_topic(topic: &str) -> Option<(Api, Format)> {
    let fmt = |s: &str| match s {
        "json" => Some(Format::Json),
        "cbor" => Some(Format::Cbor),
        _ => None,
    };
    let parts: Vec<&str> = topic.split('/').collect();
    match parts.as_slice() {
        ["$aws", "certificates", "create", f] => Some((Api::CreateKeysAndCertificate, fmt(f)?)),
        ["$aws", "certificates", "create-from-csr", f] => {
            Some((Api::CreateCertificateFromCsr, fmt(f)?))
        }
        ["$aws", "provisioning-templates", name, "provision", f] => {
            Some((Api::RegisterThing((*name).to_owned()), fmt(f)?))
        }
        _ => None,
    }
}

/// A rejected request: becomes `{statusCode, errorCode, errorMessage}`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError {
        status: 400,
        code: "InvalidRequestException",
        message: message.into(),
    }
}
fn bad_token(message: impl Into<String>) -> ApiError {
    ApiError {
        status: 400,
        code: "InvalidCertificateOwnershipToken",
        message: message.into(),
    }
}
/// A thing group, thing type or billing group the template names does not
/// exist (or the type is deprecated): RegisterThing's documented
/// `ResourceRegistrationFailureException` ("the resource registration
/// failed", 400).
fn registration_failure(message: impl Into<String>) -> ApiError {
    ApiError {
        status: 400,
        code: "ResourceRegistrationFailureException",
        message: message.into(),
    }
}
fn throttling(message: impl Into<String>) -> ApiError {
    ApiError {
        status: 429,
        code: "ThrottlingException",
        message: message.into(),
    }
}
fn internal(message: impl std::fmt::Display) -> ApiError {
    ApiError {
        status: 500,
        code: "InternalFailureException",
        message: message.to_string(),
    }
}
/// A certificate the emulator's CA just issued (a fresh serial number) is
/// registered already: cannot happen unless the registry was edited.
fn ca_issued_twice(issued: &Issued) -> ApiError {
    internal(format!(
        "certificate {} the emulator's CA just issued is registered already: check the registry for hand-made rows",
        issued.certificate_id
    ))
}
impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        internal(e)
    }
}

/// Who sent the request.
pub(crate) struct Requester {
    pub client_id: String,
    pub certificate_id: String,
    /// The connection's one CreateKeysAndCertificate slot (a semaphore of
    /// one permit, shared by the connection's requests): a request finding
    /// it taken is throttled rather than queued, so that one connection
    /// cannot pile up key generations.
    pub keys_in_flight: Arc<Semaphore>,
}

pub(crate) struct Provisioner {
    registry: Registry,
    ca: Arc<CertificateAuthority>,
    token_key: hmac::Key,
    config: Arc<EmulatorConfig>,
    /// Runs hooks and certificate providers.
    programs: ProgramRunner,
    /// RSA keys for CreateKeysAndCertificate, made ahead of time.
    pub(crate) keys: Arc<KeyPool>,
    create_keys: TokenBucket,
    create_from_csr: TokenBucket,
    register: TokenBucket,
    /// Key generations and signatures running at once, at most one per
    /// CPU: requests beyond wait for a permit (a task each, no thread), so
    /// a flood neither fills the blocking thread pool nor leaves hundreds
    /// of generations for shutdown to wait for.
    pki_slots: Arc<Semaphore>,
    fault: Mutex<FaultState>,
    /// With [`EmulatorConfig::record_issued_keys`] only: every private key
    /// sent, as PEM (wiped when dropped).
    issued_keys: Option<Mutex<Vec<zeroize::Zeroizing<String>>>>,
    /// With [`EmulatorConfig::record_issued_keys`] only: every certificate
    /// ownership token sent (wiped when dropped).
    issued_tokens: Option<Mutex<Vec<zeroize::Zeroizing<String>>>>,
}

/// The response fault in force and how many requests it has counted (for
/// `DropResponses` and `ThrottleFirst`).
struct FaultState {
    fault: Option<ResponseFault>,
    counted: u32,
}

/// What the fault in force does to one request.
#[derive(Clone, Copy, Debug, Default)]
struct FaultPlan {
    /// A fault that alters accepted certificate answers.
    answer: Option<ResponseFault>,
    drop_response: bool,
    throttle: bool,
    /// Appended to the thingName of an accepted RegisterThing answer.
    thing_name_with: Option<char>,
}

/// Size of the `padding` field of an `OversizedPayload` answer: the body
/// ends up over 128 KiB whatever else it holds.
const OVERSIZE_PADDING: usize = 129 * 1024;

fn decode_body(format: Format, payload: &[u8]) -> Result<Value, ApiError> {
    if payload.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    let v: Value = match format {
        Format::Json => serde_json::from_slice(payload)
            .map_err(|e| invalid(format!("request is not valid JSON: {e}")))?,
        Format::Cbor => ciborium::from_reader(payload)
            .map_err(|e| invalid(format!("request is not a valid CBOR map: {e}")))?,
    };
    if !v.is_object() {
        return Err(invalid("request body must be an object"));
    }
    Ok(v)
}

/// Encodes a response body in the request's format.
pub(crate) fn encode_body(format: Format, v: &Value) -> Vec<u8> {
    match format {
        Format::Json => serde_json::to_vec(v).unwrap_or_default(),
        Format::Cbor => {
            let mut out = Vec::new();
            // Writing a serde_json::Value to a Vec cannot fail.
            let _ = ciborium::into_writer(v, &mut out);
            out
        }
    }
}

impl Provisioner {
    pub fn new(
        registry: Registry,
        ca: Arc<CertificateAuthority>,
        token_key: &[u8],
        config: Arc<EmulatorConfig>,
        programs: ProgramRunner,
        keys: KeyPool,
    ) -> Self {
        let t = config.throttle;
        Provisioner {
            registry,
            ca,
            keys: Arc::new(keys),
            token_key: hmac::Key::new(hmac::HMAC_SHA256, token_key),
            programs,
            create_keys: TokenBucket::new(t.create_keys_and_certificate),
            create_from_csr: TokenBucket::new(t.create_certificate_from_csr),
            register: TokenBucket::new(t.register_thing),
            pki_slots: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
            fault: Mutex::new(FaultState {
                fault: config.response_fault,
                counted: 0,
            }),
            issued_keys: config.record_issued_keys.then(|| Mutex::new(Vec::new())),
            issued_tokens: config.record_issued_keys.then(|| Mutex::new(Vec::new())),
            config,
        }
    }

    /// What hooks and providers that refused or failed wrote on stderr
    /// ([`ProgramRunner::failures`]).
    pub fn program_failures(&self) -> Vec<String> {
        self.programs.failures()
    }

    /// The private keys sent so far (empty unless
    /// [`EmulatorConfig::record_issued_keys`]).
    pub fn issued_keys(&self) -> Vec<zeroize::Zeroizing<String>> {
        self.issued_keys
            .as_ref()
            .map(|keys| keys.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// The certificate ownership tokens sent so far, by
    /// CreateKeysAndCertificate and CreateCertificateFromCsr (empty unless
    /// [`EmulatorConfig::record_issued_keys`]).
    pub fn issued_tokens(&self) -> Vec<zeroize::Zeroizing<String>> {
        self.issued_tokens
            .as_ref()
            .map(|tokens| tokens.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// Replaces the response fault and restarts its count.
    pub fn set_response_fault(&self, fault: Option<ResponseFault>) {
        let mut st = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        st.fault = fault;
        st.counted = 0;
        tracing::info!(?fault, "response fault set");
    }

    /// The current response fault.
    pub fn response_fault(&self) -> Option<ResponseFault> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner()).fault
    }

    /// Decides, when a request arrives, what the response fault does to it.
    fn fault_plan(&self) -> FaultPlan {
        let mut st = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        let mut plan = FaultPlan::default();
        match st.fault {
            Some(ResponseFault::DropResponses(n)) if st.counted < n => {
                st.counted += 1;
                plan.drop_response = true;
            }
            Some(ResponseFault::ThrottleFirst(n)) if st.counted < n => {
                st.counted += 1;
                plan.throttle = true;
            }
            Some(ResponseFault::ThingNameWith(c)) => plan.thing_name_with = Some(c),
            Some(f) if f.alters_certificate_answers() => plan.answer = Some(f),
            _ => {}
        }
        plan
    }

    /// Handles one request; returns whether it was accepted and the body,
    /// or `None` when the response fault `DropResponses` swallows the answer.
    pub async fn handle(
        self: &Arc<Self>,
        api: &Api,
        format: Format,
        payload: &[u8],
        from: &Requester,
    ) -> Option<(bool, Vec<u8>)> {
        let plan = self.fault_plan();
        let result = if plan.throttle {
            tracing::warn!(?api, "response fault ThrottleFirst: request throttled");
            Err(throttling("rate exceeded"))
        } else {
            match api {
                Api::CreateKeysAndCertificate => {
                    self.create_keys(format, payload, plan.answer, from).await
                }
                Api::CreateCertificateFromCsr => {
                    self.create_from_csr(format, payload, plan.answer, from)
                        .await
                }
                Api::RegisterThing(name) => self.register_thing(name, format, payload, from).await,
            }
        };
        if plan.drop_response {
            tracing::warn!(
                ?api,
                accepted = result.is_ok(),
                "response fault DropResponses: answer not sent"
            );
            return None;
        }
        Some(match result {
            Ok(mut v) => {
                let certificate_api = !matches!(api, Api::RegisterThing(_));
                if let (Some(c), false) = (plan.thing_name_with, certificate_api) {
                    if let Some(Value::String(name)) = v.get_mut("thingName") {
                        tracing::warn!(
                            ?api,
                            "response fault ThingNameWith: thingName answered with {c:?} appended"
                        );
                        name.push(c);
                    }
                }
                match plan.answer.filter(|_| certificate_api) {
                    Some(ResponseFault::OversizedPayload) => {
                        tracing::warn!(
                            ?api,
                            "response fault OversizedPayload: answer padded over 128 KiB"
                        );
                        if let Value::Object(m) = &mut v {
                            m.insert(
                                "padding".into(),
                                Value::String("A".repeat(OVERSIZE_PADDING)),
                            );
                        }
                        (true, encode_body(format, &v))
                    }
                    Some(ResponseFault::MalformedJson) => {
                        tracing::warn!(?api, "response fault MalformedJson: answer cut in half");
                        let mut body = encode_body(format, &v);
                        body.truncate(body.len() / 2);
                        (true, body)
                    }
                    _ => (true, encode_body(format, &v)),
                }
            }
            Err(e) => {
                tracing::info!(code = e.code, message = %e.message, "provisioning request rejected");
                let body =
                    json!({"statusCode": e.status, "errorCode": e.code, "errorMessage": e.message});
                (false, encode_body(format, &body))
            }
        })
    }

    fn throttled(bucket: &TokenBucket, api: &str) -> Result<(), ApiError> {
        if bucket.try_acquire() {
            Ok(())
        } else {
            Err(throttling(format!("rate exceeded for {api}")))
        }
    }

    /// Runs `f` on the blocking pool once one of the [`Self::pki_slots`]
    /// is free; the slot is held until `f` returns, even if the request is
    /// dropped meanwhile.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, PkiError> + Send + 'static,
    ) -> Result<Result<T, PkiError>, ApiError> {
        let slot = self
            .pki_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(internal)?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            f()
        })
        .await
        .map_err(internal)
    }

    /// Stores a new PENDING_ACTIVATION certificate and makes its token.
    /// A certificate registered already is left as it is and refused with
    /// `registered_already()`.
    fn register_new(
        &self,
        issued: &Issued,
        registered_already: impl FnOnce() -> ApiError,
    ) -> Result<String, ApiError> {
        let expires = now_unix() + self.config.token_ttl.as_secs().max(1) as i64;
        let inserted = self.registry.insert_certificate(
            &issued.certificate_id,
            &issued.certificate_pem,
            CertStatus::PendingActivation,
            Some(expires),
        )?;
        if !inserted {
            return Err(registered_already());
        }
        let token = self.token_for(&issued.certificate_id, expires);
        if let Some(tokens) = &self.issued_tokens {
            let mut tokens = tokens.lock().unwrap_or_else(|e| e.into_inner());
            tokens.push(zeroize::Zeroizing::new(token.clone()));
        }
        Ok(token)
    }

    /// `base64url(certId.expiry).base64url(HMAC-SHA256)`: unforgeable
    /// without the registry's key, bound to one certificate, expiring.
    pub(crate) fn token_for(&self, certificate_id: &str, expires: i64) -> String {
        let claims = format!("{certificate_id}.{expires}");
        let tag = hmac::sign(&self.token_key, claims.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(claims),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    fn verify_token(&self, token: &str) -> Result<String, ApiError> {
        let forged = || bad_token("certificate ownership token is not valid");
        let (claims, tag) = token.split_once('.').ok_or_else(forged)?;
        let claims = URL_SAFE_NO_PAD.decode(claims).map_err(|_| forged())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| forged())?;
        hmac::verify(&self.token_key, &claims, &tag).map_err(|_| forged())?;
        let claims = String::from_utf8(claims).map_err(|_| forged())?;
        let (cert_id, expires) = claims.split_once('.').ok_or_else(forged)?;
        let expires: i64 = expires.parse().map_err(|_| forged())?;
        if now_unix() >= expires {
            return Err(bad_token("certificate ownership token has expired"));
        }
        Ok(cert_id.to_owned())
    }

    /// The validity of a certificate issued now.
    fn validity(&self) -> Validity {
        Validity::from_now(self.config.certificate_validity)
    }

    /// The certificate id an answer carries: the true one, or under the
    /// `WrongCertificateId` fault 64 hex digits that are not the SHA-256 of
    /// the DER.
    fn answered_id(issued: &Issued, fault: Option<ResponseFault>) -> String {
        if fault == Some(ResponseFault::WrongCertificateId) {
            tracing::warn!(certificate_id = %issued.certificate_id, "response fault WrongCertificateId: answering another id");
            // Looks like an id (64 lowercase hex digits) but is the hash of other bytes.
            return crate::pki::certificate_id(&[issued.der.as_slice(), b"wrong"].concat());
        }
        issued.certificate_id.clone()
    }

    async fn create_keys(
        self: &Arc<Self>,
        format: Format,
        payload: &[u8],
        fault: Option<ResponseFault>,
        from: &Requester,
    ) -> Result<Value, ApiError> {
        // Held until the answer is made.
        let _in_flight = from.keys_in_flight.clone().try_acquire_owned().map_err(|_| {
            throttling("rate exceeded: a CreateKeysAndCertificate request of this connection is still in progress; wait for its answer")
        })?;
        Self::throttled(&self.create_keys, "CreateKeysAndCertificate")?;
        decode_body(format, payload)?;
        let ca = self.ca.clone();
        let validity = self.validity();
        let another_key = fault == Some(ResponseFault::CertificateForAnotherKey);
        if another_key {
            tracing::warn!("response fault CertificateForAnotherKey: certificate for a fresh key");
        }
        let keys = self.keys.clone();
        let (issued, key_pem) = self
            .blocking(move || {
                let key = keys.take()?;
                // The fault's second key comes from the pool too.
                let other = another_key.then(|| keys.take()).transpose()?;
                ca.issue_with_rsa_key(&key, other.as_ref(), Some(validity))
            })
            .await?
            .map_err(internal)?;
        let token = self.register_new(&issued, || ca_issued_twice(&issued))?;
        if let Some(keys) = &self.issued_keys {
            let mut keys = keys.lock().unwrap_or_else(|e| e.into_inner());
            keys.push(zeroize::Zeroizing::new(key_pem.clone()));
        }
        Ok(json!({
            "certificateId": Self::answered_id(&issued, fault),
            "certificatePem": issued.certificate_pem,
            "privateKey": key_pem,
            "certificateOwnershipToken": token,
        }))
    }

    async fn create_from_csr(
        self: &Arc<Self>,
        format: Format,
        payload: &[u8],
        fault: Option<ResponseFault>,
        from: &Requester,
    ) -> Result<Value, ApiError> {
        Self::throttled(&self.create_from_csr, "CreateCertificateFromCsr")?;
        let body = decode_body(format, payload)?;
        let csr = body
            .get("certificateSigningRequest")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                invalid("certificateSigningRequest is required and must be a PEM string")
            })?
            .to_owned();
        // While the account has a certificate provider, it signs every
        // request (AWS: "all calls to this MQTT API will invoke the
        // certificate provider").
        if let Some(provider) = self.registry.provider_for(CREATE_CERTIFICATE_FROM_CSR)? {
            return self
                .create_from_csr_by_provider(&provider, &csr, fault, from)
                .await;
        }
        let ca = self.ca.clone();
        let validity = self.validity();
        let another_key = fault == Some(ResponseFault::CertificateForAnotherKey);
        if another_key {
            tracing::warn!("response fault CertificateForAnotherKey: certificate for a fresh key");
        }
        let issued = self
            .blocking(move || ca.issue_from_csr_with(&csr, Some(validity), another_key))
            .await?
            .map_err(|e| match e {
                // "certificate signing request is invalid: <why>"
                PkiError::BadCsr(_) => invalid(e.to_string()),
                other => internal(other),
            })?;
        let token = self.register_new(&issued, || ca_issued_twice(&issued))?;
        Ok(json!({
            "certificateId": Self::answered_id(&issued, fault),
            "certificatePem": issued.certificate_pem,
            "certificateOwnershipToken": token,
        }))
    }

    /// CreateCertificateFromCsr signed by the account's certificate
    /// provider. The CSR is checked first, as for the emulator's CA, so that
    /// the provider only ever sees a valid request. A provider that fails
    /// (cannot run, times out, exits non-zero, answers no `certificatePem`
    /// or an unusable certificate) is the cloud's failure, not the device's:
    /// `InternalFailureException` (500), whose message names the provider
    /// and why (AWS documents no error for a failing provider Lambda).
    async fn create_from_csr_by_provider(
        &self,
        provider: &CertificateProviderRecord,
        csr: &str,
        fault: Option<ResponseFault>,
        from: &Requester,
    ) -> Result<Value, ApiError> {
        // Verifying the CSR's signature (RSA up to 8192 bits) is as costly
        // as the CA path's: on the same slots, off the async workers.
        let owned = csr.to_owned();
        let spki = self
            .blocking(move || crate::pki::csr_public_key(&owned).map_err(PkiError::BadCsr))
            .await?
            .map_err(|e| match e {
                PkiError::BadCsr(_) => invalid(e.to_string()),
                other => internal(other),
            })?;
        if fault == Some(ResponseFault::CertificateForAnotherKey) {
            tracing::warn!(
                "response fault CertificateForAnotherKey does not apply to certificates a certificate provider signs: ignored"
            );
        }
        let request = ProviderRequest {
            certificate_signing_request: csr,
            principal_id: &from.certificate_id,
            client_id: &from.client_id,
        };
        let signed = crate::certificate_provider::sign(&self.programs, provider, &request, &spki)
            .await
            .map_err(|e| match e {
                crate::certificate_provider::ProviderError::Run {
                    source: ProgramError::Busy(_),
                    ..
                } => throttling(crate::external::with_causes(&e)),
                e => internal(crate::external::with_causes(&e)),
            })?;
        // The insert itself refuses a certificate registered already (no
        // check before it that a concurrent request could slip past), and
        // leaves that certificate's status as it is.
        let token = self.register_new(&signed.issued, || {
            internal(format!(
                "certificate provider {} answered certificate {}, which is registered already: a provider must sign a new certificate for each request",
                provider.certificate_provider_name, signed.issued.certificate_id
            ))
        })?;
        tracing::info!(
            provider = %provider.certificate_provider_name,
            certificate_id = %signed.issued.certificate_id,
            "CreateCertificateFromCsr signed by the certificate provider"
        );
        Ok(json!({
            "certificateId": Self::answered_id(&signed.issued, fault),
            "certificatePem": signed.answer_pem,
            "certificateOwnershipToken": token,
        }))
    }

    async fn register_thing(
        self: &Arc<Self>,
        template_name: &str,
        format: Format,
        payload: &[u8],
        from: &Requester,
    ) -> Result<Value, ApiError> {
        Self::throttled(&self.register, "RegisterThing")?;
        let body = decode_body(format, payload)?;
        let token = body
            .get("certificateOwnershipToken")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("certificateOwnershipToken is required"))?;
        let mut parameters = request_parameters(&body)?;
        let record = self.enabled_template(template_name)?;
        let (cert_id, cert, token_use) = self.token_certificate(token)?;

        if let Some(exe) = &record.pre_provisioning_hook {
            let overrides = self
                .run_hook(template_name, exe, from, &cert_id, &cert, &parameters)
                .await?;
            parameters.extend(overrides);
        }

        let plan = Template::parse(&record.body)
            .and_then(|t| t.evaluate(&parameters, &cert_id))
            .map_err(template_error)?;
        let thing = match &plan.thing {
            None => None,
            Some(spec) => Some(self.planned_thing(spec)?),
        };
        let status = planned_status(plan.certificate.as_ref(), &cert_id)?;
        if let TokenUse::Replay(current) = token_use {
            // A replay repeats the registration; it never changes the
            // status the certificate has since (REVOKED, deactivated...).
            if current != status {
                return Err(bad_token(format!(
                    "certificate ownership token was already used and its certificate is now {}",
                    current.as_str()
                )));
            }
        }
        let (attach_policies, new_policies) =
            self.planned_policies(&plan.policies, template_name, &cert_id)?;
        let outcome = self.registry.apply_provisioning(&ProvisioningWrite {
            certificate_id: cert_id.clone(),
            expected_status: cert.status,
            status,
            thing: thing.clone(),
            new_policies,
            attach_policies,
        })?;
        if let ProvisioningOutcome::CertificateChanged(now) = outcome {
            return Err(match now {
                None => bad_token("the certificate of this ownership token no longer exists"),
                Some(now) => bad_token(format!(
                    "the certificate of this ownership token became {} during the registration",
                    now.as_str()
                )),
            });
        }
        let thing_name = thing.map(|t| t.thing_name).unwrap_or_default();
        Ok(json!({"thingName": thing_name, "deviceConfiguration": plan.device_configuration}))
    }

    /// The template RegisterThing names, if it exists and is enabled.
    fn enabled_template(&self, template_name: &str) -> Result<TemplateRecord, ApiError> {
        let not_found = || ApiError {
            status: 404,
            code: "ResourceNotFoundException",
            message: format!("provisioning template {template_name} does not exist or is disabled"),
        };
        if template::validate_name(template_name).is_err() {
            return Err(not_found());
        }
        self.registry
            .template(template_name)?
            .filter(|t| t.enabled)
            .ok_or_else(not_found)
    }

    /// The id and record of the certificate an ownership token names, and
    /// how the token is being used, if the token is valid and may be used.
    ///
    /// A token is for a certificate CreateKeysAndCertificate or
    /// CreateCertificateFromCsr has just made: it activates only a
    /// certificate still PENDING_ACTIVATION, never one revoked, deactivated
    /// or activated by other means since (as AWS does). A certificate its
    /// token registered already is refused too, unless
    /// [`TokenReuse::Replay`] lets the registration be repeated.
    fn token_certificate(
        &self,
        token: &str,
    ) -> Result<(String, CertificateRecord, TokenUse), ApiError> {
        let cert_id = self.verify_token(token)?;
        let cert = self
            .registry
            .certificate(&cert_id)?
            .ok_or_else(|| bad_token("the certificate of this ownership token no longer exists"))?;
        let token_use = match (cert.registered, self.config.token_reuse) {
            (true, TokenReuse::Reject) => {
                return Err(bad_token("certificate ownership token was already used"))
            }
            (true, TokenReuse::Replay) => TokenUse::Replay(cert.status),
            (false, _) if cert.status == CertStatus::PendingActivation => TokenUse::First,
            (false, _) => {
                return Err(bad_token(format!(
                    "the certificate of this ownership token is {}, not PENDING_ACTIVATION: a token activates only the certificate just created with it",
                    cert.status.as_str()
                )))
            }
        };
        Ok((cert_id, cert, token_use))
    }

    /// Runs the template's pre-provisioning hook: the parameter overrides it
    /// answers, or `AccessDenied`.
    async fn run_hook(
        &self,
        template_name: &str,
        exe: &str,
        from: &Requester,
        cert_id: &str,
        cert: &CertificateRecord,
        parameters: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        let request = HookRequest {
            claim_certificate_id: &from.certificate_id,
            certificate_id: cert_id,
            certificate_pem: &cert.certificate_pem,
            template_arn: format!(
                "arn:aws:iot:{}:{}:provisioningtemplate/{}",
                self.config.region, self.config.account, template_name
            ),
            client_id: &from.client_id,
            parameters,
        };
        crate::hook::run(&self.programs, template_name, exe, &request)
            .await
            .map_err(|e| match e {
                // Too many programs at once: the request may be retried.
                HookError::Program(ProgramError::Busy(_)) => {
                    throttling(crate::external::with_causes(&e))
                }
                HookError::Refused => ApiError {
                    status: 403,
                    code: "AccessDenied",
                    message: e.to_string(),
                },
                other => ApiError {
                    status: 403,
                    code: "AccessDenied",
                    message: crate::external::with_causes(&other),
                },
            })
    }

    /// The thing the plan creates, or the existing one after its
    /// `OverrideSettings`.
    fn planned_thing(&self, spec: &ThingSpec) -> Result<ThingRecord, ApiError> {
        if !valid_thing_name(&spec.thing_name) {
            return Err(invalid(format!(
                "thing name {:?} must be 1 to 128 characters of [a-zA-Z0-9:_-]",
                spec.thing_name
            )));
        }
        let existing = self.registry.thing(&spec.thing_name)?;
        let merged = match &existing {
            Some(t) => template::apply_overrides(
                &ExistingThing {
                    attributes: t.attributes.clone(),
                    thing_type_name: t.thing_type_name.clone(),
                    thing_groups: t.thing_groups.clone(),
                },
                spec,
            )
            .map_err(template_error)?,
            None => ExistingThing {
                attributes: spec.attributes.clone(),
                thing_type_name: spec.thing_type_name.clone(),
                thing_groups: spec.thing_groups.clone(),
            },
        };
        let thing = ThingRecord {
            thing_name: spec.thing_name.clone(),
            attributes: merged.attributes,
            thing_type_name: merged.thing_type_name,
            thing_groups: merged.thing_groups,
            billing_group: spec
                .billing_group
                .clone()
                .or_else(|| existing.as_ref().and_then(|t| t.billing_group.clone())),
            certificates: Vec::new(),
            version: 0,
        };
        self.check_registry_objects(&thing, existing.as_ref())?;
        Ok(thing)
    }

    /// The thing groups, thing type and billing group the registration
    /// gives the thing (those it has already aside) must exist, and the
    /// type must not be deprecated, as on AWS; checked before anything is
    /// written.
    fn check_registry_objects(
        &self,
        thing: &ThingRecord,
        existing: Option<&ThingRecord>,
    ) -> Result<(), ApiError> {
        let had_groups = existing.map_or(&[][..], |e| e.thing_groups.as_slice());
        for g in &thing.thing_groups {
            if !had_groups.contains(g) && self.registry.thing_group(g)?.is_none() {
                return Err(registration_failure(format!(
                    "thing group {g} named by the template does not exist"
                )));
            }
        }
        if let Some(t) = &thing.thing_type_name {
            if existing.and_then(|e| e.thing_type_name.as_ref()) != Some(t) {
                match self.registry.thing_type(t)? {
                    None => {
                        return Err(registration_failure(format!(
                            "thing type {t} named by the template does not exist"
                        )))
                    }
                    Some(r) if r.deprecated_at.is_some() => {
                        return Err(registration_failure(format!(
                            "thing type {t} named by the template is deprecated: no new thing can be given it"
                        )))
                    }
                    Some(_) => {}
                }
            }
        }
        if let Some(b) = &thing.billing_group {
            if existing.and_then(|e| e.billing_group.as_ref()) != Some(b)
                && self.registry.billing_group(b)?.is_none()
            {
                return Err(registration_failure(format!(
                    "billing group {b} named by the template does not exist"
                )));
            }
        }
        Ok(())
    }

    /// The policies the plan attaches: (existing ones by name, new ones as
    /// (name, document)). A new policy without a name is named after the
    /// template and the certificate.
    fn planned_policies(
        &self,
        policies: &[PolicySpec],
        template_name: &str,
        cert_id: &str,
    ) -> Result<PlannedPolicies, ApiError> {
        let mut attach_policies = Vec::new();
        let mut new_policies = Vec::new();
        for p in policies {
            match p {
                PolicySpec::Named(name) => {
                    if self.registry.policy(name)?.is_none() {
                        return Err(invalid(format!(
                            "policy {name} named by the template does not exist"
                        )));
                    }
                    attach_policies.push(name.clone());
                }
                PolicySpec::Document { name, document } => {
                    PolicyDocument::parse(document).map_err(|e| {
                        invalid(format!("policy document in the template is invalid: {e}"))
                    })?;
                    let name = name
                        .clone()
                        .unwrap_or_else(|| format!("{template_name}_{}", &cert_id[..16]));
                    new_policies.push((name, document.clone()));
                }
            }
        }
        Ok((attach_policies, new_policies))
    }
}

/// How RegisterThing uses an ownership token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenUse {
    /// The certificate is PENDING_ACTIVATION: the registration activates it.
    First,
    /// Under [`TokenReuse::Replay`], again for a certificate the token
    /// registered, whose status is now this one.
    Replay(CertStatus),
}

/// Policies to attach by name, and new policies as (name, document).
type PlannedPolicies = (Vec<String>, Vec<(String, String)>);

/// RegisterThing's `parameters`: a map of strings, absent or null when none.
fn request_parameters(body: &Value) -> Result<BTreeMap<String, String>, ApiError> {
    let mut parameters = BTreeMap::new();
    match body.get("parameters") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let v = v
                    .as_str()
                    .ok_or_else(|| invalid(format!("parameter {k} must be a string")))?;
                parameters.insert(k.clone(), v.to_owned());
            }
        }
        Some(_) => return Err(invalid("parameters must be a map of strings")),
    }
    Ok(parameters)
}

/// The status the plan gives the certificate: ACTIVE unless the template
/// says INACTIVE.
fn planned_status(
    certificate: Option<&CertificateSpec>,
    cert_id: &str,
) -> Result<CertStatus, ApiError> {
    Ok(match certificate {
        Some(c) if c.certificate_id != cert_id => {
            return Err(invalid(
                "the template's certificate is not the one of the ownership token",
            ))
        }
        Some(c) if matches!(c.status, CertStatusSpec::Inactive) => CertStatus::Inactive,
        _ => CertStatus::Active,
    })
}

fn template_error(e: template::TemplateError) -> ApiError {
    let code = e.error_code();
    let status = if code == "ResourceConflictsException" {
        409
    } else {
        400
    };
    ApiError {
        status,
        code,
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert_eq!(
            parse_topic("$aws/certificates/create/json"),
            Some((Api::CreateKeysAndCertificate, Format::Json))
        );
        assert_eq!(
            parse_topic("$aws/certificates/create-from-csr/cbor"),
            Some((Api::CreateCertificateFromCsr, Format::Cbor))
        );
        assert_eq!(
            parse_topic("$aws/provisioning-templates/prod/provision/json"),
            Some((Api::RegisterThing("prod".into()), Format::Json))
        );
        assert_eq!(parse_topic("$aws/certificates/create/xml"), None);
        assert_eq!(parse_topic("$aws/certificates/create/json/accepted"), None);
    }
}
