//! Workload identity on loopback, the way an Istio mesh provides it: a mesh CA that issues
//! each workload a certificate with its SPIFFE ID as the URI SAN (rcgen, fresh keys every
//! run), and the Envoy pieces around those certificates: a client-side TLS context that
//! originates mTLS with a workload's certificate (what a client sidecar does on the calls its
//! application makes), the header handling of a sidecar's inbound listener
//! (`x-forwarded-client-cert`), and a client Envoy that presents a chosen workload's
//! certificate per request (`x-via: NAME`), for tests and demos that play other pods.
//!
//! Used by `make demo-chain` ([`crate::chain`]), tests/envoy_chain.rs, tests/envoy_mtls.rs and
//! tools/tests/istio_manifests.rs.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A CA and the PEM files of the certificates it signed, in `dir`.
pub struct Pki {
    dir: PathBuf,
    ca: Certificate,
    ca_key: KeyPair,
}

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Pki {
    /// A new CA called `name`, its certificate written to `dir/ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Result<Pki, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| format!("CA params: {e}"))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().map_err(|e| format!("CA key: {e}"))?;
        let ca = params
            .self_signed(&ca_key)
            .map_err(|e| format!("CA certificate: {e}"))?;
        let pki = Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
        };
        write(&pki.ca_file(), &pki.ca.pem())?;
        Ok(pki)
    }

    /// The CA certificate (PEM): what every workload trusts.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A workload certificate with `spiffe_id` as its only URI SAN (and `dns` as a DNS name,
    /// for a server), good for client and server authentication, written to `dir/FILE.pem`
    /// and `dir/FILE-key.pem`.
    pub fn leaf(&self, file: &str, spiffe_id: &str, dns: Option<&str>) -> Result<Leaf, String> {
        let names = dns.map(|d| vec![d.to_string()]).unwrap_or_default();
        let mut params = CertificateParams::new(names).map_err(|e| format!("{file}: {e}"))?;
        params.distinguished_name.push(DnType::CommonName, file);
        let uri = spiffe_id
            .try_into()
            .map_err(|e| format!("{file}: {spiffe_id:?} is not a URI SAN: {e}"))?;
        params.subject_alt_names.push(SanType::URI(uri));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate().map_err(|e| format!("{file}: key: {e}"))?;
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .map_err(|e| format!("{file}: sign: {e}"))?;
        let leaf = Leaf {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        };
        write(&leaf.cert, &cert.pem())?;
        write(&leaf.key, &key.serialize_pem())?;
        Ok(leaf)
    }
}

/// The SPIFFE ID of an Istio principal (`cluster.local/ns/NS/sa/SA`, the form
/// `trustedPrincipals` and `principals` use); one that already has the scheme is returned as is.
pub fn spiffe_id(principal: &str) -> String {
    if principal.starts_with("spiffe://") {
        principal.to_string()
    } else {
        format!("spiffe://{principal}")
    }
}

/// How a client reaches a server over TLS: the CA it validates the server against, the
/// certificate it presents (None: TLS without a client certificate), and the SNI.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: Option<Leaf>,
    pub sni: String,
}

impl ClientTls {
    /// A cluster's `transport_socket` (Envoy's UpstreamTlsContext): originate TLS, validate
    /// the server, present the certificate if any.
    pub fn transport_socket(&self) -> Value {
        let mut common = json!({"validation_context": {"trusted_ca": {"filename": self.ca.display().to_string()}}});
        if let Some(leaf) = &self.cert {
            common["tls_certificates"] = json!([{
                "certificate_chain": {"filename": leaf.cert.display().to_string()},
                "private_key": {"filename": leaf.key.display().to_string()}
            }]);
        }
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": self.sni,
                "common_tls_context": common
            }
        })
    }
}

/// What istiod sets on a sidecar's inbound connection manager (pilot's inbound listener
/// builder): append the mTLS peer's certificate details to `x-forwarded-client-cert`
/// (`APPEND_FORWARD`, with `Subject`, `URI` and `DNS`), so the application sees which
/// workload called: `…;URI=spiffe://cluster.local/ns/orders/sa/orders`. On a plain-text
/// connection nothing is appended. `hcm` is the connection manager's `typed_config`.
pub fn istio_inbound_xfcc(hcm: &mut Value) {
    hcm["forward_client_cert_details"] = json!("APPEND_FORWARD");
    hcm["set_current_client_cert_details"] = json!({"subject": true, "uri": true, "dns": true});
}

/// The last `URI=` of an `x-forwarded-client-cert` value: the peer of the hop that set it
/// (earlier elements, if any, came from further away or from the client).
/// Elements are separated by `,` and pairs by `;`, outside double quotes (a `Subject` value
/// is quoted and may contain both).
pub fn xfcc_last_uri(xfcc: &str) -> Option<&str> {
    let mut quoted = false;
    let mut pairs = Vec::new();
    let mut pair_start = 0;
    for (i, c) in xfcc.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                pair_start = i + 1;
                pairs.clear();
            }
            ';' if !quoted => {
                pairs.push(xfcc.get(pair_start..i)?);
                pair_start = i + 1;
            }
            _ => {}
        }
    }
    pairs.push(xfcc.get(pair_start..)?);
    pairs
        .iter()
        .find_map(|kv| kv.trim().strip_prefix("URI="))
        .map(|v| v.trim_matches('"'))
}

/// One route of a [`client_bootstrap`]: requests with `x-via: VIA` go to `address:port`,
/// over TLS as `tls` says (None: plain text).
#[derive(Debug, Clone)]
pub struct Route {
    pub via: String,
    pub address: String,
    pub port: u16,
    pub tls: Option<ClientTls>,
}

/// A client-side Envoy: one plain-text listener on 127.0.0.1 (port chosen by Envoy), and per
/// route a cluster that connects the way the route says, so one process can play several
/// workloads (a cluster per identity, as each client sidecar has its own certificate).
pub fn client_bootstrap(routes: &[Route]) -> Value {
    let clusters: Vec<Value> = routes
        .iter()
        .map(|r| {
            let mut cluster = json!({
                "name": &r.via,
                "connect_timeout": "2s",
                "type": "STATIC",
                "load_assignment": {"cluster_name": &r.via, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": r.address, "port_value": r.port}}}}
                ]}]}
            });
            if let Some(tls) = &r.tls {
                cluster["transport_socket"] = tls.transport_socket();
            }
            cluster
        })
        .collect();
    let routes: Vec<Value> = routes
        .iter()
        .map(|r| {
            json!({
                "match": {"prefix": "/", "headers": [{"name": "x-via", "string_match": {"exact": &r.via}}]},
                "route": {"cluster": &r.via}
            })
        })
        .collect();
    let loopback = json!({"socket_address": {"address": "127.0.0.1", "port_value": 0}});
    json!({
        "node": {"id": "claimguard-test-client", "cluster": "client"},
        "admin": {"address": loopback},
        "static_resources": {
            "listeners": [{
                "name": "client",
                "address": loopback,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "client",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
                        "http_filters": [{"name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                    }
                }]}]
            }],
            "clusters": clusters
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_and_the_last_xfcc_uri() {
        assert_eq!(
            spiffe_id("cluster.local/ns/orders/sa/orders"),
            "spiffe://cluster.local/ns/orders/sa/orders"
        );
        assert_eq!(spiffe_id("spiffe://td/ns/a/sa/b"), "spiffe://td/ns/a/sa/b");
        let xfcc = "By=spiffe://x;Hash=ab;Subject=\"CN=a,O=b;c\";URI=spiffe://client,By=spiffe://r;Hash=cd;Subject=\"\";URI=spiffe://cluster.local/ns/orders/sa/orders;DNS=o";
        assert_eq!(xfcc_last_uri(xfcc), Some("spiffe://cluster.local/ns/orders/sa/orders"));
        assert_eq!(xfcc_last_uri("By=a;Hash=b"), None);
    }
}
