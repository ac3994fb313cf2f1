//! The provisioning flow shared by `enroll` and `rotate`: obtain a key and
//! certificate, RegisterThing, prove the new credential, commit.
//!
//! The flow is a small state machine over the [`Journal`]: each phase is
//! written durably once its step is done, and a run after a crash resumes
//! from the last phase written. The device's working identity (if any) is
//! not touched before the new one has connected and made a round trip.
//!
//! Enrollment authenticates with the claim credential and runs
//! `PRODUCTION_TEMPLATE`; rotation authenticates with the current identity
//! (client id = thing name) and runs `CERT_ROTATION_TEMPLATE`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::attestation;
use super::export;
use super::identity::Identity;
use super::journal::{
    self, IssuedCertificate, Journal, KeySlots, Operation, OwnershipToken, Registration, State,
};
use super::retry::Backoff;
use super::{ProvisionError, StepTiming};
use crate::config::{Config, ProvisioningMode};
use crate::crypto::{make_csr, Certificate};
use crate::durable;
use crate::fault;
use crate::keystore::{KeyInfo, KeyLabel, KeyStore, KeyStoreError, PrivateKeyMaterial};
use crate::mqtt::endpoint::{Endpoint, EndpointError};
use crate::mqtt::{response_topics, ConnectOptions, Dialed, MqttError, Prepared, Session};

/// How long an ownership token is presented after it was issued. AWS gives
/// an hour; a margin keeps a slow RegisterThing from racing the expiry.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(55 * 60);

/// Everything one run of the flow needs.
pub(super) struct Flow<'a> {
    config: &'a Config,
    store: Arc<dyn KeyStore>,
    operation: Operation,
    /// The identity being replaced: rotation authenticates with it.
    current: Option<Identity>,
    serial: String,
    endpoint: Endpoint,
    backoff: Backoff,
    session: Option<Session>,
    /// The verifying connection, dialed (TCP and ClientHello) while the
    /// certificate request was in flight, for whichever certificate comes.
    dialed: Option<tokio::task::JoinHandle<Option<Dialed>>>,
    /// The verifying connection, its TLS handshake made while RegisterThing
    /// was in flight, for the certificate of this id.
    prepared: Option<(String, Prepared)>,
    /// The verifying connection, kept open for the report of retired
    /// certificates after the commit, for the certificate of this id.
    verified: Option<(String, Session)>,
    /// `enroll --force`: the current certificate could not connect, so
    /// requests go over the claim credential.
    current_refused: bool,
    pending: KeyLabel,
    pub(super) steps: Vec<StepTiming>,
    /// The commit is done but the report of retired certificates is not.
    pub(super) report_pending: bool,
    /// `[ATTESTATION] MODE = tpm`: the attestation key certificate (DER)
    /// sent with RegisterThing, read when the run starts.
    ak_certificate: Option<Vec<u8>>,
}

impl<'a> Flow<'a> {
    pub(super) fn new(
        config: &'a Config,
        store: Arc<dyn KeyStore>,
        operation: Operation,
        current: Option<Identity>,
        serial: &str,
    ) -> Result<Self, ProvisionError> {
        let current_label = current.as_ref().map(|c| c.key_label.clone());
        let endpoint = Endpoint::new(config)?;
        Ok(Self {
            config,
            store,
            operation,
            current,
            serial: serial.to_string(),
            endpoint,
            backoff: Backoff::new(config.provisioning.max_retries),
            session: None,
            dialed: None,
            prepared: None,
            verified: None,
            current_refused: false,
            report_pending: false,
            pending: Self::next_slot(config, current_label.as_deref())?,
            steps: Vec::new(),
            ak_certificate: None,
        })
    }

    /// The key-store labels of a new operation's journal: the pending key
    /// in the slot the current identity does not use, and the current key,
    /// deleted after the commit.
    pub(super) fn key_slots(&self) -> KeySlots {
        KeySlots {
            pending: self.pending.to_string(),
            retired: self.current.as_ref().map(|c| c.key_label.clone()),
        }
    }

    /// Runs the operation from the phase the journal is at to the end: one
    /// step per phase, each written durably before the next begins.
    pub(super) async fn run(&mut self, journal: &mut Journal) -> Result<Identity, ProvisionError> {
        let state_dir = self.config.state_dir.clone();
        // Fixed when the journal was made (see `key_slots`).
        self.pending = KeyLabel::new(journal.keys.pending.clone())?;
        // Before any request: a gateway that cannot prove its key's origin
        // asks the service for nothing.
        self.ak_certificate = attestation::ak_certificate(self.config)?;
        loop {
            match journal.state.clone() {
                State::Started {
                    recertify_pending_key,
                } => {
                    let issued = self.obtain(recertify_pending_key).await?;
                    journal.advance(&state_dir, issued)?;
                    fault::point("cert-issued");
                }
                State::CertIssued {
                    certificate,
                    token,
                    token_expires_at,
                    ..
                } => {
                    self.cert_issued(journal, certificate, token, token_expires_at)
                        .await?;
                }
                State::Registered(registration) => {
                    self.close_session().await;
                    self.verify(&registration).await?;
                    journal.advance(&state_dir, State::Verified(registration))?;
                    fault::point("verified");
                }
                State::Verified(registration) => {
                    self.commit(journal, &registration)?;
                    journal.advance(&state_dir, State::Committed)?;
                    fault::point("committed");
                }
                State::Committed => {
                    let identity = Identity::load(&state_dir)?
                        .ok_or(ProvisionError::CommittedWithoutIdentity)?;
                    // Other programs move to the new key before the old
                    // one goes (idempotent after a crash).
                    export::publish(self.config, &identity)?;
                    fault::point("published");
                    self.delete_retired_key(journal, &identity)?;
                    fault::point("old-key-deleted");
                    export::prune(self.config, &identity)?;
                    let abandoned = journal.abandoned_certificate_ids.clone();
                    if let Err(e) = self.report_as(&abandoned, &identity).await {
                        // The new identity is committed and works; the
                        // report waits in the journal for the next run.
                        tracing::warn!(
                            error = %crate::error::report(&e),
                            "the retired certificates could not be reported; the next run retries"
                        );
                        self.report_pending = true;
                        return Ok(identity);
                    }
                    if self.operation == Operation::Enroll
                        && self.config.provisioning.decommission_claim
                    {
                        self.decommission_claim()?;
                    }
                    Journal::clear(&state_dir)?;
                    return Ok(identity);
                }
            }
        }
    }

    /// The `CertIssued` phase: registers the issued certificate (the
    /// verifying connection dialed meanwhile) and advances the journal to
    /// `Registered`; or, when the token expired, the pending key is gone or
    /// the service refuses the token a second time, starts over.
    async fn cert_issued(
        &mut self,
        journal: &mut Journal,
        certificate: IssuedCertificate,
        token: OwnershipToken,
        token_expires_at: u64,
    ) -> Result<(), ProvisionError> {
        let state_dir = self.config.state_dir.clone();
        let key_matches = self.pending_matches(&certificate)?;
        if journal::now() >= token_expires_at || !key_matches {
            tracing::warn!("the ownership token expired or the pending key is gone: starting over");
            return self.start_over(journal, key_matches);
        }
        // The verifying connection's TCP and first TLS flight go while
        // RegisterThing is in flight; the client's answer (the new
        // certificate) waits for its outcome.
        let registered = match self.prepare_verification(&certificate) {
            Some(early) => {
                let (registered, prepared) =
                    tokio::join!(self.register(journal, &certificate, &token), early);
                self.prepared = prepared.map(|p| (certificate.id.clone(), p));
                registered
            }
            None => self.register(journal, &certificate, &token).await,
        };
        match registered {
            Ok(registration) => {
                journal.advance(&state_dir, State::Registered(registration))?;
                fault::point("registered");
                Ok(())
            }
            Err(ProvisionError::Mqtt(MqttError::Rejected { error_code, .. }))
                if journal.state.register_sent()
                    && error_code == "InvalidCertificateOwnershipToken" =>
            {
                // The first RegisterThing may have gone through with its
                // answer lost; the service will not take the token twice.
                // Start over and report this certificate for deactivation
                // once the new identity works.
                tracing::warn!(
                    "the service refused the ownership token a second time: \
                     starting over with a new certificate for the same key"
                );
                let key_matches = self.pending_matches(&certificate)?;
                self.start_over(journal, key_matches)
            }
            Err(e @ ProvisionError::Mqtt(MqttError::Rejected { .. }))
                if self.operation == Operation::Enroll && is_access_denied(&e) =>
            {
                // The pre-provisioning hook refused this certificate: a final
                // answer (nothing was registered), so nothing of the attempt
                // is kept and the device is as it was before `enroll`; the
                // next one starts afresh. Certificates of earlier attempts
                // still to be reported keep the journal (at Started).
                self.delete_pending()?;
                if journal.abandoned_certificate_ids.is_empty() {
                    Journal::clear(&state_dir)?;
                } else {
                    self.start_over(journal, false)?;
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Device keys alternate between two labels, `<DEVICE_KEY>` and
    /// `<DEVICE_KEY>.alt`: a new key is made under the one the current
    /// identity does not use, so that the commit is the atomic rewrite of
    /// identity.json alone, and the old key is deleted only after it.
    fn next_slot(config: &Config, current: Option<&str>) -> Result<KeyLabel, ProvisionError> {
        let primary = config.keystore.device_key.clone();
        if current == Some(primary.as_str()) {
            KeyLabel::new(format!("{primary}.alt")).map_err(ProvisionError::from)
        } else {
            Ok(primary)
        }
    }

    pub(super) fn state_dir(&self) -> &std::path::Path {
        &self.config.state_dir
    }

    fn timed(&mut self, name: &'static str, since: Instant) {
        self.steps.push(StepTiming {
            name,
            duration: since.elapsed(),
        });
    }

    /// Drops the attempt in the journal and remembers its certificate as
    /// abandoned. If its RegisterThing was sent (it may have gone through,
    /// the thing now existing with that certificate), or its key was kept
    /// from such an attempt, and the pending key is still the certificate's
    /// (`key_matches`), the key is kept and the next certificate is issued
    /// for it: the pre-provisioning hook admits a registration for an
    /// existing thing when the new certificate is for the key of one of its
    /// certificates, which only this device holds. Otherwise the pending key
    /// is deleted.
    fn start_over(
        &mut self,
        journal: &mut Journal,
        key_matches: bool,
    ) -> Result<(), ProvisionError> {
        if let Some(c) = journal.state.certificate() {
            if !journal.abandoned_certificate_ids.contains(&c.id) {
                journal.abandoned_certificate_ids.push(c.id.clone());
            }
        }
        let kept_before = matches!(
            journal.state,
            State::CertIssued {
                recertified: true,
                ..
            }
        );
        let recertify = key_matches && (journal.state.register_sent() || kept_before);
        if !recertify {
            self.delete_pending()?;
        }
        journal.advance(
            &self.config.state_dir,
            State::Started {
                recertify_pending_key: recertify,
            },
        )?;
        Ok(())
    }

    /// After the commit: the key of the replaced identity goes.
    fn delete_retired_key(
        &self,
        journal: &Journal,
        committed: &Identity,
    ) -> Result<(), ProvisionError> {
        let Some(old) = &journal.keys.retired else {
            return Ok(());
        };
        if *old == committed.key_label {
            return Ok(());
        }
        let label = KeyLabel::new(old.clone())?;
        match self.store.delete(&label) {
            Ok(()) => {
                tracing::info!(key = %label, "deleted the key of the replaced identity");
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn delete_pending(&self) -> Result<(), ProvisionError> {
        match self.store.delete(&self.pending) {
            Ok(()) => {
                tracing::info!(key = %self.pending, "deleted the pending key of an abandoned attempt");
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn pending_matches(&self, certificate: &IssuedCertificate) -> Result<bool, ProvisionError> {
        let cert = parse_issued(certificate)?;
        match self.store.info(&self.pending) {
            Ok(info) => Ok(info.public_key == *cert.public_key()),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    // ---- connections ---------------------------------------------------

    /// The connection requests go over: the current identity as its thing
    /// (rotate, and `enroll --force` on an enrolled device), else the claim
    /// credential. For `enroll --force` the device's own certificate is the
    /// proof, to the pre-provisioning hook, that the request for an existing
    /// thing comes from that thing's device; a current certificate that can
    /// no longer connect (deactivated, revoked, its key gone) falls back to
    /// the claim credential, which the hook admits for an existing thing only
    /// after an operator opened it for re-enrollment (templates/README.md).
    async fn connect(
        &mut self,
        filters: &[String],
    ) -> Result<(Session, &'static str), ProvisionError> {
        const CURRENT: &str = "connect with the current certificate";
        if let Some(current) = self.current.clone() {
            match self.operation {
                Operation::Rotate => {
                    let opts = self.identity_options(&current)?;
                    return Ok((Session::connect_subscribed(&opts, filters).await?, CURRENT));
                }
                Operation::Enroll if !self.current_refused => {
                    let attempt = match self.identity_options(&current) {
                        Ok(opts) => Session::connect_subscribed(&opts, filters)
                            .await
                            .map_err(ProvisionError::from),
                        Err(e) => Err(e),
                    };
                    match attempt {
                        Ok(session) => return Ok((session, CURRENT)),
                        Err(e) if e.is_retryable() => return Err(e),
                        Err(e) => {
                            tracing::warn!(
                                error = %crate::error::report(&e),
                                "the current certificate cannot connect: enrolling with the claim \
                                 credential instead (for an existing thing the template's hook \
                                 then needs an operator to open it for re-enrollment)"
                            );
                            self.current_refused = true;
                        }
                    }
                }
                Operation::Enroll => {}
            }
        }
        let opts = self.claim_options()?;
        Ok((
            Session::connect_subscribed(&opts, filters).await?,
            "connect with the claim certificate",
        ))
    }

    fn identity_options(&self, current: &Identity) -> Result<ConnectOptions, ProvisionError> {
        current.connect_options(&self.endpoint, self.store.clone())
    }

    fn claim_options(&self) -> Result<ConnectOptions, ProvisionError> {
        let cert_path = &self.config.settings.claim_cert;
        let pem = std::fs::read_to_string(cert_path).map_err(|source| {
            ProvisionError::ClaimCertificate {
                path: cert_path.clone(),
                source,
            }
        })?;
        let cert = Certificate::from_pem(&pem, &format!("CLAIM_CERT {}", cert_path.display()))
            .map_err(EndpointError::from)?;
        let key = self
            .store
            .info(&self.config.keystore.claim_key)
            .map_err(|e| match e {
                e if e.is_not_found() => ProvisionError::ClaimKeyMissing(e),
                other => other.into(),
            })?;
        // A new random client id per claim connection, not one derived from
        // the serial: every claim holder may connect as `<prefix>*`, and a
        // predictable id would let one sit on it (the service drops the
        // older connection of a client id) to learn when this gateway
        // enrolls and to keep it from finishing.
        let client_id = format!(
            "{}{}",
            self.config.provisioning.client_id_prefix,
            hex::encode(rand::random::<[u8; 16]>())
        );
        Ok(self.endpoint.options(
            "the claim credential",
            client_id,
            &cert,
            self.store.clone(),
            &key,
        )?)
    }

    /// The session requests go over, connected if need be with the
    /// SUBSCRIBE for the answers to `topic` and to RegisterThing sent right
    /// behind CONNECT: one round trip for the connection and every
    /// subscription of the flow.
    async fn session(&mut self, topic: &str) -> Result<&mut Session, ProvisionError> {
        if self.session.is_none() {
            let started = Instant::now();
            let mut filters = response_topics(topic).to_vec();
            if let Ok(register) = self.register_topic() {
                if register != topic {
                    filters.extend(response_topics(&register));
                }
            }
            let (session, step) = self.connect(&filters).await?;
            self.timed(step, started);
            self.session = Some(session);
        }
        Ok(self.session.as_mut().expect("connected above"))
    }

    /// Closes the request session and a verifying connection kept open.
    pub(super) async fn close_session(&mut self) {
        if let Some(dialed) = self.dialed.take() {
            dialed.abort();
        }
        if let Some(s) = self.session.take() {
            s.close().await;
        }
        if let Some((_, s)) = self.verified.take() {
            s.close().await;
        }
    }

    /// Runs `step` until it succeeds, fails for good, or the retries are
    /// spent. The claim session is dropped before each retry.
    async fn retrying<T>(
        &mut self,
        what: &str,
        mut step: impl AsyncFnMut(&mut Self) -> Result<T, ProvisionError>,
    ) -> Result<T, ProvisionError> {
        let mut attempt = 0;
        loop {
            match step(self).await {
                Err(e) if e.is_retryable() && attempt < self.backoff.max_retries => {
                    attempt += 1;
                    let delay = self.backoff.delay(attempt);
                    tracing::warn!(step = what, error = %crate::error::report(&e), attempt, ?delay, "retrying");
                    self.session = None;
                    tokio::time::sleep(delay).await;
                }
                Err(e) if e.is_retryable() => {
                    return Err(ProvisionError::GaveUp {
                        step: what.to_string(),
                        attempts: attempt + 1,
                        last: Box::new(e),
                    })
                }
                other => return other,
            }
        }
    }

    /// One provisioning API request on the session, with retries.
    async fn call_api(
        &mut self,
        api: &str,
        topic: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ProvisionError> {
        self.retrying(api, async |flow: &mut Self| {
            let format = flow.config.provisioning.payload_format;
            let timeout = flow.config.provisioning.response_timeout;
            let session = flow.session(topic).await?;
            Ok(session.request(api, topic, format, body, timeout).await?)
        })
        .await
    }

    /// [`Flow::call_api`] for a certificate request, the verifying
    /// connection dialed as the request goes (once the request session is
    /// up), so that its TCP and TLS round trips overlap this request and
    /// RegisterThing instead of following them.
    async fn request_certificate(
        &mut self,
        api: &str,
        topic: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ProvisionError> {
        self.retrying(api, async |flow: &mut Self| {
            flow.session(topic).await?;
            Ok(())
        })
        .await?;
        self.dial_verification();
        self.call_api(api, topic, body).await
    }

    /// Dials the verifying connection in a task of its own (best effort:
    /// without it the verification connects the ordinary way).
    fn dial_verification(&mut self) {
        if let Some(earlier) = self.dialed.take() {
            earlier.abort();
        }
        let (opts, slot) = match self.endpoint.deferred_options("the new credential") {
            Ok(dial) => dial,
            Err(e) => {
                tracing::debug!(error = %crate::error::report(&e), "the verifying connection cannot be dialed early");
                return;
            }
        };
        self.dialed = Some(tokio::spawn(async move {
            match Session::dial(opts, slot).await {
                Ok(dialed) => Some(dialed),
                Err(e) => {
                    tracing::debug!(error = %crate::error::report(&e), "the verifying connection could not be dialed early");
                    None
                }
            }
        }));
    }

    fn api_topic(&self, base: &str) -> String {
        format!(
            "{base}/{}",
            self.config.provisioning.payload_format.as_str()
        )
    }

    // ---- step 2: key and certificate ------------------------------------

    /// A certificate and ownership token for the pending key: a new key
    /// (csr mode) or the service's (keys mode); with `recertify`, the
    /// pending key already in the store, through a CSR whatever the mode.
    async fn obtain(&mut self, recertify: bool) -> Result<State, ProvisionError> {
        let keep = match recertify {
            false => None,
            true => match self.store.info(&self.pending) {
                Ok(key) => Some(key),
                // Nothing left to prove with: a fresh start.
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            },
        };
        let recertified = keep.is_some();
        let issued = match keep {
            Some(key) => self.obtain_from_csr(Some(key)).await?,
            None => {
                // A crashed attempt may have left a pending key behind.
                self.delete_pending()?;
                match self.config.provisioning.mode {
                    ProvisioningMode::Csr => self.obtain_from_csr(None).await?,
                    ProvisioningMode::Keys => self.obtain_keys().await?,
                }
            }
        };
        Ok(State::CertIssued {
            certificate: IssuedCertificate {
                id: issued.certificate_id,
                pem: issued.certificate_pem,
            },
            token: OwnershipToken::new(issued.token),
            token_expires_at: journal::now() + TOKEN_LIFETIME.as_secs(),
            register_sent: false,
            recertified,
        })
    }

    /// A certificate for a new pending key, or with `existing` for the
    /// pending key already in the store (kept whatever happens: it is the
    /// proof that this device owns the thing an earlier attempt registered).
    async fn obtain_from_csr(
        &mut self,
        existing: Option<KeyInfo>,
    ) -> Result<Issued, ProvisionError> {
        let started = Instant::now();
        let keep_key = existing.is_some();
        let key = match existing {
            Some(key) => key,
            None => self
                .store
                .generate(&self.pending, self.config.keystore.algorithm)?,
        };
        fault::point("key-generated");
        let csr = make_csr(self.store.clone(), &key, &self.serial)?;
        self.timed("make key and CSR in the key store", started);
        let topic = self.api_topic("$aws/certificates/create-from-csr");
        let body = serde_json::json!({ "certificateSigningRequest": csr });
        let started = Instant::now();
        let response = self
            .request_certificate("CreateCertificateFromCsr", &topic, &body)
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                if !keep_key {
                    self.delete_pending()?;
                }
                return Err(e);
            }
        };
        self.timed("CreateCertificateFromCsr", started);
        match Issued::parse("CreateCertificateFromCsr", response, &key.public_key) {
            Ok(issued) => Ok(issued),
            Err(e) => {
                if !keep_key {
                    self.delete_pending()?;
                }
                Err(e)
            }
        }
    }

    async fn obtain_keys(&mut self) -> Result<Issued, ProvisionError> {
        // Before the service makes a key and certificate for nothing.
        self.store.probe_import().map_err(|e| match e {
            KeyStoreError::ImportRefused { .. } => ProvisionError::KeysModeImportRefused(e),
            e => e.into(),
        })?;
        let topic = self.api_topic("$aws/certificates/create");
        let body = serde_json::json!({});
        let started = Instant::now();
        let mut response = self
            .request_certificate("CreateKeysAndCertificate", &topic, &body)
            .await?;
        self.timed("CreateKeysAndCertificate", started);

        // Take the key out of the response at once so that no other copy
        // lives on; every copy is wiped when dropped.
        let key_pem = match response.get_mut("privateKey").map(serde_json::Value::take) {
            Some(serde_json::Value::String(s)) => Zeroizing::new(s),
            _ => {
                return Err(ProvisionError::BadResponse {
                    api: "CreateKeysAndCertificate".into(),
                    detail: "privateKey is missing or not a string".into(),
                })
            }
        };
        let material = PrivateKeyMaterial::from_pem(&key_pem).map_err(|source| {
            ProvisionError::BadPrivateKey {
                api: "CreateKeysAndCertificate",
                source: Box::new(source),
            }
        })?;
        drop(key_pem);
        let public = material.public_key()?;
        // Check the certificate against the key before the key goes in.
        let check = Issued::parse("CreateKeysAndCertificate", response, &public)?;
        let started = Instant::now();
        self.store
            .import(&self.pending, &material)
            .map_err(|e| match e {
                KeyStoreError::ImportRefused { .. } => ProvisionError::KeysModeImportRefused(e),
                e => e.into(),
            })?;
        drop(material);
        fault::point("key-imported");
        self.timed("import the key into the key store", started);
        Ok(check)
    }

    // ---- step 4: RegisterThing -------------------------------------------

    fn template_and_parameters(
        &self,
    ) -> Result<(String, BTreeMap<String, String>), ProvisionError> {
        let mut parameters = BTreeMap::new();
        parameters.insert("SerialNumber".to_string(), self.serial.clone());
        match (&self.current, self.operation) {
            (Some(current), Operation::Rotate) => {
                let template = self
                    .config
                    .settings
                    .cert_rotation_template
                    .clone()
                    .ok_or(ProvisionError::NoRotationTemplate)?;
                parameters.insert("ThingName".into(), current.thing_name.clone());
                Ok((template, parameters))
            }
            _ => {
                parameters.extend(self.config.template_parameters.clone());
                Ok((self.config.settings.production_template.clone(), parameters))
            }
        }
    }

    /// RegisterThing's request topic for this flow's template.
    fn register_topic(&self) -> Result<String, ProvisionError> {
        let (template, _) = self.template_and_parameters()?;
        Ok(self.api_topic(&format!("$aws/provisioning-templates/{template}/provision")))
    }

    /// RegisterThing for `certificate` with its `token`. The journal (at
    /// CertIssued) records that the request was sent before it is.
    async fn register(
        &mut self,
        journal: &mut Journal,
        certificate: &IssuedCertificate,
        token: &OwnershipToken,
    ) -> Result<Registration, ProvisionError> {
        let (_, mut parameters) = self.template_and_parameters()?;
        if let Some(ak_certificate) = &self.ak_certificate {
            let started = Instant::now();
            parameters.extend(attestation::parameters(
                &*self.store,
                self.config,
                &self.pending,
                ak_certificate,
                &certificate.id,
            )?);
            self.timed("attest the new key (TPM2_Certify)", started);
        }
        let topic = self.register_topic()?;
        let body = serde_json::json!({
            "certificateOwnershipToken": token.expose(),
            "parameters": parameters,
        });
        let started = Instant::now();
        let state_dir = self.config.state_dir.clone();
        let response = self
            .retrying("RegisterThing", async |flow: &mut Self| {
                let format = flow.config.provisioning.payload_format;
                let timeout = flow.config.provisioning.response_timeout;
                let session = flow.session(&topic).await?;
                if let State::CertIssued {
                    register_sent: sent @ false,
                    ..
                } = &mut journal.state
                {
                    *sent = true;
                    journal.save(&state_dir)?;
                }
                fault::point("register-sent");
                Ok(session
                    .request("RegisterThing", &topic, format, &body, timeout)
                    .await?)
            })
            .await?;
        self.timed("RegisterThing", started);
        // The name goes into topics and client ids: only what AWS allows in
        // a thing name ([a-zA-Z0-9:_-], 1 to 128), so that an answer cannot
        // make the agent subscribe to a wildcard or publish elsewhere.
        let thing = response
            .get("thingName")
            .and_then(|v| v.as_str())
            .filter(|s| is_thing_name(s))
            .ok_or_else(|| ProvisionError::BadResponse {
                api: "RegisterThing".into(),
                detail: "thingName is missing or not a thing name (1 to 128 characters of \
                         a-z A-Z 0-9 : _ -)"
                    .into(),
            })?;
        // A rotation re-registers this gateway's own thing, never another.
        if let (Operation::Rotate, Some(current)) = (self.operation, &self.current) {
            if thing != current.thing_name {
                return Err(ProvisionError::BadResponse {
                    api: "RegisterThing".into(),
                    detail: format!(
                        "the rotation template answered thing {thing:?}, and this gateway is \
                         {:?}: the rotation template must re-register the current thing \
                         (ThingName parameter)",
                        current.thing_name
                    ),
                });
            }
        }
        let config = match response.get("deviceConfiguration") {
            None | Some(serde_json::Value::Null) => BTreeMap::new(),
            Some(serde_json::Value::Object(map)) => map
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect(),
            Some(_) => {
                return Err(ProvisionError::BadResponse {
                    api: "RegisterThing".into(),
                    detail: "deviceConfiguration is not an object".into(),
                })
            }
        };
        let claim_prefix = &self.config.provisioning.client_id_prefix;
        if thing.starts_with(claim_prefix.as_str()) {
            tracing::warn!(
                thing,
                prefix = %claim_prefix,
                "the thing name starts with CLIENT_ID_PREFIX: anyone with the claim credential \
                 can connect with it as client id and knock this gateway off; fix the template \
                 (`prov-agent check` reports it)"
            );
        }
        Ok(Registration {
            certificate: certificate.clone(),
            thing_name: thing.to_string(),
            device_configuration: config,
        })
    }

    // ---- step 5: prove the new credential --------------------------------

    /// How the new credential connects, as client `client_id`.
    fn new_credential_options(
        &self,
        certificate: &IssuedCertificate,
        client_id: String,
    ) -> Result<ConnectOptions, ProvisionError> {
        let cert = parse_issued(certificate)?;
        let key = self.store.info(&self.pending)?;
        Ok(self.endpoint.options(
            "the new credential",
            client_id,
            &cert,
            self.store.clone(),
            &key,
        )?)
    }

    /// The first half of the verifying connection for `certificate`, up to
    /// the client's answer, which holds the certificate and so waits until
    /// RegisterThing activated it: the connection dialed during the
    /// certificate request given its certificate, else a new TCP connect
    /// and TLS handshake. `None` when it cannot be prepared (the
    /// verification then connects the ordinary way and reports what is
    /// wrong).
    fn prepare_verification(
        &mut self,
        certificate: &IssuedCertificate,
    ) -> Option<impl std::future::Future<Output = Option<Prepared>> + use<>> {
        let dialed = self.dialed.take();
        let cert = parse_issued(certificate).ok()?;
        let key = self.store.info(&self.pending).ok()?;
        let certified = self
            .endpoint
            .certified_key("the new credential", &cert, self.store.clone(), &key)
            .ok()?;
        // The client id goes in CONNECT, after the outcome is known.
        let opts = self
            .endpoint
            .options(
                "the new credential",
                String::new(),
                &cert,
                self.store.clone(),
                &key,
            )
            .ok()?;
        Some(async move {
            if let Some(Ok(Some(dialed))) = match dialed {
                Some(task) => Some(task.await),
                None => None,
            } {
                match dialed.prepare(certified).await {
                    Ok(prepared) => return Some(prepared),
                    Err(e) => tracing::debug!(
                        error = %crate::error::report(&e),
                        "the connection dialed early failed: dialing again"
                    ),
                }
            }
            match Session::prepare(&opts).await {
                Ok(prepared) => Some(prepared),
                Err(e) => {
                    tracing::debug!(error = %crate::error::report(&e), "the verifying connection could not be prepared");
                    None
                }
            }
        })
    }

    async fn verify(&mut self, registration: &Registration) -> Result<(), ProvisionError> {
        let thing = registration.thing_name.clone();
        let opts = self.new_credential_options(&registration.certificate, thing.clone())?;
        let mut prepared = self
            .prepared
            .take()
            .filter(|(id, _)| *id == registration.certificate.id)
            .map(|(_, p)| p);
        let topic = self
            .config
            .provisioning
            .verify_topic
            .replace("{thing}", &thing);
        let timeout = self.config.provisioning.response_timeout;
        let started = Instant::now();
        let certificate_id = registration.certificate.id.clone();
        self.retrying("verify the new credential", async |flow: &mut Self| {
            let filters = std::slice::from_ref(&topic);
            let mut session = match prepared.take() {
                Some(early) => match early.finish(&thing, filters, opts.connect_timeout).await {
                    Ok(session) => session,
                    Err(e) => {
                        tracing::debug!(
                            error = %crate::error::report(&e),
                            "the prepared verifying connection failed; connecting anew"
                        );
                        Session::connect_subscribed(&opts, filters).await?
                    }
                },
                None => Session::connect_subscribed(&opts, filters).await?,
            };
            let nonce = hex::encode(rand::random::<[u8; 16]>());
            let payload =
                serde_json::to_vec(&serde_json::json!({ "verify": nonce })).expect("json");
            let echoed = session
                .publish_then_receive(&topic, payload.clone(), timeout)
                .await?;
            if echoed != payload {
                return Err(ProvisionError::EchoMismatch);
            }
            // Kept for the report after the commit (a connection saved).
            flow.verified = Some((certificate_id.clone(), session));
            Ok(())
        })
        .await?;
        self.timed("verify the new credential (connect, round trip)", started);
        Ok(())
    }

    // ---- step 7: report retired certificates -------------------------------

    /// Tells the backend, as the new identity, which certificates this
    /// device no longer uses (the one a rotation replaced, or ones an
    /// interrupted enrollment gave up on), so that it can deactivate them.
    /// Sent only after the commit: until then the old certificate may still
    /// be the device's only working one.
    pub(super) async fn report_as(
        &mut self,
        abandoned: &[String],
        identity: &Identity,
    ) -> Result<(), ProvisionError> {
        let kept = self.verified.take();
        if abandoned.is_empty() {
            if let Some((_, session)) = kept {
                session.close().await;
            }
            return Ok(());
        }
        let thing = identity.thing_name.clone();
        let opts = self.identity_options(identity)?;
        let topic = self.config.rotation.report_topic.replace("{thing}", &thing);
        let body = serde_json::json!({
            "thingName": thing,
            "newCertificateId": identity.certificate_id,
            "oldCertificateIds": abandoned,
            "reason": match self.operation {
                Operation::Enroll => "enrollment",
                Operation::Rotate => "rotation",
            },
            "time": journal::now(),
        });
        let payload = serde_json::to_vec(&body).expect("json");
        let started = Instant::now();
        if let Some((id, mut session)) = kept {
            if id == identity.certificate_id {
                let timeout = self.config.provisioning.response_timeout;
                match session.publish(&topic, payload.clone(), timeout).await {
                    Ok(()) => {
                        session.close().await;
                        self.timed("report the retired certificates", started);
                        return Ok(());
                    }
                    Err(e) => tracing::debug!(
                        error = %crate::error::report(&e),
                        "the verifying connection is gone: reporting over a new one"
                    ),
                }
            } else {
                session.close().await;
            }
        }
        self.retrying(
            "report the retired certificates",
            async |_flow: &mut Self| {
                // CONNECT and PUBLISH in one flight; done at the PUBACK.
                let session = Session::connect_and_publish(&opts, &topic, payload.clone()).await?;
                session.close().await;
                Ok(())
            },
        )
        .await?;
        self.timed("report the retired certificates", started);
        Ok(())
    }

    // ---- step 6: commit ---------------------------------------------------

    /// The commit: identity.json, rewritten atomically, now names the new
    /// certificate and the new key. Idempotent after a crash.
    fn commit(
        &mut self,
        journal: &Journal,
        registration: &Registration,
    ) -> Result<Identity, ProvisionError> {
        let started = Instant::now();
        let cert = parse_issued(&registration.certificate)?;
        let key: KeyInfo = self.store.info(&self.pending)?;
        if key.public_key != *cert.public_key() {
            return Err(ProvisionError::KeyMismatch {
                key: key.reference.to_string(),
                certificate: cert.id().to_string(),
            });
        }
        let not_after = cert
            .not_after()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let identity = Identity {
            thing_name: registration.thing_name.clone(),
            certificate_id: cert.id(),
            certificate_pem: cert.to_pem(),
            key_label: key.label.to_string(),
            key_reference: key.reference.clone(),
            not_after,
            device_configuration: registration.device_configuration.clone(),
            committed_at: journal::now(),
            previous_certificate_id: journal.previous_certificate_id.clone(),
        };
        fault::stall("before-identity-write");
        identity.save(&self.config.state_dir)?;
        fault::point("identity-written");
        self.timed("commit the new identity", started);
        Ok(identity)
    }

    fn decommission_claim(&self) -> Result<(), ProvisionError> {
        match self.store.delete(&self.config.keystore.claim_key) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let cert = &self.config.settings.claim_cert;
        durable::remove_file(cert).map_err(ProvisionError::io("remove claim certificate", cert))?;
        tracing::info!("claim key and certificate decommissioned");
        Ok(())
    }
}

/// What CreateCertificateFromCsr or CreateKeysAndCertificate issued,
/// checked.
struct Issued {
    certificate_id: String,
    certificate_pem: String,
    token: Zeroizing<String>,
}

impl Issued {
    /// Refuses anything but a certificate for `public`, whose id is the
    /// SHA-256 of its DER, with a token.
    fn parse(
        api: &str,
        response: serde_json::Value,
        public: &crate::keystore::PublicKey,
    ) -> Result<Self, ProvisionError> {
        let bad = |detail: String| ProvisionError::BadResponse {
            api: api.to_string(),
            detail,
        };
        let field = |name: &str| {
            response
                .get(name)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| bad(format!("{name} is missing or not a string")))
        };
        let certificate_id = field("certificateId")?;
        let certificate_pem = field("certificatePem")?;
        let token = Zeroizing::new(field("certificateOwnershipToken")?);
        let cert = Certificate::from_pem(&certificate_pem, "certificatePem").map_err(|source| {
            ProvisionError::BadCertificate {
                api: api.to_string(),
                source,
            }
        })?;
        if cert.id() != certificate_id {
            return Err(bad(format!(
                "certificateId {certificate_id} is not the SHA-256 of the certificate ({})",
                cert.id()
            )));
        }
        if cert.public_key() != public {
            return Err(bad("the certificate is for another key than ours".into()));
        }
        Ok(Self {
            certificate_id,
            certificate_pem,
            token,
        })
    }
}

/// Fuzzing entry point: [`Issued::parse`], giving the certificate id.
#[cfg(fuzzing)]
pub fn fuzz_issued_parse(
    api: &str,
    response: serde_json::Value,
    public: &crate::keystore::PublicKey,
) -> Result<String, ProvisionError> {
    Issued::parse(api, response, public).map(|issued| issued.certificate_id)
}

/// The certificate a journal phase carries, parsed; the journal was written
/// by this agent, so one that does not parse means the state is damaged.
fn parse_issued(certificate: &IssuedCertificate) -> Result<Certificate, ProvisionError> {
    Certificate::from_pem(&certificate.pem, "the journal's certificate")
        .map_err(ProvisionError::DamagedCertificate)
}

/// What AWS IoT allows as a thing name: 1 to 128 of `a-z A-Z 0-9 : _ -`.
fn is_thing_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

/// Whether `e` is the service's AccessDenied (the pre-provisioning hook's
/// refusal).
fn is_access_denied(e: &ProvisionError) -> bool {
    matches!(e, ProvisionError::Mqtt(MqttError::Rejected { error_code, .. }) if error_code == "AccessDenied")
}

#[cfg(test)]
mod tests {
    #[test]
    fn thing_names_as_aws_allows_them() {
        for ok in ["gw_SN0042", "plant-a:gw-1", &"a".repeat(128)] {
            assert!(super::is_thing_name(ok), "{ok}");
        }
        for bad in ["", "a/b", "+", "#", "gw 1", "gw\n", "ä", &"a".repeat(129)] {
            assert!(!super::is_thing_name(bad), "{bad:?}");
        }
    }
}
