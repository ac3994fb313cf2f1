//! Certificate providers: DescribeCertificateProvider,
//! ListCertificateProviders, UpdateCertificateProvider and
//! DeleteCertificateProvider in botocore's shapes, and
//! CreateCertificateProvider refused with what to do instead.
//!
//! On AWS a provider names a Lambda function; the emulator runs a local
//! command in its place, which only `iotcore-emulator certificate-providers
//! create NAME --command EXE` can give. So a provider is created with the
//! CLI and, from then on, seen, changed and deleted here as on AWS. An
//! update may not point the provider at another function: the command would
//! still be the old one, and a test would pass against the wrong code.

use serde_json::{json, Value};

use super::error::ApiError;
use super::pagination::{self, Order};
use super::request::ApiRequest;
use super::{ControlPlane, Reply};
use crate::registry::providers::valid_provider_name;
use crate::registry::{CertificateProviderRecord, RegistryError};

/// The `certificateProviderName` label: 1 to 128 of `[\w=,@-]`.
fn name_label(req: &ApiRequest) -> Result<&str, ApiError> {
    let name = req.label("certificateProviderName");
    if valid_provider_name(name) {
        Ok(name)
    } else {
        Err(ApiError::invalid(format!(
            "{}: certificateProviderName {name:?} must be 1 to 128 characters of [a-zA-Z0-9_=,@-]",
            req.operation
        )))
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("CertificateProvider {name} does not exist"))
}

impl ControlPlane {
    /// `arn:aws:iot:<region>:<account>:certificateprovider/<name>`
    fn certificate_provider_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:iot:{}:{}:certificateprovider/{name}",
            self.region, self.account
        )
    }
}

fn summary(cp: &ControlPlane, p: &CertificateProviderRecord) -> Value {
    json!({
        "certificateProviderName": p.certificate_provider_name,
        "certificateProviderArn": cp.certificate_provider_arn(&p.certificate_provider_name),
    })
}

/// `POST /certificate-providers/{certificateProviderName}`: refused, since
/// the emulator cannot run the Lambda function the request names.
pub(super) fn create_certificate_provider(
    _cp: &ControlPlane,
    req: &ApiRequest,
) -> Result<Reply, ApiError> {
    let name = name_label(req)?;
    let body = req.json_body()?;
    let arn = body.string("lambdaFunctionArn")?.unwrap_or("ARN");
    Err(ApiError::invalid(format!(
        "CreateCertificateProvider: the emulator cannot run Lambda function {arn}; it runs a local command in its place, so create the provider with `iotcore-emulator certificate-providers create {name} --command EXECUTABLE --lambda-function-arn {arn}` (the event on stdin, the answer on stdout, as the Lambda's), then describe, list, update or delete it here"
    )))
}

/// `GET /certificate-providers/{certificateProviderName}`
pub(super) fn describe_certificate_provider(
    cp: &ControlPlane,
    req: &ApiRequest,
) -> Result<Reply, ApiError> {
    let name = name_label(req)?;
    let p = cp
        .registry
        .certificate_provider(name)?
        .ok_or_else(|| not_found(name))?;
    Ok(Reply::Json(json!({
        "certificateProviderName": p.certificate_provider_name,
        "certificateProviderArn": cp.certificate_provider_arn(&p.certificate_provider_name),
        "lambdaFunctionArn": p.lambda_function_arn,
        "accountDefaultForOperations": p.account_default_for_operations,
        "creationDate": p.creation_date,
        "lastModifiedDate": p.last_modified_date,
    })))
}

/// `GET /certificate-providers/`: `nextToken`, `isAscendingOrder` (by name;
/// ascending unless false).
pub(super) fn list_certificate_providers(
    cp: &ControlPlane,
    req: &ApiRequest,
) -> Result<Reply, ApiError> {
    let order = match req.query_bool("isAscendingOrder")? {
        Some(false) => Order::Descending,
        _ => Order::Ascending,
    };
    let mut providers = cp.registry.certificate_providers()?;
    if order == Order::Descending {
        providers.reverse();
    }
    let (page, next) = pagination::page(
        providers,
        |p| p.certificate_provider_name.clone(),
        order,
        req.query("nextToken"),
        pagination::DEFAULT_PAGE_SIZE,
        "nextToken",
    )?;
    let mut out = json!({
        "certificateProviders": page.iter().map(|p| summary(cp, p)).collect::<Vec<_>>(),
    });
    if let Some(n) = next {
        out["nextToken"] = json!(n);
    }
    Ok(Reply::Json(out))
}

/// `PUT /certificate-providers/{certificateProviderName}`:
/// `accountDefaultForOperations` (checked as at creation) and
/// `lambdaFunctionArn`, which may only repeat the provider's own.
pub(super) fn update_certificate_provider(
    cp: &ControlPlane,
    req: &ApiRequest,
) -> Result<Reply, ApiError> {
    let op = req.operation;
    let name = name_label(req)?;
    let body = req.json_body()?;
    let operations = body.string_list("accountDefaultForOperations")?;
    let current = cp
        .registry
        .certificate_provider(name)?
        .ok_or_else(|| not_found(name))?;
    if let Some(arn) = body.string("lambdaFunctionArn")? {
        if arn != current.lambda_function_arn {
            return Err(ApiError::invalid(format!(
                "{op}: the emulator runs provider {name}'s command in place of {}, not Lambda function {arn}; to sign with other code, delete the provider and create it again with `iotcore-emulator certificate-providers create {name} --command EXECUTABLE --lambda-function-arn {arn}`",
                current.lambda_function_arn
            )));
        }
    }
    let p = cp
        .registry
        .update_certificate_provider(name, None, None, operations.as_deref())
        .map_err(|e| match e {
            RegistryError::NotFound { .. } => not_found(name),
            other => ApiError::from(other).in_operation(op),
        })?;
    Ok(Reply::Json(summary(cp, &p)))
}

/// `DELETE /certificate-providers/{certificateProviderName}`: from then on
/// CreateCertificateFromCsr is signed by the emulator's CA again.
pub(super) fn delete_certificate_provider(
    cp: &ControlPlane,
    req: &ApiRequest,
) -> Result<Reply, ApiError> {
    let name = name_label(req)?;
    if cp.registry.delete_certificate_provider(name)? {
        Ok(Reply::Json(json!({})))
    } else {
        Err(not_found(name))
    }
}
