//! The route table: method and path template of each operation, as in the
//! `http` member of botocore's `iot/2015-05-28/service-2.json`. A new
//! operation is one line here and a function in the file of its resource.

use std::collections::BTreeMap;

use super::certificates;
use super::error::{ApiError, ErrorKind};
use super::groups;
use super::policies;
use super::principals;
use super::providers;
use super::request::{percent_decode, ApiRequest};
use super::things;
use super::{ControlPlane, Reply};

type Handler = fn(&ControlPlane, &ApiRequest) -> Result<Reply, ApiError>;

#[derive(Debug)]
pub(crate) struct Route {
    pub method: &'static str,
    /// Segments in braces are labels (`{thingName}`).
    pub path: &'static str,
    pub operation: &'static str,
    handler: Handler,
}

pub(crate) const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/things",
        operation: "ListThings",
        handler: things::list_things,
    },
    Route {
        method: "GET",
        path: "/things/{thingName}",
        operation: "DescribeThing",
        handler: things::describe_thing,
    },
    Route {
        method: "POST",
        path: "/things/{thingName}",
        operation: "CreateThing",
        handler: things::create_thing,
    },
    Route {
        method: "PATCH",
        path: "/things/{thingName}",
        operation: "UpdateThing",
        handler: things::update_thing,
    },
    Route {
        method: "GET",
        path: "/things/{thingName}/principals",
        operation: "ListThingPrincipals",
        handler: principals::list_thing_principals,
    },
    Route {
        method: "DELETE",
        path: "/things/{thingName}/principals",
        operation: "DetachThingPrincipal",
        handler: principals::detach_thing_principal,
    },
    Route {
        method: "GET",
        path: "/principals/things",
        operation: "ListPrincipalThings",
        handler: principals::list_principal_things,
    },
    Route {
        method: "GET",
        path: "/certificates",
        operation: "ListCertificates",
        handler: certificates::list_certificates,
    },
    Route {
        method: "GET",
        path: "/certificates/{certificateId}",
        operation: "DescribeCertificate",
        handler: certificates::describe_certificate,
    },
    Route {
        method: "PUT",
        path: "/certificates/{certificateId}",
        operation: "UpdateCertificate",
        handler: certificates::update_certificate,
    },
    Route {
        method: "GET",
        path: "/certificate-providers/",
        operation: "ListCertificateProviders",
        handler: providers::list_certificate_providers,
    },
    Route {
        method: "POST",
        path: "/certificate-providers/{certificateProviderName}",
        operation: "CreateCertificateProvider",
        handler: providers::create_certificate_provider,
    },
    Route {
        method: "GET",
        path: "/certificate-providers/{certificateProviderName}",
        operation: "DescribeCertificateProvider",
        handler: providers::describe_certificate_provider,
    },
    Route {
        method: "PUT",
        path: "/certificate-providers/{certificateProviderName}",
        operation: "UpdateCertificateProvider",
        handler: providers::update_certificate_provider,
    },
    Route {
        method: "DELETE",
        path: "/certificate-providers/{certificateProviderName}",
        operation: "DeleteCertificateProvider",
        handler: providers::delete_certificate_provider,
    },
    Route {
        method: "POST",
        path: "/policies/{policyName}",
        operation: "CreatePolicy",
        handler: policies::create_policy,
    },
    Route {
        method: "GET",
        path: "/policies/{policyName}",
        operation: "GetPolicy",
        handler: policies::get_policy,
    },
    Route {
        method: "POST",
        path: "/thing-groups/{thingGroupName}",
        operation: "CreateThingGroup",
        handler: groups::create_thing_group,
    },
    Route {
        method: "GET",
        path: "/thing-groups/{thingGroupName}",
        operation: "DescribeThingGroup",
        handler: groups::describe_thing_group,
    },
    Route {
        method: "DELETE",
        path: "/thing-groups/{thingGroupName}",
        operation: "DeleteThingGroup",
        handler: groups::delete_thing_group,
    },
    Route {
        method: "GET",
        path: "/thing-groups",
        operation: "ListThingGroups",
        handler: groups::list_thing_groups,
    },
    Route {
        method: "POST",
        path: "/thing-types/{thingTypeName}",
        operation: "CreateThingType",
        handler: groups::create_thing_type,
    },
    Route {
        method: "GET",
        path: "/thing-types/{thingTypeName}",
        operation: "DescribeThingType",
        handler: groups::describe_thing_type,
    },
    Route {
        method: "DELETE",
        path: "/thing-types/{thingTypeName}",
        operation: "DeleteThingType",
        handler: groups::delete_thing_type,
    },
    Route {
        method: "POST",
        path: "/thing-types/{thingTypeName}/deprecate",
        operation: "DeprecateThingType",
        handler: groups::deprecate_thing_type,
    },
    Route {
        method: "GET",
        path: "/thing-types",
        operation: "ListThingTypes",
        handler: groups::list_thing_types,
    },
    Route {
        method: "POST",
        path: "/billing-groups/{billingGroupName}",
        operation: "CreateBillingGroup",
        handler: groups::create_billing_group,
    },
    Route {
        method: "GET",
        path: "/billing-groups/{billingGroupName}",
        operation: "DescribeBillingGroup",
        handler: groups::describe_billing_group,
    },
    Route {
        method: "DELETE",
        path: "/billing-groups/{billingGroupName}",
        operation: "DeleteBillingGroup",
        handler: groups::delete_billing_group,
    },
    Route {
        method: "GET",
        path: "/billing-groups",
        operation: "ListBillingGroups",
        handler: groups::list_billing_groups,
    },
];

/// The labels of `path` if it fits `template`; `Err` when a segment is not
/// valid percent-encoded UTF-8.
fn matches(template: &str, path: &str) -> Result<Option<BTreeMap<String, String>>, ApiError> {
    let mut labels = BTreeMap::new();
    let t: Vec<&str> = template.trim_start_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if t.len() != p.len() {
        return Ok(None);
    }
    for (ts, ps) in t.iter().zip(&p) {
        match ts.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(label) => {
                if ps.is_empty() {
                    return Ok(None);
                }
                let v = percent_decode(ps).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "{label} {ps:?} in the path is not valid percent-encoded UTF-8"
                    ))
                })?;
                labels.insert(label.to_owned(), v);
            }
            None if ts == ps => {}
            None => return Ok(None),
        }
    }
    Ok(Some(labels))
}

/// The route of a request and its labels, or the error for an unknown one:
/// 404 naming the method and path, and the methods the path does take.
pub(crate) fn route(
    method: &str,
    path: &str,
) -> Result<(&'static Route, BTreeMap<String, String>), ApiError> {
    let mut other_methods = Vec::new();
    for r in ROUTES {
        if let Some(labels) = matches(r.path, path)? {
            if r.method == method {
                return Ok((r, labels));
            }
            other_methods.push(format!("{} ({})", r.method, r.operation));
        }
    }
    let message = if other_methods.is_empty() {
        format!(
            "the emulator has no operation for {method} {path}: it serves {}",
            ROUTES
                .iter()
                .map(|r| r.operation)
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        format!(
            "the emulator has no operation for {method} {path}: that path takes {}",
            other_methods.join(", ")
        )
    };
    Err(ApiError::new(ErrorKind::UnknownOperation, message))
}

impl Route {
    pub(crate) fn handle(&self, cp: &ControlPlane, req: &ApiRequest) -> Result<Reply, ApiError> {
        (self.handler)(cp, req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: &str, path: &str) -> Result<&'static str, ApiError> {
        route(method, path).map(|(r, _)| r.operation)
    }

    #[test]
    fn every_operation_has_its_method_and_path() {
        assert_eq!(op("GET", "/things").unwrap(), "ListThings");
        assert_eq!(
            op("GET", "/certificate-providers/").unwrap(),
            "ListCertificateProviders"
        );
        assert_eq!(
            op("PUT", "/certificate-providers/ca").unwrap(),
            "UpdateCertificateProvider"
        );
        assert_eq!(op("GET", "/things/gw_1").unwrap(), "DescribeThing");
        assert_eq!(op("PATCH", "/things/gw_1").unwrap(), "UpdateThing");
        assert_eq!(op("POST", "/things/gw_1").unwrap(), "CreateThing");
        assert_eq!(
            op("GET", "/things/gw_1/principals").unwrap(),
            "ListThingPrincipals"
        );
        assert_eq!(
            op("DELETE", "/things/gw_1/principals").unwrap(),
            "DetachThingPrincipal"
        );
        assert_eq!(
            op("GET", "/principals/things").unwrap(),
            "ListPrincipalThings"
        );
        assert_eq!(op("GET", "/certificates").unwrap(), "ListCertificates");
        assert_eq!(
            op("GET", "/certificates/ab").unwrap(),
            "DescribeCertificate"
        );
        assert_eq!(op("PUT", "/certificates/ab").unwrap(), "UpdateCertificate");
        for (method, path, operation) in [
            ("POST", "/thing-groups/g1", "CreateThingGroup"),
            ("GET", "/thing-groups/g1", "DescribeThingGroup"),
            ("DELETE", "/thing-groups/g1", "DeleteThingGroup"),
            ("GET", "/thing-groups", "ListThingGroups"),
            ("POST", "/thing-types/t1", "CreateThingType"),
            ("GET", "/thing-types/t1", "DescribeThingType"),
            ("DELETE", "/thing-types/t1", "DeleteThingType"),
            ("POST", "/thing-types/t1/deprecate", "DeprecateThingType"),
            ("GET", "/thing-types", "ListThingTypes"),
            ("POST", "/billing-groups/b1", "CreateBillingGroup"),
            ("GET", "/billing-groups/b1", "DescribeBillingGroup"),
            ("DELETE", "/billing-groups/b1", "DeleteBillingGroup"),
            ("GET", "/billing-groups", "ListBillingGroups"),
        ] {
            assert_eq!(op(method, path).unwrap(), operation, "{method} {path}");
        }
    }

    #[test]
    fn labels_are_decoded() {
        let (_, labels) = route("GET", "/things/a%3Ab").unwrap();
        assert_eq!(labels.get("thingName").map(String::as_str), Some("a:b"));
        let e = route("GET", "/things/%ZZ").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
    }

    #[test]
    fn unknown_routes_name_the_method_and_path() {
        let e = route("POST", "/dimensions/d1").unwrap_err();
        assert_eq!(e.kind.code_and_status(), ("UnknownOperationException", 404));
        assert!(e.message.contains("POST /dimensions/d1"), "{}", e.message);
        assert!(e.message.contains("DescribeThing"), "{}", e.message);
        let e = route("PUT", "/things/gw_1").unwrap_err();
        assert!(
            e.message.contains(
                "that path takes GET (DescribeThing), POST (CreateThing), PATCH (UpdateThing)"
            ),
            "{}",
            e.message
        );
        assert!(route("GET", "/things/").is_err());
        assert!(route("GET", "/things/gw_1/principals/x").is_err());
    }

    #[test]
    fn route_table_has_no_duplicates() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} and {} share {} {}",
                    a.operation,
                    b.operation,
                    a.method,
                    a.path
                );
            }
        }
    }
}
