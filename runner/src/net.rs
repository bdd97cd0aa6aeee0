//! The job's network: none unless `--allow-net` grants it, and then only what the
//! allow-list names. Every TCP connect, bind and listen, every UDP bind, send and
//! receive goes through [`AllowList::allows`]; a name lookup (`wasi:sockets/
//! ip-name-lookup`) is answered only for host names in the list, and the addresses it
//! returns are what a connect to that host may reach. An outgoing HTTP request
//! (`wasi:http/outgoing-handler`) goes out only to a host and port the list names
//! ([`HttpHooks`]).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use http_body_util::BodyExt;
use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::SocketError;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    self, HostResolveAddressStream, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddress, Network};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsCtxView, WasiSocketsView};
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks, default_send_request};

use crate::host::JobState;

/// At most this many refusals are said, each once: a job that retries in a loop must
/// not flood the log.
const REFUSALS_SAID: usize = 16;

/// One `--allow-net` entry: a host and the ports it may be reached on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    host: HostPattern,
    /// The ports, first and last; `None`: all.
    ports: Option<(u16, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `*`: everything.
    Any,
    /// A host name, lower case, without a final dot.
    Name(String),
    /// `*.DOMAIN`: any name that ends with `.DOMAIN`.
    Subdomains(String),
    /// An address or a CIDR block.
    Block(IpAddr, u8),
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(text: &str) -> Result<Rule, String> {
        let bad = |why: &str| format!("`{text}`: {why}");
        if text == "*" {
            return Ok(Rule {
                host: HostPattern::Any,
                ports: None,
            });
        }
        // [IPv6]:PORTS, [IPv6/LEN], HOST:PORTS, HOST; a bare IPv6 address has no port.
        let (host, ports) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address opened with [ must close with ]"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("after ] comes nothing or :PORT"))?,
                    ),
                ),
            }
        } else if text.matches(':').count() > 1 {
            (text, None)
        } else {
            match text.split_once(':') {
                Some((host, ports)) => (host, Some(ports)),
                None => (text, None),
            }
        };
        let ports = ports.map(|ports| parse_ports(ports).map_err(|why| bad(&why)));
        Ok(Rule {
            host: parse_host(host).map_err(|why| bad(&why))?,
            ports: ports.transpose()?,
        })
    }
}

fn parse_ports(text: &str) -> Result<(u16, u16), String> {
    let port = |text: &str| {
        text.parse::<u16>()
            .ok()
            .filter(|&port| port > 0)
            .ok_or_else(|| format!("`{text}` is not a port (1-65535)"))
    };
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (port(first)?, port(last)?),
        None => (port(text)?, port(text)?),
    };
    if first > last {
        return Err(format!("the port range {first}-{last} is empty"));
    }
    Ok((first, last))
}

fn parse_host(text: &str) -> Result<HostPattern, String> {
    if let Some((address, length)) = text.split_once('/') {
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("`{address}` before the / is not an IP address"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let length = length
            .parse::<u8>()
            .ok()
            .filter(|&length| length <= max)
            .ok_or_else(|| format!("`/{length}` is not a prefix length (0-{max})"))?;
        // An IPv4-mapped block (`::ffff:10.0.0.0/104`) is the IPv4 block it maps.
        return match address.to_canonical() {
            IpAddr::V4(v4) if address.is_ipv6() => match length.checked_sub(96) {
                Some(length) => Ok(HostPattern::Block(IpAddr::V4(v4), length)),
                None => Err(format!(
                    "`/{length}` is shorter than the IPv4-mapped prefix (/96) of `{address}`"
                )),
            },
            address => Ok(HostPattern::Block(address, length)),
        };
    }
    if let Ok(address) = text.parse::<IpAddr>() {
        let length = if address.to_canonical().is_ipv4() {
            32
        } else {
            128
        };
        return Ok(HostPattern::Block(address.to_canonical(), length));
    }
    let (domain, subdomains) = match text.strip_prefix("*.") {
        Some(domain) => (domain, true),
        None => (text, false),
    };
    let name = domain.trim_end_matches('.').to_ascii_lowercase();
    // A last label of digits would make a name an IPv4 address to the lookup (`0x7f.1`).
    let numeric = name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()));
    let valid = !name.is_empty()
        && !numeric
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(format!(
            "`{text}` is not a host name, IP address or CIDR block (nor *, or *.DOMAIN)"
        ));
    }
    Ok(if subdomains {
        HostPattern::Subdomains(name)
    } else {
        HostPattern::Name(name)
    })
}

impl Rule {
    fn allows_port(&self, port: u16) -> bool {
        self.ports
            .is_none_or(|(first, last)| (first..=last).contains(&port))
    }

    /// Whether the rule names the host `name` (lower case, no final dot).
    fn names(&self, name: &str) -> bool {
        match &self.host {
            HostPattern::Any => true,
            HostPattern::Name(host) => host == name,
            HostPattern::Subdomains(domain) => name
                .strip_suffix(domain.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            HostPattern::Block(..) => false,
        }
    }

    fn contains(&self, address: IpAddr) -> bool {
        match self.host {
            HostPattern::Any => true,
            HostPattern::Block(block, length) => in_block(address, block, length),
            HostPattern::Name(_) | HostPattern::Subdomains(_) => false,
        }
    }
}

fn in_block(address: IpAddr, block: IpAddr, length: u8) -> bool {
    match (address, block) {
        (IpAddr::V4(address), IpAddr::V4(block)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(length)).unwrap_or(0);
            u32::from(address) & mask == u32::from(block) & mask
        }
        (IpAddr::V6(address), IpAddr::V6(block)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(length)).unwrap_or(0);
            u128::from(address) & mask == u128::from(block) & mask
        }
        _ => false,
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bracket =
            matches!(self.host, HostPattern::Block(IpAddr::V6(_), _)) && self.ports.is_some();
        match &self.host {
            HostPattern::Any => return write!(f, "*"),
            HostPattern::Name(name) => write!(f, "{name}")?,
            HostPattern::Subdomains(domain) => write!(f, "*.{domain}")?,
            HostPattern::Block(address, length) => {
                let full = if address.is_ipv4() { 32 } else { 128 };
                match (bracket, *length == full) {
                    (true, true) => write!(f, "[{address}]")?,
                    (true, false) => write!(f, "[{address}/{length}]")?,
                    (false, true) => write!(f, "{address}")?,
                    (false, false) => write!(f, "{address}/{length}")?,
                }
            }
        }
        match self.ports {
            Some((first, last)) if first == last => write!(f, ":{first}"),
            Some((first, last)) => write!(f, ":{first}-{last}"),
            None => Ok(()),
        }
    }
}

/// What the job may reach: the rules, and the addresses name lookups of the hosts they
/// name returned.
#[derive(Debug, Default)]
pub struct AllowList {
    rules: Vec<Rule>,
    /// Addresses a lookup of a named host returned, with the rules that named it.
    resolved: Mutex<HashMap<IpAddr, Vec<usize>>>,
    /// The lookups under way of hosts the list names, by stream, with those rules.
    lookups: Mutex<HashMap<u32, Vec<usize>>>,
    /// The refusals said so far.
    said: Mutex<Vec<String>>,
}

impl AllowList {
    /// The allow-list of `rules` (none: no network at all).
    pub fn new(rules: Vec<Rule>) -> Self {
        AllowList {
            rules,
            ..AllowList::default()
        }
    }

    /// Whether the list grants anything.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether the job may use `address` for `usage`: a bind to an ephemeral port (what
    /// a connect does) always; otherwise only an address in a block of the list, or one
    /// a lookup of a host in the list returned, on a port the rule allows.
    pub fn allows(&self, address: SocketAddr, usage: SocketAddrUse) -> bool {
        let local = matches!(
            usage,
            SocketAddrUse::TcpBind | SocketAddrUse::TcpListen | SocketAddrUse::UdpBind
        );
        let implicit = local && address.port() == 0;
        let (ip, port) = (address.ip().to_canonical(), address.port());
        let allowed = implicit
            || self
                .rules
                .iter()
                .any(|rule| rule.contains(ip) && rule.allows_port(port))
            // A named host's addresses are to reach, not to listen on.
            || !local
                && self
                    .resolved
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&ip)
                    .is_some_and(|rules| {
                        rules.iter().any(|&rule| self.rules[rule].allows_port(port))
                    });
        if !allowed {
            let what = match usage {
                SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => "bind to",
                SocketAddrUse::TcpListen => "listen on",
                SocketAddrUse::TcpConnect => "connect to",
                SocketAddrUse::UdpSend => "send a datagram to",
                SocketAddrUse::TcpAccept | SocketAddrUse::UdpReceive => "receive from",
            };
            self.refused(format!("{what} {address}"));
        }
        allowed
    }

    /// The rules that name the host `name`; says so if there are none.
    fn naming(&self, name: &str) -> Vec<usize> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let rules: Vec<usize> = (0..self.rules.len())
            .filter(|&rule| self.rules[rule].names(&name))
            .collect();
        if rules.is_empty() {
            self.refused(format!("look up `{name}`"));
        }
        rules
    }

    fn lookups(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Vec<usize>>> {
        self.lookups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that a lookup for `rules` returned `address`.
    fn resolved(&self, address: IpAddr, rules: &[usize]) {
        let mut resolved = self.resolved.lock().unwrap_or_else(PoisonError::into_inner);
        let known = resolved.entry(address.to_canonical()).or_default();
        for rule in rules {
            if !known.contains(rule) {
                known.push(*rule);
            }
        }
    }

    /// Says, once for each, that the job was refused `what`.
    fn refused(&self, what: String) {
        let mut said = self.said.lock().unwrap_or_else(PoisonError::into_inner);
        if said.len() < REFUSALS_SAID && !said.contains(&what) {
            tracing::warn!(
                "the job may not {what}: not in --allow-net ({})",
                if self.rules.is_empty() {
                    "the job has no network unless given one".to_owned()
                } else {
                    self.rules
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
            said.push(what);
        }
    }
}

impl AllowList {
    /// Whether the job may send an HTTP request to `host` (a name, or an address in
    /// brackets or not) on `port`; says so if not.
    fn allows_request(&self, host: &str, port: u16) -> bool {
        let allowed = match host.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(address) => {
                let address = address.to_canonical();
                self.rules
                    .iter()
                    .any(|rule| rule.contains(address) && rule.allows_port(port))
            }
            Err(_) => {
                let name = host.trim_end_matches('.').to_ascii_lowercase();
                self.rules
                    .iter()
                    .any(|rule| rule.names(&name) && rule.allows_port(port))
            }
        };
        if !allowed {
            self.refused(format!("send an HTTP request to {host}:{port}"));
        }
        allowed
    }
}

/// `wasi:http`'s hooks for the job: a request goes out (wasmtime-wasi-http's own way,
/// https included) only to a host and port the allow-list names; any other gets
/// `HTTP-request-denied` before a connection is made.
#[derive(Debug)]
pub struct HttpHooks {
    allowed: Arc<AllowList>,
}

impl HttpHooks {
    /// The hooks of a job whose network is `allowed`.
    pub fn new(allowed: Arc<AllowList>) -> Self {
        HttpHooks { allowed }
    }
}

/// What [`WasiHttpHooks::send_request`] returns.
type Sent = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _request_done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Sent {
        let uri = request.uri();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if !self.allowed.allows_request(uri.host().unwrap_or(""), port) {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            let (response, io) = default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Grants the job in `wasi` the network `allowed` lets it reach: TCP, UDP and name
/// lookups, each use checked against the list. An empty list grants nothing.
pub fn grant(wasi: &mut WasiCtxBuilder, allowed: &Arc<AllowList>) {
    if allowed.is_empty() {
        return;
    }
    let check = Arc::clone(allowed);
    wasi.allow_tcp(true)
        .allow_udp(true)
        .allow_ip_name_lookup(true)
        .socket_addr_check(move |address, usage| {
            let allowed = check.allows(address, usage);
            Box::pin(async move { allowed })
        });
}

/// `wasi:sockets/ip-name-lookup` through the allow-list, in place of wasmtime-wasi's
/// (which `linker` must already have): a name the list does not name gets
/// `access-denied`, and the addresses an allowed one resolves to become reachable.
pub fn add_lookup_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = ip_name_lookup::add_to_linker::<_, Lookups>(linker, |state| {
        let allowed = Arc::clone(state.allowed_net());
        Lookup {
            sockets: state.sockets(),
            allowed,
        }
    });
    linker.allow_shadowing(false);
    added
}

struct Lookups;

impl HasData for Lookups {
    type Data<'a> = Lookup<'a>;
}

/// wasmtime-wasi's name lookup, and the allow-list it answers to.
struct Lookup<'a> {
    sockets: WasiSocketsCtxView<'a>,
    allowed: Arc<AllowList>,
}

/// Only for the bindings, which want it: the job's `wasi:sockets/network` is
/// wasmtime-wasi's.
impl network::Host for Lookup<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        self.sockets.convert_error_code(error)
    }

    fn network_error_code(
        &mut self,
        error: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        self.sockets.network_error_code(error)
    }
}

impl network::HostNetwork for Lookup<'_> {
    fn drop(&mut self, network: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.sockets, network)
    }
}

impl ip_name_lookup::Host for Lookup<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<ResolveAddressStream>, SocketError> {
        // An address needs no lookup: what it may reach is the connect's to check.
        let rules = match name.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(_) => Vec::new(),
            Err(_) => {
                let rules = self.allowed.naming(&name);
                if rules.is_empty() && !self.allowed.is_empty() {
                    return Err(ErrorCode::AccessDenied.into());
                }
                rules
            }
        };
        // Without a network, wasmtime-wasi's own refusal, as without the list.
        let stream = self.sockets.resolve_addresses(network, name)?;
        if !rules.is_empty() {
            self.allowed.lookups().insert(stream.rep(), rules);
        }
        Ok(stream)
    }
}

impl HostResolveAddressStream for Lookup<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> Result<Option<IpAddress>, SocketError> {
        let key = stream.rep();
        let next = self.sockets.resolve_next_address(stream)?;
        if let Some(address) = next {
            let address = match address {
                IpAddress::Ipv4((a, b, c, d)) => IpAddr::from([a, b, c, d]),
                IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::from([a, b, c, d, e, f, g, h]),
            };
            if let Some(rules) = self.allowed.lookups().get(&key) {
                self.allowed.resolved(address, rules);
            }
        }
        Ok(next)
    }

    fn subscribe(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.sockets.subscribe(stream)
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        self.allowed.lookups().remove(&stream.rep());
        HostResolveAddressStream::drop(&mut self.sockets, stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(rules: &[&str], address: &str, usage: SocketAddrUse) -> bool {
        let rules = rules
            .iter()
            .map(|rule| rule.parse().expect("a rule"))
            .collect();
        AllowList::new(rules).allows(address.parse().expect("an address"), usage)
    }

    #[test]
    fn rules_parse_and_show_as_given() {
        for rule in [
            "*",
            "db.internal",
            "db.internal:5432",
            "*.example.com:443",
            "10.0.0.0/8",
            "10.1.2.3:80-90",
            "[fd00::/8]:443",
            "[::1]:6379",
            "::1",
        ] {
            assert_eq!(rule.parse::<Rule>().expect("a rule").to_string(), rule);
        }
        assert_eq!(
            "DB.Internal.:1"
                .parse::<Rule>()
                .expect("a rule")
                .to_string(),
            "db.internal:1"
        );
        for bad in [
            "",
            "a:b",
            "a:70000",
            "1.2.3.4/40",
            "-a.b",
            "a..b",
            "[::1]x",
            "*.*",
        ] {
            assert!(bad.parse::<Rule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_match_blocks_and_ports() {
        use SocketAddrUse::{TcpAccept, TcpBind, TcpConnect, UdpSend};
        assert!(allows(&["10.0.0.0/8:443"], "10.9.8.7:443", TcpConnect));
        assert!(!allows(&["10.0.0.0/8:443"], "10.9.8.7:80", TcpConnect));
        assert!(!allows(&["10.0.0.0/8"], "11.0.0.1:80", UdpSend));
        assert!(allows(&["[fd00::/8]"], "[fd12::1]:1", TcpConnect));
        // An IPv4 address written as IPv6 is the same address.
        assert!(allows(
            &["127.0.0.1:80"],
            "[::ffff:127.0.0.1]:80",
            TcpConnect
        ));
        assert!(allows(&["0.0.0.0/0"], "1.2.3.4:5", TcpConnect));
        // A connect's own bind, to an ephemeral port, but no listening port.
        assert!(allows(&["10.0.0.1:80"], "0.0.0.0:0", TcpBind));
        assert!(!allows(&["10.0.0.1:80"], "0.0.0.0:8080", TcpBind));
        assert!(allows(&["*"], "0.0.0.0:8080", TcpBind));
        // A client is accepted only from where the list allows.
        assert!(!allows(&["10.0.0.0/8"], "192.168.1.1:5000", TcpAccept));
        assert!(allows(&["10.0.0.0/8"], "10.1.1.1:5000", TcpAccept));
        // An IPv4-mapped block is its IPv4 block, not all of IPv4.
        assert!(allows(&["[::ffff:10.0.0.0/104]"], "10.9.9.9:1", TcpConnect));
        assert!(!allows(
            &["[::ffff:10.0.0.0/104]"],
            "11.0.0.1:1",
            TcpConnect
        ));
        assert!("[::ffff:10.0.0.0/64]".parse::<Rule>().is_err());
        // A host name reaches nothing until a lookup of it returned the address.
        assert!(!allows(&["localhost:80"], "127.0.0.1:80", TcpConnect));
        let list = AllowList::new(vec!["localhost:80".parse().expect("test value")]);
        let rules = list.naming("LocalHost.");
        assert_eq!(rules, [0]);
        list.resolved("127.0.0.1".parse().expect("test value"), &rules);
        assert!(list.allows("127.0.0.1:80".parse().expect("test value"), TcpConnect));
        assert!(!list.allows("127.0.0.1:81".parse().expect("test value"), TcpConnect));
        assert!(list.naming("example.com").is_empty());
    }

    #[test]
    fn subdomains_match_below_the_domain_only() {
        let rule: Rule = "*.example.com".parse().expect("test value");
        assert!(rule.names("api.example.com"));
        assert!(rule.names("a.b.example.com"));
        assert!(!rule.names("example.com"));
        assert!(!rule.names("badexample.com"));
    }
}
