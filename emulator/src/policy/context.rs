//! What the server knows about the connection a request comes from: the
//! values policy variables and condition keys are taken from.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// The thing a connection is, when AWS IoT lets thing policy variables
/// resolve: the client id is the name of a thing attached to the
/// connection's certificate ("Thing policy variables"). A connection whose
/// client id is not such a thing has no `ConnectedThing`, so
/// `${iot:Connection.Thing.*}` (other than `IsAttached`) has no value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectedThing {
    pub name: String,
    pub type_name: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// The fields of the connection's client certificate that the X.509
/// certificate policy variables name. Multi-valued fields keep the
/// certificate's order (the variables without an index take the first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateFacts {
    /// Lowercase hex SHA-256 of the DER (`${iot:CertificateId}`).
    pub id: String,
    /// The serial number in decimal (`${iot:Certificate.SerialNumber}`).
    pub serial_number: Option<String>,
    /// Subject attributes as (AWS attribute name, value), e.g.
    /// `("CommonName", "dev1")`, `("Organization", ..)`.
    pub subject: Vec<(String, String)>,
    pub issuer: Vec<(String, String)>,
    /// Subject alternative names as (AWS name type, value): `RFC822Name`,
    /// `DNSName`, `DirectoryName`, `UniformResourceIdentifier`, `IPAddress`.
    pub subject_alt_names: Vec<(String, String)>,
    pub issuer_alt_names: Vec<(String, String)>,
}

/// Everything a policy may look at when it decides one request.
#[derive(Clone, Copy, Debug)]
pub struct RequestContext<'a> {
    pub region: &'a str,
    pub account: &'a str,
    pub client_id: &'a str,
    /// Set only when the client id is the name of a thing attached to the
    /// connection's certificate.
    pub thing: Option<&'a ConnectedThing>,
    pub certificate: &'a CertificateFacts,
    /// The client's address (`aws:SourceIp`); `None` when not known.
    pub source_ip: Option<IpAddr>,
    /// The time of the request, Unix seconds (`aws:CurrentTime`,
    /// `aws:EpochTime`).
    pub now_unix: i64,
}
