//! Certificates: DescribeCertificate, UpdateCertificate, ListCertificates.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::error::{ApiError, ErrorKind};
use super::pagination::{self, Order};
use super::request::ApiRequest;
use super::{ControlPlane, Reply};
use crate::registry::{CertStatus, CertificateRecord};

/// A certificate id: 64 hex digits (AWS's ids are lowercase; uppercase is
/// accepted and lowercased, as the model's pattern allows it).
pub(super) fn certificate_id(req: &ApiRequest, id: &str) -> Result<String, ApiError> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(ApiError::invalid(format!(
            "{}: certificateId {id:?} must be 64 hexadecimal digits",
            req.operation
        )))
    }
}

pub(super) fn certificate_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Certificate {id} cannot be found."))
}

/// The certificate named by the path, which must exist.
fn existing_certificate(
    cp: &ControlPlane,
    req: &ApiRequest,
) -> Result<CertificateRecord, ApiError> {
    let id = certificate_id(req, req.label("certificateId"))?;
    cp.registry
        .certificate(&id)?
        .ok_or_else(|| certificate_not_found(&id))
}

/// AWS's generationId changes with every change of the certificate; the
/// emulator derives it from the id and the customer version.
fn generation_id(c: &CertificateRecord) -> String {
    let seed = format!("generation:{}:{}", c.certificate_id, c.customer_version);
    super::uuid_text(&Sha256::digest(seed.as_bytes())[..16])
}

/// What the emulator reads from the certificate itself: validity and, when
/// a registered CA issued it, that CA's id (AWS's `caCertificateId`; the
/// emulator's own root CA stands for Amazon's, which AWS does not name).
struct Parsed {
    not_before: i64,
    not_after: i64,
    ca_certificate_id: Option<String>,
}

fn parse(cp: &ControlPlane, c: &CertificateRecord) -> Result<Option<Parsed>, ApiError> {
    let Ok(p) = pem::parse(&c.certificate_pem) else {
        return Ok(None);
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(p.contents()) else {
        return Ok(None);
    };
    let issuer = cert.issuer().as_raw();
    let mut ca_certificate_id = None;
    for ca in cp.registry.ca_certificates()? {
        let Ok(ca_pem) = pem::parse(&ca.certificate_pem) else {
            continue;
        };
        if let Ok((_, ca_cert)) = x509_parser::parse_x509_certificate(ca_pem.contents()) {
            if ca_cert.subject().as_raw() == issuer && ca.certificate_id != c.certificate_id {
                ca_certificate_id = Some(ca.certificate_id);
                break;
            }
        }
    }
    Ok(Some(Parsed {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        ca_certificate_id,
    }))
}

/// `GET /certificates/{certificateId}`
pub(super) fn describe_certificate(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let c = existing_certificate(cp, req)?;
    let parsed = parse(cp, &c)?;
    let mut d = Map::new();
    d.insert(
        "certificateArn".into(),
        json!(cp.certificate_arn(&c.certificate_id)),
    );
    d.insert("certificateId".into(), json!(c.certificate_id));
    if let Some(ca) = parsed.as_ref().and_then(|p| p.ca_certificate_id.as_ref()) {
        d.insert("caCertificateId".into(), json!(ca));
    }
    d.insert("status".into(), json!(c.status.as_str()));
    d.insert("certificatePem".into(), json!(c.certificate_pem));
    d.insert("ownedBy".into(), json!(cp.account));
    // Timestamps as epoch seconds: what botocore's restJson parser reads.
    d.insert("creationDate".into(), json!(c.created_at));
    d.insert("lastModifiedDate".into(), json!(c.updated_at));
    d.insert("customerVersion".into(), json!(c.customer_version));
    d.insert("generationId".into(), json!(generation_id(&c)));
    if let Some(p) = &parsed {
        d.insert(
            "validity".into(),
            json!({"notBefore": p.not_before, "notAfter": p.not_after}),
        );
    }
    d.insert("certificateMode".into(), json!("DEFAULT"));
    Ok(Reply::Json(json!({ "certificateDescription": d })))
}

/// `PUT /certificates/{certificateId}?newStatus=...`: ACTIVE, INACTIVE or
/// REVOKED, as `Registry::set_certificate_status` (live MQTT connections of
/// a certificate leaving ACTIVE are dropped).
pub(super) fn update_certificate(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let op = req.operation;
    let id = certificate_id(req, req.label("certificateId"))?;
    let wanted = req
        .query("newStatus")
        .ok_or_else(|| ApiError::invalid(format!("{op}: newStatus is required")))?;
    let status = match wanted {
        "ACTIVE" => CertStatus::Active,
        "INACTIVE" => CertStatus::Inactive,
        "REVOKED" => CertStatus::Revoked,
        "PENDING_TRANSFER" | "PENDING_ACTIVATION" | "REGISTER_INACTIVE" => {
            return Err(ApiError::invalid(format!(
                "{op}: newStatus {wanted} is not for developer use (AWS sets it itself): use ACTIVE, INACTIVE or REVOKED"
            )))
        }
        other => {
            return Err(ApiError::invalid(format!(
                "{op}: newStatus {other:?} is not a certificate status: use ACTIVE, INACTIVE or REVOKED"
            )))
        }
    };
    let current = cp
        .registry
        .certificate_status(&id)?
        .ok_or_else(|| certificate_not_found(&id))?;
    if current == CertStatus::PendingTransfer {
        return Err(ApiError::new(
            ErrorKind::CertificateState,
            format!("{op}: certificate {id} is PENDING_TRANSFER: its status cannot change until the transfer is accepted, rejected or cancelled"),
        ));
    }
    cp.registry.set_certificate_status(&id, status)?;
    Ok(Reply::Empty)
}

/// `GET /certificates`: `pageSize`, `marker`, `isAscendingOrder` (by
/// creation date; newest first unless true).
pub(super) fn list_certificates(cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
    let size = req.query_int("pageSize", 1, pagination::MAX_PAGE_SIZE)?;
    let order = match req.query_bool("isAscendingOrder")? {
        Some(true) => Order::Ascending,
        _ => Order::Descending,
    };
    let mut certs = cp.registry.certificates()?;
    // Zero-padded so that the keys sort as (creation date, id).
    let key = |c: &CertificateRecord| format!("{:020}:{}", c.created_at.max(0), c.certificate_id);
    certs.sort_by_key(key);
    if order == Order::Descending {
        certs.reverse();
    }
    let (page, next) = pagination::page(
        certs,
        key,
        order,
        req.query("marker"),
        size.map_or(pagination::DEFAULT_PAGE_SIZE, |n| n as usize),
        "marker",
    )?;
    let certificates: Vec<Value> = page
        .iter()
        .map(|c| {
            json!({
                "certificateArn": cp.certificate_arn(&c.certificate_id),
                "certificateId": c.certificate_id,
                "status": c.status.as_str(),
                "certificateMode": "DEFAULT",
                "creationDate": c.created_at,
            })
        })
        .collect();
    let mut out = json!({ "certificates": certificates });
    if let Some(m) = next {
        out["nextMarker"] = json!(m);
    }
    Ok(Reply::Json(out))
}
