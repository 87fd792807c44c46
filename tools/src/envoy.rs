//! Runs a real Envoy with the claimguard filter in front of an upstream, on loopback only.
//!
//! The filter stanza is shaped like what istiod renders from a `WasmPlugin` (an
//! `envoy.extensions.filters.http.wasm.v3.Wasm` filter whose `configuration` is the plugin
//! config as a JSON string, V8 runtime, fail closed), so what the tests run is what ships.
//! Listener and admin ports are bound by Envoy itself (port 0) and read back from the admin
//! API, so parallel tests never race for a port. Dropping an [`Envoy`] kills the process.

use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::http;

/// The Envoy binary: `$ENVOY`, else the project virtualenv's (`make envoy` installs it).
pub fn envoy_binary() -> PathBuf {
    match std::env::var_os("ENVOY") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join(".venv/bin/envoy"),
    }
}

/// The filter: `$CLAIMGUARD_WASM`, else the release build `make build` produces.
pub fn wasm_path() -> PathBuf {
    match std::env::var_os("CLAIMGUARD_WASM") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("target/claimguard.wasm"),
    }
}

/// The repository (this crate is its `tools/` member).
pub fn repo_root() -> PathBuf {
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    tools.parent().map(PathBuf::from).unwrap_or(tools)
}

pub struct EnvoyOptions {
    pub envoy: PathBuf,
    pub wasm: PathBuf,
    /// The claimguard plugin config, as the JSON text a WasmPlugin's `pluginConfig` becomes.
    pub plugin_config: String,
    pub upstream_port: u16,
    /// Listener port; 0 lets Envoy choose.
    pub listener_port: u16,
    pub admin_port: u16,
    pub concurrency: u32,
    pub log_level: String,
    /// More STATIC clusters to 127.0.0.1 ports, e.g. `("outbound|443||idp.test", jwks_port)`,
    /// named the way istiod names the clusters of ServiceEntries.
    pub clusters: Vec<(String, u16)>,
    /// An access log format; the log goes to `access.log` beside the config (see
    /// [`Envoy::access_log`]).
    pub access_log_format: Option<String>,
    /// Deliver the filter by ECDS from a watched file, as istiod delivers a WasmPlugin, so
    /// tests can push new plugin configs with [`Envoy::push_plugin_config`].
    pub ecds: bool,
    /// HTTP filters that run before claimguard (e.g. Envoy's own `jwt_authn`).
    pub filters_before: Vec<Value>,
    /// HTTP filters that run after claimguard and before the router (e.g. what istiod renders
    /// for Istio's own RequestAuthentication and AuthorizationPolicy).
    pub filters_after: Vec<Value>,
    /// Leave claimguard out (an edge proxy in front of a claimguard sidecar).
    pub without_claimguard: bool,
    /// A complete HTTP filter entry to run instead of [`wasm_filter`]'s, e.g. the one istiod
    /// would generate from a rendered `istio/` WasmPlugin (tools/tests/istio_manifests.rs).
    pub filter: Option<Value>,
    /// More listeners with the same filter chain (the main one stays on 127.0.0.1), e.g. an
    /// mTLS listener, or one on `::1`; their ports: [`Envoy::listener_port_named`].
    pub extra_listeners: Vec<ExtraListener>,
    /// A complete bootstrap to run instead of the rendered one (e.g. a client-side Envoy that
    /// presents certificates); no filter is loaded then.
    pub raw_bootstrap: Option<Value>,
    /// The connection manager's `use_remote_address`: when true, Envoy's downstream address
    /// (`source.address`) is the TCP peer whatever `X-Forwarded-For` says; when false (Envoy's
    /// default) Envoy takes it from `X-Forwarded-For` if present.
    pub use_remote_address: bool,
    /// The connection manager's path settings (`normalize_path`, `merge_slashes`,
    /// `path_with_escaped_slashes_action`): Envoy's defaults, or what istiod renders for a
    /// mesh `pathNormalization`.
    pub path_normalization: PathNormalization,
    /// A second listener for the application's own calls, as a sidecar has beside its inbound
    /// one (tools/tests/istio_manifests.rs); its port: [`Envoy::listener_port_named`].
    pub outbound: Option<OutboundListener>,
    /// The bootstrap's `stats_config` instead of claimguard's tags alone (`stats_tags` from
    /// [`claimguard::request::metrics::STATS_TAGS`]), e.g. the one istio-agent writes for a sidecar.
    pub stats_config: Option<Value>,
    /// A bootstrap fragment Envoy merges into the config (`--config-yaml`: repeated fields
    /// appended, others replaced), as istio-agent passes the ConfigMap a pod names in
    /// `sidecar.istio.io/bootstrapOverride`.
    pub config_yaml: Option<String>,
}

/// A sidecar's outbound listener: what the application's calls to other services go through,
/// with the same connection manager as the inbound listener routing to `cluster` (a STATIC
/// cluster to 127.0.0.1:`port`). istiod puts a WasmPlugin or TrafficExtension on it only when
/// the plugin's `match` allows CLIENT traffic (the default, CLIENT_AND_SERVER, does;
/// `mode: SERVER` does not): `claimguard` says whether it did.
pub struct OutboundListener {
    pub name: String,
    pub cluster: String,
    pub port: u16,
    pub claimguard: bool,
}

/// How the HTTP connection manager rewrites `:path` before any filter sees it. Apart from
/// [`PathNormalization::EnvoyDefaults`] (none of the fields set), each is what istiod renders
/// into a sidecar's connection manager for meshConfig `pathNormalization.normalization` of
/// the same name (pilot's listener builder): it always sets
/// `path_with_escaped_slashes_action: KEEP_UNCHANGED`, then `NONE` sets `normalize_path:
/// false`; `BASE` (and `DEFAULT`, the mesh default) `normalize_path: true`; `MERGE_SLASHES`
/// adds `merge_slashes: true`; `DECODE_AND_MERGE_SLASHES` adds `UNESCAPE_AND_FORWARD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathNormalization {
    /// Nothing set: no normalisation, no slash merging, escaped slashes kept.
    #[default]
    EnvoyDefaults,
    IstioNone,
    /// Istio's default (`DEFAULT` is `BASE`): RFC 3986 normalisation, `\` becomes `/`.
    IstioBase,
    IstioMergeSlashes,
    IstioDecodeAndMergeSlashes,
}

impl PathNormalization {
    pub const ALL: [PathNormalization; 5] = [
        PathNormalization::EnvoyDefaults,
        PathNormalization::IstioNone,
        PathNormalization::IstioBase,
        PathNormalization::IstioMergeSlashes,
        PathNormalization::IstioDecodeAndMergeSlashes,
    ];

    /// Istio's name for the setting (`None` for Envoy's defaults).
    pub fn istio_name(self) -> Option<&'static str> {
        match self {
            PathNormalization::EnvoyDefaults => None,
            PathNormalization::IstioNone => Some("NONE"),
            PathNormalization::IstioBase => Some("BASE"),
            PathNormalization::IstioMergeSlashes => Some("MERGE_SLASHES"),
            PathNormalization::IstioDecodeAndMergeSlashes => Some("DECODE_AND_MERGE_SLASHES"),
        }
    }

    /// Whether Envoy resolves dot-segments (and turns `\` into `/`) before the filters run.
    pub fn normalizes(self) -> bool {
        !matches!(self, PathNormalization::EnvoyDefaults | PathNormalization::IstioNone)
    }

    /// Whether Envoy merges runs of `/` before the filters run.
    pub fn merges_slashes(self) -> bool {
        matches!(
            self,
            PathNormalization::IstioMergeSlashes | PathNormalization::IstioDecodeAndMergeSlashes
        )
    }

    /// Whether Envoy decodes `%2F` / `%5C` before the filters run.
    pub fn decodes_slashes(self) -> bool {
        self == PathNormalization::IstioDecodeAndMergeSlashes
    }

    /// The connection manager fields this setting sets.
    pub fn hcm_fields(self) -> Vec<(&'static str, Value)> {
        if self == PathNormalization::EnvoyDefaults {
            return Vec::new();
        }
        let escaped = if self.decodes_slashes() {
            "UNESCAPE_AND_FORWARD"
        } else {
            "KEEP_UNCHANGED"
        };
        let mut fields = vec![
            ("path_with_escaped_slashes_action", json!(escaped)),
            ("normalize_path", json!(self.normalizes())),
        ];
        if self.merges_slashes() {
            fields.push(("merge_slashes", json!(true)));
        }
        fields
    }
}

impl std::fmt::Display for PathNormalization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.istio_name() {
            Some(name) => write!(f, "Istio pathNormalization {name}"),
            None => f.write_str("Envoy defaults"),
        }
    }
}

/// A further listener: `address` is a loopback IP (`127.0.0.1`, `::1`), the port is Envoy's
/// choice.
pub struct ExtraListener {
    pub name: String,
    pub address: String,
    pub tls: Option<DownstreamTls>,
}

/// TLS on a listener that requires client certificates, as an Istio sidecar's inbound
/// listener does: PEM files for the server certificate chain and key, and the CA every client
/// certificate must chain to.
pub struct DownstreamTls {
    pub cert_chain: PathBuf,
    pub private_key: PathBuf,
    pub client_ca: PathBuf,
}

impl DownstreamTls {
    /// The listener's `transport_socket`.
    pub fn transport_socket(&self) -> Value {
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": true,
                "common_tls_context": {
                    "tls_certificates": [{
                        "certificate_chain": {"filename": self.cert_chain.display().to_string()},
                        "private_key": {"filename": self.private_key.display().to_string()}
                    }],
                    "validation_context": {"trusted_ca": {"filename": self.client_ca.display().to_string()}}
                }
            }
        })
    }
}

impl EnvoyOptions {
    pub fn new(plugin_config: &Value, upstream_port: u16) -> EnvoyOptions {
        EnvoyOptions {
            envoy: envoy_binary(),
            wasm: wasm_path(),
            plugin_config: plugin_config.to_string(),
            upstream_port,
            listener_port: 0,
            admin_port: 0,
            concurrency: 1,
            log_level: "info".into(),
            clusters: Vec::new(),
            access_log_format: None,
            ecds: false,
            filters_before: Vec::new(),
            filters_after: Vec::new(),
            without_claimguard: false,
            filter: None,
            extra_listeners: Vec::new(),
            raw_bootstrap: None,
            use_remote_address: false,
            path_normalization: PathNormalization::EnvoyDefaults,
            outbound: None,
            stats_config: None,
            config_yaml: None,
        }
    }
}

/// The wasm HTTP filter as istiod emits it for a WasmPlugin named `claimguard`.
pub fn wasm_filter(wasm: &Path, plugin_config: &str) -> Value {
    json!({
        "name": "istio.claimguard",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "claimguard",
                "root_id": "claimguard",
                "vm_config": {
                    "vm_id": "claimguard",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.display().to_string()}}
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin_config
                },
                "fail_open": false
            }
        }
    })
}

/// The HTTP filter entry that takes its config from `DIR/ecds/claimguard.json` by ECDS.
fn ecds_filter(dir: &Path) -> Value {
    let watched = dir.join("ecds");
    json!({
        "name": "istio.claimguard",
        "config_discovery": {
            "config_source": {
                "path_config_source": {
                    "path": watched.join("claimguard.json").display().to_string(),
                    "watched_directory": {"path": watched.display().to_string()}
                },
                "resource_api_version": "V3"
            },
            "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"]
        }
    })
}

/// An ECDS discovery response carrying the claimguard filter with `plugin_config`.
fn ecds_resource(wasm: &Path, plugin_config: &str, version: u32) -> Value {
    let filter = wasm_filter(wasm, plugin_config);
    json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "istio.claimguard",
            "typed_config": filter["typed_config"]
        }]
    })
}

/// A complete bootstrap: one listener on 127.0.0.1 → claimguard → router → the upstream.
/// `dir` is where an access log (if any) is written.
pub fn bootstrap(o: &EnvoyOptions, dir: &Path) -> Value {
    let loopback = |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    let cluster = |name: &str, port: u16| {
        json!({
            "name": name,
            "connect_timeout": "1s",
            "type": "STATIC",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": loopback(port)}}
            ]}]}
        })
    };
    let mut clusters = vec![cluster("app", o.upstream_port)];
    clusters.extend(o.clusters.iter().map(|(name, port)| cluster(name, *port)));
    if let Some(out) = &o.outbound {
        clusters.push(cluster(&out.cluster, out.port));
    }
    let access_log = match &o.access_log_format {
        Some(format) => json!([{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": dir.join("access.log").display().to_string(),
                "log_format": {"text_format_source": {"inline_string": format!("{format}\n")}}
            }
        }]),
        None => json!([]),
    };
    // The tag extraction claimguard documents for Prometheus labels (docs/observability.md, docs/istio.md).
    let stats_tags: Vec<Value> = claimguard::request::metrics::STATS_TAGS
        .iter()
        .map(|(name, regex)| json!({"tag_name": name, "regex": regex}))
        .collect();
    let claimguard = || match (&o.filter, o.ecds) {
        (_, true) => ecds_filter(dir),
        (Some(filter), false) => filter.clone(),
        (None, false) => wasm_filter(&o.wasm, &o.plugin_config),
    };
    let router = json!({"name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}});
    let mut http_filters = o.filters_before.clone();
    if !o.without_claimguard {
        http_filters.push(claimguard());
    }
    http_filters.extend(o.filters_after.iter().cloned());
    http_filters.push(router.clone());
    // One connection manager (stat prefix, route target and filters aside) for every listener.
    let chain = |stat_prefix: &str, cluster: &str, http_filters: Vec<Value>| {
        let mut chain = json!({"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": stat_prefix,
                "access_log": access_log,
                "route_config": {"virtual_hosts": [{
                    "name": cluster, "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]
                }]},
                "http_filters": http_filters
            }
        }]});
        if o.use_remote_address {
            chain["filters"][0]["typed_config"]["use_remote_address"] = json!(true);
        }
        for (field, value) in o.path_normalization.hcm_fields() {
            chain["filters"][0]["typed_config"][field] = value;
        }
        chain
    };
    let filter_chain = chain("ingress_http", "app", http_filters);
    let mut listeners = vec![json!({
        "name": "ingress",
        "address": loopback(o.listener_port),
        "filter_chains": [filter_chain.clone()]
    })];
    for l in &o.extra_listeners {
        let mut chain = filter_chain.clone();
        if let Some(tls) = &l.tls {
            chain["transport_socket"] = tls.transport_socket();
        }
        listeners.push(json!({
            "name": l.name,
            "address": {"socket_address": {"address": l.address, "port_value": 0}},
            "filter_chains": [chain]
        }));
    }
    if let Some(out) = &o.outbound {
        let mut http_filters = Vec::new();
        if out.claimguard {
            http_filters.push(claimguard());
        }
        http_filters.push(router);
        listeners.push(json!({
            "name": out.name,
            "address": loopback(0),
            "filter_chains": [chain("outbound_http", &out.cluster, http_filters)]
        }));
    }
    let stats_config = o
        .stats_config
        .clone()
        .unwrap_or_else(|| json!({"stats_tags": stats_tags}));
    json!({
        "node": {"id": "claimguard-test", "cluster": "claimguard"},
        "stats_config": stats_config,
        "admin": {"address": loopback(o.admin_port)},
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters
        }
    })
}

pub struct Envoy {
    child: Option<Child>,
    pub port: u16,
    pub admin_port: u16,
    dir: PathBuf,
    wasm: PathBuf,
    pushes: u32,
}

/// Writes a file where a watcher sees only the complete version (write, then rename).
fn write_atomic(path: &Path, v: &Value) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_string_pretty(v).unwrap_or_default())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Why Envoy did not come up, with its log.
#[derive(Debug)]
pub struct StartError {
    pub message: String,
    pub exit_code: Option<i32>,
    pub log: String,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (exit {:?})\n--- envoy log ---\n{}",
            self.message, self.exit_code, self.log
        )
    }
}

impl Envoy {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts Envoy and waits (up to `timeout`) until the admin API says LIVE and the listener
    /// is bound. If Envoy exits first (for example because the plugin refused its config), the
    /// error carries its exit code and log.
    pub fn start(o: &EnvoyOptions, timeout: Duration) -> Result<Envoy, StartError> {
        let fail = |message: String, log: String| StartError {
            message,
            exit_code: None,
            log,
        };
        if !o.envoy.exists() {
            return Err(fail(
                format!(
                    "no Envoy at {} (run `make envoy` or set ENVOY=/path/to/envoy)",
                    o.envoy.display()
                ),
                String::new(),
            ));
        }
        if o.raw_bootstrap.is_none() && !o.wasm.exists() {
            return Err(fail(
                format!("no filter at {} (run `make build`)", o.wasm.display()),
                String::new(),
            ));
        }
        let dir = std::env::temp_dir().join(format!(
            "claimguard-envoy-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| fail(format!("mkdir {}: {e}", dir.display()), String::new()))?;
        if o.ecds {
            fs::create_dir_all(dir.join("ecds")).map_err(|e| fail(format!("mkdir ecds: {e}"), String::new()))?;
            write_atomic(
                &dir.join("ecds/claimguard.json"),
                &ecds_resource(&o.wasm, &o.plugin_config, 1),
            )
            .map_err(|e| fail(e, String::new()))?;
        }
        let cfg = dir.join("envoy.json");
        fs::write(
            &cfg,
            serde_json::to_string_pretty(&o.raw_bootstrap.clone().unwrap_or_else(|| bootstrap(o, &dir)))
                .unwrap_or_default(),
        )
        .map_err(|e| fail(format!("write {}: {e}", cfg.display()), String::new()))?;
        let log = fs::File::create(dir.join("envoy.log")).map_err(|e| fail(format!("log file: {e}"), String::new()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| fail(format!("log file: {e}"), String::new()))?;
        let admin_file = dir.join("admin-address");
        let mut cmd = Command::new(&o.envoy);
        // If whoever started Envoy dies without cleaning up (SIGKILL, a crash), the kernel
        // stops Envoy too: no stray proxies left on the machine.
        // SAFETY: prctl is async-signal-safe and only touches the child being created.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        if let Some(fragment) = &o.config_yaml {
            cmd.arg("--config-yaml").arg(fragment);
        }
        let child = cmd
            .arg("-c")
            .arg(&cfg)
            .args(["--concurrency", &o.concurrency.to_string()])
            .args(["--log-level", &o.log_level])
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| fail(format!("spawn {}: {e}", o.envoy.display()), String::new()))?;
        let mut envoy = Envoy {
            child: Some(child),
            port: 0,
            admin_port: 0,
            dir,
            wasm: o.wasm.clone(),
            pushes: 1,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = envoy.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    envoy.child = None;
                    return Err(StartError {
                        message: "Envoy exited during start-up".into(),
                        exit_code: status.code(),
                        log: envoy.log(),
                    });
                }
            }
            if Instant::now() > deadline {
                return Err(fail(format!("Envoy was not ready within {timeout:?}"), envoy.log()));
            }
            if envoy.admin_port == 0 {
                if let Ok(a) = fs::read_to_string(&admin_file) {
                    envoy.admin_port = a.trim().rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
                }
            }
            if envoy.admin_port != 0 {
                let ready = http::get(envoy.admin_port, "/ready", &[])
                    .map(|r| r.status == 200)
                    .unwrap_or(false);
                if ready {
                    if let Some(p) = envoy.listener_port() {
                        envoy.port = p;
                        return Ok(envoy);
                    }
                }
            }
            sleep(Duration::from_millis(50));
        }
    }

    fn listener_port(&self) -> Option<u16> {
        let r = http::get(self.admin_port, "/listeners?format=json", &[]).ok()?;
        let v = r.json();
        let addr = v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64()?;
        u16::try_from(addr).ok().filter(|p| *p != 0)
    }

    /// The port Envoy bound for the listener called `name` (see [`EnvoyOptions::extra_listeners`]).
    pub fn listener_port_named(&self, name: &str) -> Option<u16> {
        self.listener_ports()
            .into_iter()
            .find(|(n, p)| n == name && *p != 0)
            .map(|(_, p)| p)
    }

    /// Every listener's name and bound port (for bootstraps with more than one listener).
    pub fn listener_ports(&self) -> Vec<(String, u16)> {
        let Ok(r) = http::get(self.admin_port, "/listeners?format=json", &[]) else {
            return Vec::new();
        };
        let v = r.json();
        let Some(list) = v["listener_statuses"].as_array() else {
            return Vec::new();
        };
        list.iter()
            .filter_map(|l| {
                let port = l["local_address"]["socket_address"]["port_value"].as_u64()?;
                Some((l["name"].as_str()?.to_string(), u16::try_from(port).ok()?))
            })
            .collect()
    }

    /// Pushes a new plugin config by ECDS (needs `EnvoyOptions::ecds`), as istiod does when a
    /// WasmPlugin changes. Returns once Envoy has processed it (accepted or refused).
    pub fn push_plugin_config(&mut self, plugin_config: &Value) -> Result<(), String> {
        let before = self.ecds_updates();
        self.pushes += 1;
        let resource = ecds_resource(&self.wasm, &plugin_config.to_string(), self.pushes);
        write_atomic(&self.dir.join("ecds/claimguard.json"), &resource)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ecds_updates() <= before {
            if Instant::now() > deadline {
                return Err(format!("Envoy did not process the pushed config:\n{}", self.log()));
            }
            sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// ECDS updates Envoy has processed: accepted (`config_reload`) plus refused (`config_fail`).
    pub fn ecds_updates(&self) -> u64 {
        self.ecds_stat("config_reload") + self.ecds_stat("config_fail")
    }

    /// An `extension_config_discovery.*.NAME` counter, summed.
    pub fn ecds_stat(&self, name: &str) -> u64 {
        let suffix = format!(".{name}: ");
        self.admin("stats?filter=extension_config_discovery")
            .lines()
            .filter_map(|l| l.split_once(&suffix).map(|(_, v)| v.trim().parse::<u64>().unwrap_or(0)))
            .sum()
    }

    /// The access log so far (with `access_log_format`).
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// An admin endpoint's body, e.g. `stats?filter=wasm`.
    pub fn admin(&self, path: &str) -> String {
        let path = format!("/{}", path.trim_start_matches('/'));
        http::get(self.admin_port, &path, &[])
            .map(|r| r.body)
            .unwrap_or_default()
    }

    /// `admin(path)` once `done` holds for it, or after 10 s (the last body either way). The
    /// filter's request and token-cache counters reach Envoy on its 200 ms tick, not at once.
    pub fn admin_until(&self, path: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let body = self.admin(path);
            if done(&body) || std::time::Instant::now() > deadline {
                return body;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Blocks until Envoy exits (for `claimguard demo`).
    pub fn wait(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.wait();
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
