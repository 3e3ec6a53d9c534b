//! `canopy node --config FILE`: one production node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::admin::{AdminOptions, DEFAULT_MAX_INVITE_TTL};
use crate::deploy::BuildLimits;
use crate::deploy::build::SandboxMode;
use crate::env::Env;
use crate::gateway::GatewayConfig;
use crate::gc::GcConfig;
use crate::git::GitLimits;
use crate::net::admission::InviteToken;
use crate::net::p2p::{Multiaddr, P2pConfig};
use crate::net::peer_limits::PeerLimitsConfig;
use crate::node::{AdminTls, ClusterSetup, Node, NodeOptions};
use crate::runtime::RequestBodyLimits;

/// Run one production node from a config file.
///
/// The file is YAML:
///
///   data_dir: /var/lib/canopy     # everything the node keeps
///   http: 0.0.0.0:80              # the gateway (user traffic)
///   admin: 127.0.0.1:7070         # admin API and Git remote; off loopback
///                                 #   it is served over TLS only
///   admin_names: [node1.example.net, 10.0.0.5]  # off loopback: the names and
///                                 #   addresses clients reach it by (its certificate's)
///   local_ca: /etc/canopy/ca      # optional: the CA that signs it (default
///                                 #   DATA_DIR/tls); share one between nodes
///                                 #   (`canopy cluster init --ca-dir`); clients
///                                 #   trust its ca.pem (`--ca`, git's http.sslCAInfo)
///   max_invite_ttl: 1h            # optional: the longest invite lifetime
///   build_sandbox: required       # optional: `preferred` builds without
///                                 #   bubblewrap (with a warning) where it is missing
///   limits:                       # optional: bounds (defaults shown)
///     git:                        #   what one push may carry; over one, it is
///       max_push_bytes: 512MiB    #   refused naming the limit, nothing stored
///       max_pack_objects: 1000000
///       max_refs: 1000            #   branches and tags per project
///       max_files: 100000         #   files in a pushed commit
///       max_checkout_bytes: 1GiB  #   their total size
///       max_path_bytes: 1024      #   the longest path in it
///       max_object_bytes: 256MiB  #   one file (or object) inflated
///     builds:                     #   the deploy queue; a push past a bound
///       max_concurrent_builds: 2  #   is refused, nothing stored
///       max_builds_per_project: 1 #   deploys of one project at once
///       max_queued_per_project: 16  # its branches waiting to deploy
///       max_queued: 256           #   all projects' branches waiting
///     gateway:                    #   the gateway (user traffic)
///       max_connections: 4096     #   open at once; more are closed on accept
///       max_connections_per_address: 256  # from one client IP address
///       header_read_timeout: 30s  #   to send a request's headers (a new
///                                 #   connection: from its accept)
///       idle_timeout: 60s         #   keep-alive with no request
///     admin:                      #   the admin port and Git remote
///       max_connections: 256
///       max_connections_per_address: 32
///       header_read_timeout: 30s
///       idle_timeout: 60s
///     wasm:                       #   functions
///       memory_budget: 2GiB       #   linear memory of all running instances
///                                 #   together; a function asking for more
///                                 #   than this is refused at deploy
///       request_body: 32MiB       #   the largest request body of a function
///                                 #   that sets no limits.body; larger: 413
///       max_request_body: 1GiB    #   the most a function's limits.body may
///                                 #   say; one asking more is refused at deploy
///                                 #   (request_body, unset, is at most this)
///     cluster:                    #   what peers send
///       max_sync_message: 256MiB  #   one state-sync message (a new node's
///                                 #   first one carries the state's history)
///       max_requests_in_flight_per_peer: 64    # one peer's requests open
///                                 #   here at once
///       max_requests_per_second_per_peer: 1000 # its sustained rate
///       request_burst_per_peer: 2000  # and burst above the rate; past one a
///                                 #   request is answered "busy, retry later"
///                                 #   (this node's own drivers stay far
///                                 #   below these; see docs/limits.md)
///   gc:                           # optional: garbage collection (defaults shown)
///     interval: 10m               #   time between passes
///     grace: 1h                   #   how long an unreferenced blob stays;
///                                 #   longer than any deploy takes
///     history: 10                 #   replaced releases kept per environment
///     unload_idle: 15m            #   a function idle this long leaves memory
///                                 #   (back from the compiled-code cache on
///                                 #   its next request)
///     git_packs: 32               #   packs a repository holds before a push
///                                 #   merges them (and drops what no branch
///                                 #   or tag reaches; so does a branch delete)
///     git_pack_age: 10m           #   only packs this old are merged
///   cluster:                      # optional: be one node of a cluster
///     listen: [0.0.0.0:4001]      # peer-to-peer (TCP, and QUIC on the same UDP port)
///     secret_file: /etc/canopy/cluster.secret   # `canopy cluster init`
///     peers: [/ip4/10.0.0.1/tcp/4001/p2p/12D3…] # nodes to connect to
///     invite: canopy-invite-…     # joining only: `canopy cluster invite`
///
/// The first node of a cluster has no invite: it founds the cluster. Its
/// first start prints the first admin token once and writes it to
/// DATA_DIR/admin-token (readable by the node's user only). When the node is
/// ready it writes DATA_DIR/node.json with its addresses.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's config file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeConfig {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// HTTPS with certificates from a local CA (dream).
    #[serde(default)]
    pub https: Option<SocketAddr>,
    /// The local CA's directory; default DATA_DIR/tls. Relative to the
    /// config file.
    #[serde(default)]
    pub local_ca: Option<PathBuf>,
    /// The names and addresses clients reach an admin port off loopback by.
    #[serde(default)]
    pub admin_names: Vec<String>,
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// The longest lifetime of a cluster invite, like `1h` (the default).
    #[serde(default)]
    pub max_invite_ttl: Option<String>,
    /// `required` (the default): no build without the sandbox; `preferred`:
    /// build without one, with a warning, where it cannot be set up.
    #[serde(default)]
    pub build_sandbox: Option<SandboxMode>,
    /// Bounds on what the node takes in.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Garbage collection.
    #[serde(default)]
    pub gc: GcSection,
}

/// `gc:` in the node config; each unset one keeps its default ([`GcConfig`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GcSection {
    /// Like `10m`.
    pub interval: Option<String>,
    /// Like `1h`.
    pub grace: Option<String>,
    pub history: Option<usize>,
    /// Like `15m`.
    pub unload_idle: Option<String>,
    pub git_packs: Option<usize>,
    /// Like `10m`.
    pub git_pack_age: Option<String>,
}

impl GcSection {
    /// The collection these set (the rest at their defaults).
    fn config(&self) -> Result<GcConfig, String> {
        let mut config = GcConfig::default();
        let duration = |name: &str, text: &str| {
            crate::config::parse_duration(text)
                .map_err(|e| format!("gc.{name}: {e}; write it like 10m or 1h"))
        };
        if let Some(text) = &self.interval {
            config.interval = duration("interval", text)?;
            if config.interval.is_zero() {
                return Err("gc.interval: 0s would collect without pause; leave it out for the default (10m)".into());
            }
        }
        if let Some(text) = &self.grace {
            config.grace = duration("grace", text)?;
        }
        if let Some(history) = self.history {
            config.history = history;
        }
        if let Some(text) = &self.unload_idle {
            config.unload_idle = duration("unload_idle", text)?;
        }
        if let Some(repack) = &mut config.git_repack {
            if let Some(packs) = self.git_packs {
                if packs == 0 {
                    return Err("gc.git_packs: 0 would repack after every push; leave it out for the default (32)".into());
                }
                repack.max_packs = packs;
            }
            if let Some(text) = &self.git_pack_age {
                repack.min_age = duration("git_pack_age", text)?;
            }
        }
        Ok(config)
    }
}

/// `limits:` in the node config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsConfig {
    #[serde(default)]
    pub git: GitLimitsConfig,
    #[serde(default)]
    pub builds: BuildLimitsConfig,
    #[serde(default)]
    pub gateway: ConnectionLimitsConfig,
    #[serde(default)]
    pub admin: ConnectionLimitsConfig,
    #[serde(default)]
    pub cluster: ClusterLimitsConfig,
    #[serde(default)]
    pub wasm: WasmLimitsConfig,
}

/// `limits.wasm:` — functions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WasmLimitsConfig {
    pub memory_budget: Option<ByteSize>,
    /// Read as any size, 0 included, so that a 0 is refused naming its field.
    pub request_body: Option<SizeSetting>,
    pub max_request_body: Option<SizeSetting>,
}

impl WasmLimitsConfig {
    /// The linear memory all running functions may hold together.
    fn memory_budget_bytes(&self) -> u64 {
        self.memory_budget
            .map_or(crate::runtime::DEFAULT_MEMORY_BUDGET_BYTES, |b| b.0)
    }

    /// The request-body limits of functions: each one set here, else its
    /// default. A `request_body` set above the maximum is refused; an unset
    /// one follows a lowered maximum down.
    fn request_body_limits(&self) -> Result<RequestBodyLimits, String> {
        let defaults = RequestBodyLimits::default();
        let size = |name: &str, value: Option<SizeSetting>, default: u64| match value {
            Some(SizeSetting(0)) => Err(format!(
                "limits.wasm.{name}: 0 would refuse every request with a body; leave it out for the default ({})",
                crate::config::format_size(default)
            )),
            Some(SizeSetting(bytes)) => Ok(bytes),
            None => Ok(default),
        };
        let max_bytes = size(
            "max_request_body",
            self.max_request_body,
            defaults.max_bytes,
        )?;
        let limits = RequestBodyLimits {
            default_bytes: size(
                "request_body",
                self.request_body,
                defaults.default_bytes.min(max_bytes),
            )?,
            max_bytes,
        };
        if limits.default_bytes > limits.max_bytes {
            let (default, max) = (
                crate::runtime::format_bytes(limits.default_bytes),
                crate::runtime::format_bytes(limits.max_bytes),
            );
            return Err(format!(
                "limits.wasm.request_body: {default} is more than limits.wasm.max_request_body ({max}); \
                 the default a function gets must be one it could ask for"
            ));
        }
        Ok(limits)
    }
}

/// `limits.cluster:` — what peers send.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterLimitsConfig {
    pub max_sync_message: Option<ByteSize>,
    pub max_requests_in_flight_per_peer: Option<u32>,
    pub max_requests_per_second_per_peer: Option<u32>,
    pub request_burst_per_peer: Option<u32>,
}

impl ClusterLimitsConfig {
    /// What one peer may ask of this node; 0 is refused naming the field.
    fn peer_limits(&self) -> Result<PeerLimitsConfig, String> {
        let defaults = PeerLimitsConfig::default();
        let limits = PeerLimitsConfig {
            max_in_flight: self
                .max_requests_in_flight_per_peer
                .unwrap_or(defaults.max_in_flight),
            max_requests_per_second: self
                .max_requests_per_second_per_peer
                .unwrap_or(defaults.max_requests_per_second),
            burst: self.request_burst_per_peer.unwrap_or(defaults.burst),
        };
        limits.check().map_err(|e| e.to_string())?;
        Ok(limits)
    }

    /// The largest state-sync message this node gathers from a peer.
    fn max_sync_message_bytes(&self) -> usize {
        self.max_sync_message
            .map_or(crate::cluster::sync::DEFAULT_MAX_MESSAGE_BYTES, |b| {
                usize::try_from(b.0).unwrap_or(usize::MAX)
            })
    }
}

/// `limits.gateway:` and `limits.admin:` — a listener's connections.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConnectionLimitsConfig {
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    /// Like `30s`.
    pub header_read_timeout: Option<String>,
    /// Like `60s`.
    pub idle_timeout: Option<String>,
}

/// A listener's connection bounds, as the node runs with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnectionLimits {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl ConnectionLimitsConfig {
    /// The bounds set here, each unset one from `defaults`; `section` names
    /// the config section in errors (`limits.gateway`).
    fn limits(
        &self,
        section: &str,
        defaults: ConnectionLimits,
    ) -> Result<ConnectionLimits, String> {
        let count = |name: &str, value: Option<usize>, default: usize| match value {
            Some(0) => Err(format!(
                "{section}.{name}: 0 would refuse every connection; leave it out for the default ({default})"
            )),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let duration = |name: &str, value: &Option<String>, default: Duration| {
            let Some(text) = value else {
                return Ok(default);
            };
            let timeout = crate::config::parse_duration(text)
                .map_err(|e| format!("{section}.{name}: {e}; write it like 30s"))?;
            if timeout.is_zero() {
                return Err(format!(
                    "{section}.{name}: 0s would close every connection; leave it out for the default ({}s)",
                    default.as_secs()
                ));
            }
            Ok(timeout)
        };
        let max_connections = count(
            "max_connections",
            self.max_connections,
            defaults.max_connections,
        )?;
        let per_address = count(
            "max_connections_per_address",
            self.max_connections_per_address,
            defaults.max_connections_per_address,
        )?;
        if self.max_connections_per_address.is_some() && per_address > max_connections {
            return Err(format!(
                "{section}.max_connections_per_address: {per_address} is more than {section}.max_connections ({max_connections}); one address can hold at most every connection"
            ));
        }
        Ok(ConnectionLimits {
            max_connections,
            // A default share above a lowered total means "no share".
            max_connections_per_address: per_address.min(max_connections),
            header_read_timeout: duration(
                "header_read_timeout",
                &self.header_read_timeout,
                defaults.header_read_timeout,
            )?,
            idle_timeout: duration("idle_timeout", &self.idle_timeout, defaults.idle_timeout)?,
        })
    }

    /// The admin options these set (the rest at their defaults).
    fn admin_options(&self) -> Result<AdminOptions, String> {
        let defaults = AdminOptions::default();
        let limits = self.limits(
            "limits.admin",
            ConnectionLimits {
                max_connections: defaults.max_connections,
                max_connections_per_address: defaults.max_connections_per_address,
                header_read_timeout: defaults.header_read_timeout,
                idle_timeout: defaults.idle_timeout,
            },
        )?;
        Ok(AdminOptions {
            max_connections: limits.max_connections,
            max_connections_per_address: limits.max_connections_per_address,
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            ..defaults
        })
    }

    /// The gateway config these set (the rest at its defaults).
    fn gateway_config(&self) -> Result<GatewayConfig, String> {
        let defaults = GatewayConfig::default();
        let limits = self.limits(
            "limits.gateway",
            ConnectionLimits {
                max_connections: defaults.max_connections,
                max_connections_per_address: defaults.max_connections_per_address,
                header_read_timeout: Duration::from_millis(defaults.header_read_timeout_ms),
                idle_timeout: Duration::from_millis(defaults.idle_timeout_ms),
            },
        )?;
        Ok(GatewayConfig {
            max_connections: limits.max_connections,
            max_connections_per_address: limits.max_connections_per_address,
            header_read_timeout_ms: limits.header_read_timeout.as_millis() as u64,
            idle_timeout_ms: limits.idle_timeout.as_millis() as u64,
            ..defaults
        })
    }
}

/// `limits.git:` — each unset one keeps its default ([`GitLimits`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GitLimitsConfig {
    pub max_push_bytes: Option<ByteSize>,
    pub max_pack_objects: Option<u32>,
    pub max_refs: Option<usize>,
    pub max_files: Option<usize>,
    pub max_checkout_bytes: Option<ByteSize>,
    pub max_path_bytes: Option<usize>,
    pub max_object_bytes: Option<ByteSize>,
}

/// A size written as bytes (`1048576`) or with a unit (`512MiB`), 0
/// included (the setting that reads it refuses a 0, naming itself).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SizeSetting(u64);

impl<'de> Deserialize<'de> for SizeSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        let bytes = match Written::deserialize(deserializer)? {
            Written::Bytes(bytes) => bytes,
            Written::Text(text) => crate::config::parse_size(&text).map_err(|e| {
                serde::de::Error::custom(format!("{e}; write {}", crate::config::SIZE_FORMS))
            })?,
        };
        Ok(SizeSetting(bytes))
    }
}

/// A size written as bytes (`1048576`) or with a unit (`512MiB`), not 0.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ByteSize(u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let SizeSetting(bytes) = SizeSetting::deserialize(deserializer)?;
        if bytes == 0 {
            return Err(serde::de::Error::custom(
                "a limit of 0 bytes would refuse everything",
            ));
        }
        Ok(ByteSize(bytes))
    }
}

impl GitLimitsConfig {
    /// The limits the node runs with: each one set here, else its default.
    fn limits(&self) -> Result<GitLimits, String> {
        let defaults = GitLimits::default();
        let limits = GitLimits {
            max_push_bytes: self.max_push_bytes.map_or(defaults.max_push_bytes, |b| b.0),
            max_pack_objects: self.max_pack_objects.unwrap_or(defaults.max_pack_objects),
            max_refs: self.max_refs.unwrap_or(defaults.max_refs),
            max_files: self.max_files.unwrap_or(defaults.max_files),
            max_checkout_bytes: self
                .max_checkout_bytes
                .map_or(defaults.max_checkout_bytes, |b| b.0),
            max_path_bytes: self.max_path_bytes.unwrap_or(defaults.max_path_bytes),
            max_object_bytes: self
                .max_object_bytes
                .map_or(defaults.max_object_bytes, |b| b.0),
        };
        for (name, value) in [
            ("max_pack_objects", limits.max_pack_objects as usize),
            ("max_refs", limits.max_refs),
            ("max_files", limits.max_files),
            ("max_path_bytes", limits.max_path_bytes),
        ] {
            if value == 0 {
                return Err(format!(
                    "limits.git.{name}: 0 would refuse every push; leave it out for the default"
                ));
            }
        }
        Ok(limits)
    }
}

/// `limits.builds:` — the deploy queue; each unset one keeps its default
/// ([`BuildLimits`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BuildLimitsConfig {
    pub max_concurrent_builds: Option<usize>,
    pub max_builds_per_project: Option<usize>,
    pub max_queued_per_project: Option<usize>,
    pub max_queued: Option<usize>,
}

impl BuildLimitsConfig {
    /// The bounds the node runs with: each one set here, else its default.
    fn limits(&self) -> Result<BuildLimits, String> {
        let defaults = BuildLimits::default();
        let limits = BuildLimits {
            max_concurrent_builds: self
                .max_concurrent_builds
                .unwrap_or(defaults.max_concurrent_builds),
            max_builds_per_project: self
                .max_builds_per_project
                .unwrap_or(defaults.max_builds_per_project),
            max_queued_per_project: self
                .max_queued_per_project
                .unwrap_or(defaults.max_queued_per_project),
            max_queued: self.max_queued.unwrap_or(defaults.max_queued),
        };
        for (name, value, consequence) in [
            (
                "max_concurrent_builds",
                limits.max_concurrent_builds,
                "would deploy nothing",
            ),
            (
                "max_builds_per_project",
                limits.max_builds_per_project,
                "would deploy nothing",
            ),
            (
                "max_queued_per_project",
                limits.max_queued_per_project,
                "would refuse every push",
            ),
            ("max_queued", limits.max_queued, "would refuse every push"),
        ] {
            if value == 0 {
                return Err(format!(
                    "limits.builds.{name}: 0 {consequence}; leave it out for the default"
                ));
            }
        }
        Ok(limits)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterConfig {
    /// `host:port` (TCP, and QUIC on the same UDP port) or multiaddrs.
    #[serde(default)]
    pub listen: Vec<String>,
    #[serde(default)]
    pub peers: Vec<String>,
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub invite: Option<String>,
    #[serde(default)]
    pub invite_file: Option<PathBuf>,
    #[serde(default = "default_true")]
    pub mdns: bool,
    #[serde(default = "default_true")]
    pub quic: bool,
    #[serde(default)]
    pub replication: Option<usize>,
}

fn default_true() -> bool {
    true
}

/// What a running node tells programs (`DATA_DIR/node.json`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct NodeFile {
    pub id: String,
    pub pid: u32,
    pub http: String,
    pub https: Option<String>,
    pub admin: String,
    /// Push URLs are `<git_base><project>.git`.
    pub git_base: String,
    pub p2p: Vec<String>,
}

pub(crate) const NODE_FILE: &str = "node.json";

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let name = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read the node config {name}"))?;
    let config: NodeConfig = serde_yaml_ng::from_str(&text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("{name}:{}:{}", l.line(), l.column()))
            .unwrap_or(name.clone());
        anyhow::anyhow!("{at}: {e}\n  help: a node config has data_dir, http, admin and optionally admin_names, https, local_ca, max_invite_ttl, build_sandbox, limits, gc and cluster (see `canopy node --help`)")
    })?;
    let base = args.config.parent().unwrap_or(Path::new("."));
    let max_invite_ttl = match &config.max_invite_ttl {
        Some(text) => crate::config::parse_duration(text)
            .map_err(|e| anyhow::anyhow!("{name}: max_invite_ttl: {e}; write it like 1h or 30m"))?,
        None => DEFAULT_MAX_INVITE_TTL,
    };
    let admin_tls =
        admin_tls(config.admin, &config.admin_names).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let git_limits = config
        .limits
        .git
        .limits()
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let build_limits = config
        .limits
        .builds
        .limits()
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let gc = config
        .gc
        .config()
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let peer_limits = config
        .limits
        .cluster
        .peer_limits()
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let options = NodeOptions {
        gc,
        http_listen: config.http,
        admin_listen: config.admin,
        https_local_ca: config.https,
        local_ca_dir: config.local_ca.as_ref().map(|dir| base.join(dir)),
        admin_tls,
        cluster: match &config.cluster {
            Some(c) => Some(ClusterSetup {
                max_sync_message_bytes: config.limits.cluster.max_sync_message_bytes(),
                peer_limits,
                ..cluster_setup(c, base).with_context(|| format!("{name}: cluster"))?
            }),
            None => None,
        },
        admin: AdminOptions {
            loopback_hosts_only: false,
            max_invite_ttl,
            ..config
                .limits
                .admin
                .admin_options()
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?
        },
        builds: config.build_sandbox.unwrap_or(SandboxMode::Required),
        wasm_memory_budget_bytes: config.limits.wasm.memory_budget_bytes(),
        wasm_request_body: config
            .limits
            .wasm
            .request_body_limits()
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?,
        git_limits,
        build_limits,
        gateway: config
            .limits
            .gateway
            .gateway_config()
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?,
    };
    // The certificate's names, for the startup line: admin_names and the
    // bound address.
    let tls_names = options.admin_tls.as_ref().map(|tls| tls.names.join(", "));
    let data_dir = config.data_dir.clone();
    let node_file = data_dir.join(NODE_FILE);
    let _ = std::fs::remove_file(&node_file);
    let node = Node::start(Env::production(&data_dir), options).await?;
    let facts = NodeFile {
        id: node.id().to_owned(),
        pid: std::process::id(),
        http: format!("http://{}", node.http_addr()),
        https: node.https_addr().map(|a| format!("https://{a}")),
        admin: node.admin_url().to_owned(),
        git_base: node.git_base(),
        p2p: node.p2p_addrs().to_vec(),
    };
    crate::durable::write_atomically(&node_file, &serde_json::to_vec_pretty(&facts)?, None)
        .with_context(|| format!("cannot write {}", node_file.display()))?;
    println!(
        "canopy node {} serving: http {} admin {}",
        node.id(),
        node.http_addr(),
        node.admin_url()
    );
    if let (Some(ca), Some(names)) = (node.ca_pem(), &tls_names) {
        println!(
            "  the admin port is served over TLS for {names}; clients trust {} (`canopy --ca`, `git -c http.sslCAInfo=`)",
            ca.display()
        );
    }
    for addr in node.p2p_addrs() {
        println!("  peer address {addr}");
    }
    if let Some(token) = node.first_admin_token() {
        println!();
        println!(
            "The first admin token (shown once; also in {}):",
            data_dir.join(crate::auth::ADMIN_TOKEN_FILE).display()
        );
        println!();
        println!("  {}", token.reveal());
        println!();
        println!(
            "Use it with --token or CANOPY_TOKEN; make narrower ones with `canopy token create`."
        );
    }
    super::stop_signal().await;
    node.stop().await;
    let _ = std::fs::remove_file(&node_file);
    Ok(())
}

/// Whether the admin port needs TLS, and for which names: off loopback it
/// does (tokens and pushes cross the network), for `admin_names` plus the
/// address it is bound to, unless that is a wildcard.
fn admin_tls(admin: SocketAddr, admin_names: &[String]) -> Result<Option<AdminTls>, String> {
    if admin.ip().is_loopback() {
        if !admin_names.is_empty() {
            return Err(format!(
                "admin_names: the admin port {admin} is on loopback and served without TLS, so it has no certificate to name; drop admin_names, or bind admin off loopback"
            ));
        }
        return Ok(None);
    }
    let mut names: Vec<String> = Vec::new();
    for (i, name) in admin_names.iter().enumerate() {
        let name = name.trim();
        if !is_certificate_name(name) {
            return Err(format!(
                "admin_names[{i}]: {name:?} is neither a DNS name nor an IP address; list the names clients reach the admin port by, like node1.example.net or 10.0.0.5"
            ));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    if !admin.ip().is_unspecified() {
        let ip = admin.ip().to_string();
        if !names.contains(&ip) {
            names.push(ip);
        }
    } else if names.is_empty() {
        return Err(format!(
            "admin: {admin} is off loopback, so the admin port is served over TLS, and its certificate needs the names clients reach it by\n  help: add `admin_names: [HOST or IP, ...]` (like node1.example.net or 10.0.0.5), or bind admin to 127.0.0.1 and reach it through SSH"
        ));
    }
    Ok(Some(AdminTls { names }))
}

/// A DNS name (letters, digits, `-`, dots) or an IP address.
fn is_certificate_name(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Turn the config's `cluster:` section into what the node runs with.
/// Relative paths are relative to the config file.
fn cluster_setup(config: &ClusterConfig, base: &Path) -> anyhow::Result<ClusterSetup> {
    let mut listen = Vec::new();
    for (i, entry) in config.listen.iter().enumerate() {
        if entry.starts_with('/') {
            listen.push(entry.parse::<Multiaddr>().with_context(|| {
                format!("listen[{i}]: {entry:?} is not a multiaddr (like /ip4/0.0.0.0/tcp/4001)")
            })?);
        } else {
            let addr: SocketAddr = entry.parse().with_context(|| {
                format!("listen[{i}]: {entry:?} is neither host:port nor a multiaddr")
            })?;
            listen.push(P2pConfig::tcp_addr(addr));
            if config.quic {
                listen.push(P2pConfig::quic_addr(addr));
            }
        }
    }
    if listen.is_empty() {
        listen.push(P2pConfig::tcp_addr(SocketAddr::from(([0, 0, 0, 0], 4001))));
    }
    let peers = config
        .peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            p.parse::<Multiaddr>().with_context(|| {
                format!("peers[{i}]: {p:?} is not a peer address; use one that `canopy cluster invite` printed")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let secret = match &config.secret_file {
        Some(path) => Some(read_secret(&base.join(path))?),
        None => None,
    };
    let invite_text = match (&config.invite, &config.invite_file) {
        (Some(_), Some(_)) => anyhow::bail!("set either invite or invite_file, not both"),
        (Some(text), None) => Some(text.trim().to_owned()),
        (None, Some(path)) => {
            let path = base.join(path);
            Some(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("invite_file: cannot read {}", path.display()))?
                    .trim()
                    .to_owned(),
            )
        }
        (None, None) => None,
    };
    let invite = invite_text
        .map(|t| InviteToken::decode(&t))
        .transpose()
        .context("invite")?;
    Ok(ClusterSetup {
        listen,
        peers,
        secret,
        mdns: config.mdns,
        quic: config.quic,
        invite,
        replication_factor: config.replication,
        max_sync_message_bytes: crate::cluster::sync::DEFAULT_MAX_MESSAGE_BYTES,
        peer_limits: PeerLimitsConfig::default(),
    })
}

/// A secret file: 64 hex digits (32 bytes), surrounding whitespace ignored.
fn read_secret(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("secret_file: cannot read {}", path.display()))?;
    crate::cluster::parse_hex(text.trim()).ok_or_else(|| {
        anyhow::anyhow!(
            "secret_file: {} does not hold a cluster secret (64 hex digits); make one with `canopy cluster init --secret-file FILE`",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_admin_port_needs_tls_exactly_off_loopback() {
        let loopback: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        assert!(admin_tls(loopback, &[]).unwrap().is_none());
        let err = admin_tls(loopback, &names(&["node1.example.net"])).unwrap_err();
        assert!(
            err.contains("admin_names") && err.contains("loopback"),
            "{err}"
        );

        let wildcard: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        let err = admin_tls(wildcard, &[]).unwrap_err();
        assert!(err.contains("admin_names") && err.contains("TLS"), "{err}");
        let tls = admin_tls(
            wildcard,
            &names(&["node1.example.net", "node1.example.net"]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(tls.names, names(&["node1.example.net"]));

        // A specific address is always one of the certificate's names.
        let specific: SocketAddr = "10.0.0.5:7070".parse().unwrap();
        let tls = admin_tls(specific, &[]).unwrap().unwrap();
        assert_eq!(tls.names, names(&["10.0.0.5"]));
        let tls = admin_tls(specific, &names(&["node1.example.net"]))
            .unwrap()
            .unwrap();
        assert_eq!(tls.names, names(&["node1.example.net", "10.0.0.5"]));

        for bad in [
            "",
            "has space.example",
            "-lead.example",
            "a..b",
            "ünïcode.example",
        ] {
            let err = admin_tls(wildcard, &names(&[bad])).unwrap_err();
            assert!(err.contains("admin_names[0]"), "{bad:?}: {err}");
        }
    }

    fn config(yaml: &str) -> Result<NodeConfig, String> {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn gc_comes_from_the_config_or_its_defaults() {
        let base = "data_dir: /d\nhttp: 127.0.0.1:1\nadmin: 127.0.0.1:2\n";
        let none = config(base).unwrap();
        assert_eq!(none.gc.config().unwrap(), GcConfig::default());
        let some = config(&format!(
            "{base}gc:\n  interval: 30s\n  grace: 2m\n  history: 3\n"
        ))
        .unwrap();
        let gc = some.gc.config().unwrap();
        assert_eq!(gc.interval, std::time::Duration::from_secs(30));
        assert_eq!(gc.grace, std::time::Duration::from_secs(120));
        assert_eq!(gc.history, 3);
        let err = config(&format!("{base}gc:\n  grace: soon\n"))
            .unwrap()
            .gc
            .config()
            .unwrap_err();
        assert!(err.starts_with("gc.grace:"), "{err}");
        let err = config(&format!("{base}gc:\n  interval: 0s\n"))
            .unwrap()
            .gc
            .config()
            .unwrap_err();
        assert!(err.starts_with("gc.interval: 0s"), "{err}");
    }

    #[test]
    fn request_body_limits_come_from_the_config_or_their_defaults() {
        let base = "data_dir: /d\nhttp: 127.0.0.1:80\nadmin: 127.0.0.1:7070\n";
        let none = config(base).unwrap();
        assert_eq!(
            none.limits.wasm.request_body_limits().unwrap(),
            RequestBodyLimits {
                default_bytes: 32 << 20,
                max_bytes: 1 << 30,
            }
        );
        let some = config(&format!(
            "{base}limits:\n  wasm:\n    request_body: 1MiB\n    max_request_body: 8MiB\n"
        ))
        .unwrap();
        assert_eq!(
            some.limits.wasm.request_body_limits().unwrap(),
            RequestBodyLimits {
                default_bytes: 1 << 20,
                max_bytes: 8 << 20,
            }
        );

        let wasm_err = |section: &str| {
            config(&format!("{base}limits:\n  wasm:\n{section}"))
                .unwrap()
                .limits
                .wasm
                .request_body_limits()
                .unwrap_err()
        };
        assert_eq!(
            wasm_err("    request_body: 0\n"),
            "limits.wasm.request_body: 0 would refuse every request with a body; \
             leave it out for the default (32MiB)"
        );
        assert_eq!(
            wasm_err("    max_request_body: 0B\n"),
            "limits.wasm.max_request_body: 0 would refuse every request with a body; \
             leave it out for the default (1GiB)"
        );
        let err = config(&format!("{base}limits:\n  wasm:\n    request_body: big\n")).unwrap_err();
        assert!(err.contains("`big` is not a size"), "{err}");
        // A lowered maximum takes the default down with it, unless the
        // default is set: then it must fit.
        let lowered = config(&format!(
            "{base}limits:\n  wasm:\n    max_request_body: 16MiB\n"
        ))
        .unwrap();
        assert_eq!(
            lowered.limits.wasm.request_body_limits().unwrap(),
            RequestBodyLimits {
                default_bytes: 16 << 20,
                max_bytes: 16 << 20,
            }
        );
        assert_eq!(
            wasm_err("    request_body: 32MiB\n    max_request_body: 16MiB\n"),
            "limits.wasm.request_body: 32 MiB is more than limits.wasm.max_request_body (16 MiB); \
             the default a function gets must be one it could ask for"
        );
    }

    #[test]
    fn git_limits_come_from_the_config_or_their_defaults() {
        let base = "data_dir: /d\nhttp: 127.0.0.1:80\nadmin: 127.0.0.1:7070\n";
        let none = config(base).unwrap();
        assert_eq!(none.limits.git.limits().unwrap(), GitLimits::default());
        let some = config(&format!(
            "{base}limits:\n  git:\n    max_files: 20\n    max_checkout_bytes: 4MiB\n    max_push_bytes: 1048576\n"
        ))
        .unwrap();
        let limits = some.limits.git.limits().unwrap();
        assert_eq!(limits.max_files, 20);
        assert_eq!(limits.max_checkout_bytes, 4 << 20);
        assert_eq!(limits.max_push_bytes, 1 << 20);
        assert_eq!(limits.max_refs, GitLimits::default().max_refs);

        let zero = config(&format!("{base}limits:\n  git:\n    max_refs: 0\n")).unwrap();
        let err = zero.limits.git.limits().unwrap_err();
        assert!(err.contains("limits.git.max_refs"), "{err}");
        let err = config(&format!(
            "{base}limits:\n  git:\n    max_checkout_bytes: lots\n"
        ))
        .unwrap_err();
        assert!(
            err.contains("limits.git.max_checkout_bytes") || err.contains("MiB"),
            "{err}"
        );
        let err = config(&format!("{base}limits:\n  git:\n    max_file: 3\n")).unwrap_err();
        assert!(err.contains("max_file"), "{err}");
    }

    #[test]
    fn build_limits_come_from_the_config_or_their_defaults() {
        let base = "data_dir: /d\nhttp: 127.0.0.1:80\nadmin: 127.0.0.1:7070\n";
        let none = config(base).unwrap();
        assert_eq!(none.limits.builds.limits().unwrap(), BuildLimits::default());
        let some = config(&format!(
            "{base}limits:\n  builds:\n    max_concurrent_builds: 4\n    max_queued_per_project: 3\n"
        ))
        .unwrap();
        let limits = some.limits.builds.limits().unwrap();
        assert_eq!(limits.max_concurrent_builds, 4);
        assert_eq!(limits.max_queued_per_project, 3);
        assert_eq!(limits.max_queued, BuildLimits::default().max_queued);

        let zero = config(&format!("{base}limits:\n  builds:\n    max_queued: 0\n")).unwrap();
        let err = zero.limits.builds.limits().unwrap_err();
        assert!(err.starts_with("limits.builds.max_queued: 0"), "{err}");
        let err = config(&format!("{base}limits:\n  builds:\n    max_queue: 3\n")).unwrap_err();
        assert!(err.contains("max_queue"), "{err}");
    }

    #[test]
    fn peer_limits_come_from_the_config_or_their_defaults() {
        let base = "data_dir: /d\nhttp: 127.0.0.1:80\nadmin: 127.0.0.1:7070\n";
        let none = config(base).unwrap();
        assert_eq!(
            none.limits.cluster.peer_limits().unwrap(),
            PeerLimitsConfig::default()
        );
        let some = config(&format!(
            "{base}limits:\n  cluster:\n    max_requests_in_flight_per_peer: 8\n    request_burst_per_peer: 50\n"
        ))
        .unwrap();
        let limits = some.limits.cluster.peer_limits().unwrap();
        assert_eq!((limits.max_in_flight, limits.burst), (8, 50));
        assert_eq!(
            limits.max_requests_per_second,
            PeerLimitsConfig::default().max_requests_per_second
        );
        for field in [
            "max_requests_in_flight_per_peer",
            "max_requests_per_second_per_peer",
            "request_burst_per_peer",
        ] {
            let zero = config(&format!("{base}limits:\n  cluster:\n    {field}: 0\n")).unwrap();
            let err = zero.limits.cluster.peer_limits().unwrap_err();
            assert!(
                err.starts_with(&format!("limits.cluster.{field}: 0 would refuse")),
                "{err}"
            );
        }
    }

    #[test]
    fn connection_limits_come_from_the_config_or_their_defaults() {
        let base = "data_dir: /d\nhttp: 127.0.0.1:80\nadmin: 127.0.0.1:7070\n";
        let none = config(base).unwrap();
        let gateway = none.limits.gateway.gateway_config().unwrap();
        assert_eq!(
            (gateway.max_connections, gateway.max_connections_per_address),
            (4096, 256)
        );
        assert_eq!(
            (gateway.header_read_timeout_ms, gateway.idle_timeout_ms),
            (30_000, 60_000)
        );
        let admin = none.limits.admin.admin_options().unwrap();
        assert_eq!(
            (admin.max_connections, admin.max_connections_per_address),
            (256, 32)
        );
        assert_eq!(admin.idle_timeout, Duration::from_secs(60));

        let some = config(&format!(
            "{base}limits:\n  gateway:\n    max_connections: 6000\n    max_connections_per_address: 6000\n    idle_timeout: 2m\n  admin:\n    max_connections: 8\n    header_read_timeout: 5s\n"
        ))
        .unwrap();
        let gateway = some.limits.gateway.gateway_config().unwrap();
        assert_eq!(
            (gateway.max_connections, gateway.max_connections_per_address),
            (6000, 6000)
        );
        assert_eq!(
            (gateway.header_read_timeout_ms, gateway.idle_timeout_ms),
            (30_000, 120_000)
        );
        let admin = some.limits.admin.admin_options().unwrap();
        // The default share (32) is cut to a lower total.
        assert_eq!(
            (admin.max_connections, admin.max_connections_per_address),
            (8, 8)
        );
        assert_eq!(admin.header_read_timeout, Duration::from_secs(5));

        for (yaml, field) in [
            (
                "gateway:\n    max_connections_per_address: 0",
                "limits.gateway.max_connections_per_address",
            ),
            (
                "gateway:\n    idle_timeout: 0s",
                "limits.gateway.idle_timeout",
            ),
            (
                "gateway:\n    idle_timeout: soon",
                "limits.gateway.idle_timeout",
            ),
            (
                "admin:\n    max_connections: 0",
                "limits.admin.max_connections",
            ),
            (
                "admin:\n    max_connections: 4\n    max_connections_per_address: 5",
                "limits.admin.max_connections_per_address",
            ),
        ] {
            let bad = config(&format!("{base}limits:\n  {yaml}\n")).unwrap();
            let err = bad
                .limits
                .gateway
                .gateway_config()
                .and_then(|_| bad.limits.admin.admin_options())
                .unwrap_err();
            assert!(err.contains(field), "{yaml}: {err}");
        }
        let err = config(&format!(
            "{base}limits:\n  gateway:\n    max_conections: 3\n"
        ))
        .unwrap_err();
        assert!(err.contains("max_conections"), "{err}");
    }

    #[test]
    fn a_secret_file_holds_64_hex_digits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.secret");
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        assert_eq!(read_secret(&path).unwrap(), [0xab; 32]);

        for bad in ["ab".repeat(31), "zz".repeat(32), String::new()] {
            std::fs::write(&path, bad).unwrap();
            let error = read_secret(&path).unwrap_err().to_string();
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(error.contains("canopy cluster init"), "{error}");
        }
        let missing = dir.path().join("missing");
        let error = format!("{:#}", read_secret(&missing).unwrap_err());
        assert!(error.contains("cannot read"), "{error}");
    }
}
