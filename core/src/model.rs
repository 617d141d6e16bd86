//! The data model: validated names and keys, instances, services, metadata.
//!
//! namespace > group > service > cluster > instance. Every type here is
//! validated when built ("parse, don't validate"): holding a [`ServiceKey`]
//! or an [`InstanceKey`] means its fields are well-formed.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Field, InvalidInput};
use crate::hash::StableHasher;
use crate::small::SmallStr;

/// The namespace used when a request names none.
pub const DEFAULT_NAMESPACE: &str = "public";
/// The group used when a request names none.
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
/// The cluster used when a request names none.
pub const DEFAULT_CLUSTER: &str = "DEFAULT";
/// The weight of an instance registered without one.
pub const DEFAULT_WEIGHT: f64 = 1.0;
/// The largest accepted weight.
pub const MAX_WEIGHT: f64 = 10_000.0;
/// The longest accepted service name, in bytes.
pub const MAX_SERVICE_NAME_LEN: usize = 255;
/// The longest accepted namespace, group or cluster name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// The longest accepted host name, in bytes (RFC 1123).
pub const MAX_HOST_LEN: usize = 253;

/// A validated namespace, group, service or cluster name: 1 to 128 bytes (255
/// for services) of `A-Z a-z 0-9 . _ : -`. Cheap to clone; short names are
/// stored inline.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(SmallStr);

impl Name {
    /// Validates `s` as the value of `field`.
    pub fn parse(field: Field, s: &str) -> Result<Name, InvalidInput> {
        check_name(field, s)?;
        Ok(Name(SmallStr::new(s)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

fn max_len(field: Field) -> usize {
    if field == Field::Service { MAX_SERVICE_NAME_LEN } else { MAX_NAME_LEN }
}

/// Checks `s` against the rule for names of `field`.
pub fn check_name(field: Field, s: &str) -> Result<(), InvalidInput> {
    let max = max_len(field);
    if s.is_empty() || s.len() > max {
        return Err(InvalidInput::new(field, format!("must be 1 to {max} characters long, got {}", s.len())));
    }
    if let Some(bad) = s.chars().find(|c| !is_name_char(*c)) {
        return Err(InvalidInput::new(field, format!("may hold only A-Z a-z 0-9 . _ : -, found {bad:?}")));
    }
    Ok(())
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Deserialises a name checked against the loosest name rule; the keys that
/// hold names re-check each against its own field.
impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        Name::parse(Field::Service, &s).map_err(serde::de::Error::custom)
    }
}

/// The id of a registry node: its advertised address, e.g. `10.0.0.7:8848`.
/// 1 to 255 printable ASCII characters without spaces. Cheap to clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Validates `s` as a node id.
    pub fn parse(s: &str) -> Result<NodeId, InvalidInput> {
        if s.is_empty() || s.len() > 255 {
            return Err(InvalidInput::new(Field::Node, "must be 1 to 255 characters long"));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidInput::new(Field::Node, "must be printable ASCII without spaces"));
        }
        Ok(NodeId(Arc::from(s)))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        NodeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Identifies a service: namespace, group and service name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
pub struct ServiceKey {
    /// The namespace, `public` by default.
    pub namespace: Name,
    /// The group, `DEFAULT_GROUP` by default.
    pub group: Name,
    /// The service name.
    pub service: Name,
}

impl ServiceKey {
    /// Validates a service key; absent namespace and group take their defaults.
    pub fn parse(
        namespace: Option<&str>,
        group: Option<&str>,
        service: &str,
    ) -> Result<ServiceKey, InvalidInput> {
        Ok(ServiceKey {
            namespace: Name::parse(Field::Namespace, namespace.unwrap_or(DEFAULT_NAMESPACE))?,
            group: Name::parse(Field::Group, group.unwrap_or(DEFAULT_GROUP))?,
            service: Name::parse(Field::Service, service)?,
        })
    }

    /// Feeds the key into a stable hasher.
    pub(crate) fn hash_into(&self, h: &mut StableHasher) {
        h.str(self.namespace.as_str()).str(self.group.as_str()).str(self.service.as_str());
    }

    /// The stable hash of the key.
    pub fn stable_hash(&self) -> u64 {
        let mut h = StableHasher::new();
        self.hash_into(&mut h);
        h.finish()
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.group, self.service)
    }
}

#[derive(Deserialize)]
struct RawServiceKey<'a> {
    #[serde(borrow)]
    namespace: Cow<'a, str>,
    #[serde(borrow)]
    group: Cow<'a, str>,
    #[serde(borrow)]
    service: Cow<'a, str>,
}

impl<'de> Deserialize<'de> for ServiceKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ServiceKey, D::Error> {
        let raw = RawServiceKey::deserialize(d)?;
        ServiceKey::parse(Some(&raw.namespace), Some(&raw.group), &raw.service)
            .map_err(serde::de::Error::custom)
    }
}

/// An instance's host: an IPv4 or IPv6 address, or an RFC 1123 host name in
/// lower case. Addresses are kept as numbers, so `0:0::1` and `::1` are one
/// host, they compare without touching memory elsewhere, and they sort
/// numerically (`10.0.0.9` before `10.0.0.10`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Host(HostRepr);

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum HostRepr {
    V4([u8; 4]),
    V6([u8; 16]),
    Name(SmallStr),
}

impl Host {
    /// Validates and canonicalises a host.
    pub fn parse(s: &str) -> Result<Host, InvalidInput> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Host::from(ip));
        }
        check_hostname(s)?;
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            Ok(Host(HostRepr::Name(SmallStr::new(&s.to_ascii_lowercase()))))
        } else {
            Ok(Host(HostRepr::Name(SmallStr::new(s))))
        }
    }

    /// The address, if the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match &self.0 {
            HostRepr::V4(o) => Some(IpAddr::from(*o)),
            HostRepr::V6(o) => Some(IpAddr::from(*o)),
            HostRepr::Name(_) => None,
        }
    }

    /// Whether the host is an IPv6 address (written in brackets before a port).
    pub fn is_ipv6(&self) -> bool {
        matches!(self.0, HostRepr::V6(_))
    }

    /// Feeds the host into a stable hasher.
    pub(crate) fn hash_into(&self, h: &mut StableHasher) {
        match &self.0 {
            HostRepr::V4(o) => h.u64(4).u64(u64::from(u32::from_be_bytes(*o))),
            HostRepr::V6(o) => {
                let v = u128::from_be_bytes(*o);
                h.u64(6).u64((v >> 64) as u64).u64(v as u64)
            }
            HostRepr::Name(n) => h.u64(0).str(n.as_str()),
        };
    }
}

impl From<IpAddr> for Host {
    fn from(ip: IpAddr) -> Host {
        match ip {
            IpAddr::V4(v4) => Host(HostRepr::V4(v4.octets())),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                // `::ffff:10.0.0.1` is the IPv4 host it maps.
                Some(v4) => Host(HostRepr::V4(v4.octets())),
                None => Host(HostRepr::V6(v6.octets())),
            },
        }
    }
}

fn check_hostname(s: &str) -> Result<(), InvalidInput> {
    let bad = |why: &str| {
        InvalidInput::new(
            Field::Ip,
            format!("must be an IPv4 address, an IPv6 address or a host name ({why}), got {s:?}"),
        )
    };
    if s.is_empty() || s.len() > MAX_HOST_LEN {
        return Err(bad("1 to 253 characters"));
    }
    let all_numeric = s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if all_numeric {
        return Err(bad("not a valid IPv4 address"));
    }
    for label in s.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("labels of 1 to 63 characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(bad("letters, digits, '-' and '.'"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("labels do not start or end with '-'"));
        }
    }
    Ok(())
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            HostRepr::Name(n) => f.write_str(n.as_str()),
            _ => match self.ip() {
                Some(ip) => fmt::Display::fmt(&ip, f),
                None => Ok(()),
            },
        }
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl Serialize for Host {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            HostRepr::Name(n) => s.serialize_str(n.as_str()),
            _ => {
                // An address is at most 39 characters: format on the stack.
                let mut buf = StackStr::default();
                let _ = fmt::Write::write_fmt(&mut buf, format_args!("{self}"));
                s.serialize_str(buf.as_str())
            }
        }
    }
}

/// A small fixed buffer to format short values without allocating.
struct StackStr {
    buf: [u8; 64],
    len: usize,
}

impl Default for StackStr {
    fn default() -> Self {
        StackStr { buf: [0; 64], len: 0 }
    }
}

impl StackStr {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Host {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Host, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        Host::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Validates a port given as any integer.
pub fn parse_port(port: i64) -> Result<u16, InvalidInput> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(InvalidInput::new(Field::Port, format!("must be 1 to 65535, got {port}"))),
    }
}

/// Validates a weight: finite, 0 to 10000.
pub fn parse_weight(weight: f64) -> Result<f64, InvalidInput> {
    if weight.is_finite() && (0.0..=MAX_WEIGHT).contains(&weight) {
        Ok(weight)
    } else {
        Err(InvalidInput::new(Field::Weight, format!("must be a number from 0 to 10000, got {weight}")))
    }
}

/// Validates a protect threshold: finite, 0 to 1.
pub fn parse_protect_threshold(t: f64) -> Result<f64, InvalidInput> {
    if t.is_finite() && (0.0..=1.0).contains(&t) {
        Ok(t)
    } else {
        Err(InvalidInput::new(Field::ProtectThreshold, format!("must be a number from 0 to 1, got {t}")))
    }
}

/// Identifies an instance: service, cluster, host and port.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
pub struct InstanceKey {
    /// The service the instance belongs to.
    pub service: ServiceKey,
    /// The cluster within the service, `DEFAULT` by default.
    pub cluster: Name,
    /// The host.
    pub ip: Host,
    /// The port, 1 to 65535.
    pub port: u16,
}

impl InstanceKey {
    /// Validates an instance key; an absent cluster takes its default.
    pub fn parse(
        service: ServiceKey,
        cluster: Option<&str>,
        ip: &str,
        port: i64,
    ) -> Result<InstanceKey, InvalidInput> {
        Ok(InstanceKey {
            service,
            cluster: Name::parse(Field::Cluster, cluster.unwrap_or(DEFAULT_CLUSTER))?,
            ip: Host::parse(ip)?,
            port: parse_port(port)?,
        })
    }

    /// The stable hash of the key: the same on every node and platform.
    pub fn stable_hash(&self) -> u64 {
        instance_hash(self.service.stable_hash(), &self.cluster, &self.ip, self.port)
    }

    /// The instance id shown to clients: `ip#port#cluster`.
    pub fn instance_id(&self) -> String {
        instance_id(&self.ip, self.port, &self.cluster)
    }
}

/// `ip#port#cluster`, written without the formatting machinery for IPv4
/// hosts and names (it showed in profiles of registration and view building).
pub(crate) fn instance_id(ip: &Host, port: u16, cluster: &Name) -> String {
    let mut id = String::with_capacity(22 + cluster.as_str().len());
    match &ip.0 {
        HostRepr::V4(o) => {
            for (i, octet) in o.iter().enumerate() {
                if i > 0 {
                    id.push('.');
                }
                push_decimal(&mut id, u32::from(*octet));
            }
        }
        HostRepr::Name(n) => id.push_str(n.as_str()),
        HostRepr::V6(_) => {
            use fmt::Write;
            let _ = write!(id, "{ip}");
        }
    }
    id.push('#');
    push_decimal(&mut id, u32::from(port));
    id.push('#');
    id.push_str(cluster.as_str());
    id
}

/// Appends `v` in decimal.
fn push_decimal(out: &mut String, v: u32) {
    let mut digits = [0u8; 10];
    let mut n = v;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// The stable hash of an instance key given by parts.
/// The stable hash of an instance key from its service's stable hash.
pub(crate) fn instance_hash(service_hash: u64, cluster: &Name, ip: &Host, port: u16) -> u64 {
    let mut h = StableHasher::new();
    h.u64(service_hash);
    h.str(cluster.as_str());
    ip.hash_into(&mut h);
    h.u64(u64::from(port));
    h.finish()
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ip.is_ipv6() {
            write!(f, "{}/{}/[{}]:{}", self.service, self.cluster, self.ip, self.port)
        } else {
            write!(f, "{}/{}/{}:{}", self.service, self.cluster, self.ip, self.port)
        }
    }
}

#[derive(Deserialize)]
struct RawInstanceKey<'a> {
    service: ServiceKey,
    #[serde(borrow)]
    cluster: Cow<'a, str>,
    #[serde(borrow)]
    ip: Cow<'a, str>,
    port: u16,
}

impl<'de> Deserialize<'de> for InstanceKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<InstanceKey, D::Error> {
        let raw = RawInstanceKey::deserialize(d)?;
        InstanceKey::parse(raw.service, Some(&raw.cluster), &raw.ip, i64::from(raw.port))
            .map_err(serde::de::Error::custom)
    }
}

/// String metadata of an instance or a service, sorted by key.
///
/// Compact in memory: all keys and values in one shared allocation,
/// separated by NUL (which metadata may not contain: control characters are
/// refused), so an instance's metadata costs one allocation however many
/// entries it has, and cloning it is a reference count.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Metadata(Option<Arc<str>>, u32);

impl Metadata {
    /// Builds metadata from a map, checking it against `limits`.
    pub fn parse(map: BTreeMap<String, String>, limits: &MetadataLimits) -> Result<Metadata, InvalidInput> {
        let m = Metadata::from_map(map)?;
        m.check(limits)?;
        Ok(m)
    }

    /// Builds metadata from a map without checking limits; refuses control
    /// characters, which the compact form cannot hold.
    pub fn from_map(map: BTreeMap<String, String>) -> Result<Metadata, InvalidInput> {
        if map.is_empty() {
            return Ok(Metadata(None, 0));
        }
        let len =
            u32::try_from(map.len()).map_err(|_| InvalidInput::new(Field::Metadata, "too many entries"))?;
        if let Some((k, _)) = map.iter().find(|(k, v)| has_control(k) || has_control(v)) {
            return Err(InvalidInput::new(Field::Metadata, format!("entry {k:?} holds a control character")));
        }
        if let Some(k) = map.keys().find(|k| k.is_empty() || k.len() > MAX_METADATA_KEY_LEN) {
            return Err(InvalidInput::new(
                Field::Metadata,
                format!("keys must be 1 to {MAX_METADATA_KEY_LEN} bytes, got {} bytes", k.len()),
            ));
        }
        let mut text = String::with_capacity(map.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
        for (k, v) in &map {
            text.push_str(k);
            text.push('\0');
            text.push_str(v);
            text.push('\0');
        }
        Ok(Metadata(Some(Arc::from(text)), len))
    }

    /// Checks the entry count and the byte size (key lengths and characters
    /// were checked when it was built).
    pub fn check(&self, limits: &MetadataLimits) -> Result<(), InvalidInput> {
        let len = self.len();
        if len > limits.max_entries {
            return Err(InvalidInput::new(
                Field::Metadata,
                format!("at most {} entries, got {len}", limits.max_entries),
            ));
        }
        let bytes = self.byte_size();
        if bytes > limits.max_bytes {
            return Err(InvalidInput::new(
                Field::Metadata,
                format!("at most {} bytes of keys and values, got {bytes}", limits.max_bytes),
            ));
        }
        Ok(())
    }

    /// Total bytes of keys and values.
    pub fn byte_size(&self) -> usize {
        self.0.as_deref().map_or(0, |t| t.len() - 2 * self.len())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.0.as_deref().unwrap_or("").split('\0');
        std::iter::from_fn(move || {
            let k = parts.next()?;
            let v = parts.next()?;
            Some((k, v))
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.1 as usize
    }

    /// Whether some key starts with `prefix` (a fast scan of the text first).
    pub fn has_key_prefix(&self, prefix: &str) -> bool {
        self.0.as_deref().is_some_and(|t| t.contains(prefix))
            && self.iter().any(|(k, _)| k.starts_with(prefix))
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Whether `self` and `other` share their storage (and so are equal).
    pub(crate) fn same_storage(&self, other: &Metadata) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    /// A map copy of the entries.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    }

    pub(crate) fn hash_into(&self, h: &mut StableHasher) {
        // The NUL-separated text encodes keys and values unambiguously.
        h.str(self.0.as_deref().unwrap_or(""));
    }
}

/// The longest metadata key, in bytes.
pub const MAX_METADATA_KEY_LEN: usize = 128;

fn has_control(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == 0x7f) || (!s.is_ascii() && s.chars().any(char::is_control))
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Metadata, D::Error> {
        Metadata::from_map(BTreeMap::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Limits on metadata, from the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetadataLimits {
    /// Most entries.
    pub max_entries: usize,
    /// Most bytes of keys and values together.
    pub max_bytes: usize,
}

/// The replicated state of a live instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceData {
    /// Share of traffic relative to the service's other instances, 0 to 10000.
    pub weight: f64,
    /// Whether the instance passes its health check (heartbeats for ephemeral
    /// instances, active checks or the client for persistent ones).
    pub healthy: bool,
    /// Whether the instance takes traffic at all.
    pub enabled: bool,
    /// Whether the instance lives by heartbeats (`true`) or is persistent.
    pub ephemeral: bool,
    /// Free-form string metadata.
    pub metadata: Metadata,
}

impl InstanceData {
    pub(crate) fn hash_into(&self, h: &mut StableHasher) {
        h.u64(self.weight.to_bits())
            .u64(u64::from(self.healthy))
            .u64(u64::from(self.enabled))
            .u64(u64::from(self.ephemeral));
        self.metadata.hash_into(h);
    }
}

/// The replicated, client-settable state of a service.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct ServiceMeta {
    /// When the share of healthy instances falls below this (0 to 1), queries
    /// return all instances and say so.
    pub protect_threshold: f64,
    /// Free-form string metadata.
    pub metadata: Metadata,
}

impl ServiceMeta {
    pub(crate) fn hash_into(&self, h: &mut StableHasher) {
        h.u64(self.protect_threshold.to_bits());
        self.metadata.hash_into(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> MetadataLimits {
        MetadataLimits { max_entries: 2, max_bytes: 10 }
    }

    #[test]
    fn names_outside_the_charset_are_refused_with_the_field() {
        let err = Name::parse(Field::Group, "a b").unwrap_err();
        assert_eq!(err.field, Field::Group);
        assert!(Name::parse(Field::Cluster, "").is_err());
        assert!(Name::parse(Field::Cluster, &"x".repeat(129)).is_err());
        assert!(Name::parse(Field::Service, &"x".repeat(255)).is_ok());
        assert!(Name::parse(Field::Service, "orders-v2.prod:eu_1").is_ok());
    }

    #[test]
    fn hosts_are_canonicalised() {
        assert_eq!(Host::parse("0:0::1").unwrap().to_string(), "::1");
        assert_eq!(Host::parse("Db-1.Example.COM").unwrap().to_string(), "db-1.example.com");
        assert_eq!(Host::parse("10.0.0.1").unwrap().to_string(), "10.0.0.1");
        assert_eq!(Host::parse("::ffff:10.0.0.1").unwrap(), Host::parse("10.0.0.1").unwrap());
        assert!(Host::parse("10.0.0.9").unwrap() < Host::parse("10.0.0.10").unwrap());
    }

    #[test]
    fn malformed_hosts_are_refused() {
        for bad in ["", "10.0.0.256", "-a.com", "a..b", "a_b", "1.2.3", &"a".repeat(64)] {
            assert_eq!(Host::parse(bad).unwrap_err().field, Field::Ip, "{bad}");
        }
    }

    #[test]
    fn ports_weights_and_thresholds_are_range_checked() {
        assert!(parse_port(0).is_err());
        assert!(parse_port(65536).is_err());
        assert_eq!(parse_port(8080).unwrap(), 8080);
        assert!(parse_weight(f64::NAN).is_err());
        assert!(parse_weight(-1.0).is_err());
        assert!(parse_weight(10_000.5).is_err());
        assert_eq!(parse_weight(0.0).unwrap(), 0.0);
        assert!(parse_protect_threshold(1.5).is_err());
    }

    #[test]
    fn metadata_over_its_limits_is_refused() {
        let three = [("a", "1"), ("b", "2"), ("c", "3")].map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert!(Metadata::parse(three.into_iter().collect(), &limits()).is_err());
        let big = [("k".to_owned(), "0123456789".to_owned())].into_iter().collect();
        assert!(Metadata::parse(big, &limits()).is_err());
        let ok = Metadata::parse([("k".to_owned(), "v".to_owned())].into_iter().collect(), &limits());
        assert_eq!(ok.unwrap().get("k"), Some("v"));
    }

    #[test]
    fn key_deserialisation_revalidates_every_field() {
        let key =
            InstanceKey::parse(ServiceKey::parse(None, None, "svc").unwrap(), None, "10.0.0.1", 80).unwrap();
        let bytes = postcard::to_allocvec(&key).unwrap();
        let back: InstanceKey = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, key);
        let mut bad = bytes.clone();
        // Corrupt the first byte of the namespace string into a space.
        bad[1] = b' ';
        assert!(postcard::from_bytes::<InstanceKey>(&bad).is_err());
    }

    proptest::proptest! {
        #[test]
        fn instance_ids_read_ip_hash_port_hash_cluster_for_every_host(
            v4 in proptest::prelude::any::<[u8; 4]>(),
            v6 in proptest::prelude::any::<[u8; 16]>(),
            port in 1u16..,
        ) {
            let cluster = Name::parse(Field::Cluster, "east-1").unwrap();
            let hosts = [
                Host::from(IpAddr::from(v4)),
                Host::from(IpAddr::from(v6)),
                Host::parse("db-1.example").unwrap(),
            ];
            for host in hosts {
                proptest::prop_assert_eq!(
                    instance_id(&host, port, &cluster),
                    format!("{host}#{port}#east-1")
                );
            }
        }
    }
}
