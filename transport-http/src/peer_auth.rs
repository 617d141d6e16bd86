//! Signed peer requests: HMAC-SHA256 keyed by the cluster secret.
//!
//! Every `POST /cluster/v1/messages` carries, besides its body of frames,
//!
//! - `x-muster-from`: the sender's node id (every frame inside must say the same),
//! - `x-muster-timestamp`: the sender's wall clock, Unix milliseconds,
//! - `x-muster-nonce`: 32 hex digits, never reused by the sender,
//! - `authorization: Muster-HMAC-SHA256 <64 hex digits>`: the HMAC of
//!   `"muster-peer-v1\n" from "\n" timestamp "\n" nonce "\n"` followed by the
//!   body, keyed by the cluster secret.
//!
//! The secret itself never travels. The receiver refuses (401) a sender that
//! is not one of its peers, a timestamp more than `peer_clock_window_ms` from
//! its own clock, a signature that does not verify (compared in constant
//! time by `hmac`), and a nonce it has already accepted from that sender
//! within the window: a captured request cannot be replayed, and `from` is
//! tied to the key holder's signature. The nonces seen are kept per peer only
//! for the window, at most [`NONCES_MAX`] per peer. TLS can later wrap the
//! same requests without changing this layer.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use hyper::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use muster_core::NodeId;
use sha2::Sha256;

use crate::config::Secret;
use crate::error::ApiError;

/// The sender's node id.
pub(crate) const FROM: HeaderName = HeaderName::from_static("x-muster-from");
/// The sender's wall clock at signing, Unix milliseconds.
pub(crate) const TIMESTAMP: HeaderName = HeaderName::from_static("x-muster-timestamp");
/// A value the sender never reuses.
pub(crate) const NONCE: HeaderName = HeaderName::from_static("x-muster-nonce");
/// The `authorization` scheme of a signed peer request.
pub(crate) const SCHEME: &str = "Muster-HMAC-SHA256 ";
/// The domain separator at the start of every signed text.
const CONTEXT: &[u8] = b"muster-peer-v1\n";
/// Most nonces remembered per peer (a peer sending more within one window is
/// refused until older ones age out).
pub(crate) const NONCES_MAX: usize = 200_000;

type HmacSha256 = Hmac<Sha256>;

/// The signature headers of one request, as the sender sets them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Signed {
    pub(crate) from: String,
    pub(crate) timestamp_ms: u64,
    pub(crate) nonce: String,
    pub(crate) mac: [u8; 32],
}

/// Wall clock, Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn mac(secret: &Secret, from: &str, timestamp_ms: u64, nonce: &str, body: &[u8]) -> HmacSha256 {
    // Invariant: HMAC takes keys of any length; `new_from_slice` never fails for it.
    #[allow(clippy::expect_used)]
    let mut m =
        HmacSha256::new_from_slice(secret.as_str().as_bytes()).expect("HMAC takes keys of any length");
    m.update(CONTEXT);
    m.update(from.as_bytes());
    m.update(b"\n");
    m.update(timestamp_ms.to_string().as_bytes());
    m.update(b"\n");
    m.update(nonce.as_bytes());
    m.update(b"\n");
    m.update(body);
    m
}

/// A fresh nonce: 64 bits drawn at start, then a counter (unique per
/// process; unpredictability is not needed, uniqueness is).
fn nonce() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let mut z = nanos ^ (u64::from(std::process::id()) << 32);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z ^ (z >> 27)
    });
    format!("{prefix:016x}{:016x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Sets the signature headers of a request from `from` with `body`.
pub(crate) fn sign(
    headers: &mut HeaderMap,
    secret: &Secret,
    from: &NodeId,
    body: &[u8],
) -> Result<(), String> {
    let (timestamp_ms, nonce) = (unix_ms(), nonce());
    let tag = mac(secret, from.as_str(), timestamp_ms, &nonce, body).finalize().into_bytes();
    let value = |s: String| HeaderValue::from_str(&s).map_err(|e| e.to_string());
    headers.insert(FROM, value(from.as_str().to_owned())?);
    headers.insert(TIMESTAMP, value(timestamp_ms.to_string())?);
    headers.insert(NONCE, value(nonce)?);
    headers.insert(AUTHORIZATION, value(format!("{SCHEME}{}", hex(&tag)))?);
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The words of the refusal of a sender that is not one of this node's
/// peers; the sender's peer link recognises them (peer.rs).
pub(crate) const NOT_A_PEER: &str = "is not one of this node's peers";

fn refused(message: impl Into<String>) -> ApiError {
    ApiError::unauthorized(message)
}

impl Signed {
    /// Reads the signature headers; 401 naming what is missing. Checked
    /// before the body is read, so unsigned requests cost no body.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Signed, ApiError> {
        let text = |name: &HeaderName| -> Result<&str, ApiError> {
            headers.get(name).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                refused(format!(
                    "peer requests must be signed with the cluster secret: header {name} is missing \
                     (is the sender an older muster, or not a peer?)"
                ))
            })
        };
        let auth = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let mac = auth
            .get(..SCHEME.len())
            .filter(|s| s.eq_ignore_ascii_case(SCHEME))
            .and_then(|_| unhex32(&auth[SCHEME.len()..]))
            .ok_or_else(|| {
                refused(format!(
                    "the peer API needs a signature: Authorization: {SCHEME}<hex HMAC-SHA256>; \
                     the cluster secret itself is never sent"
                ))
            })?;
        let from = text(&FROM)?.to_owned();
        let timestamp_ms = text(&TIMESTAMP)?
            .parse()
            .map_err(|_| refused(format!("{TIMESTAMP} must be Unix milliseconds")))?;
        let nonce = text(&NONCE)?;
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(refused(format!("{NONCE} must be 32 hex digits")));
        }
        Ok(Signed { from, timestamp_ms, nonce: nonce.to_owned(), mac })
    }
}

/// What the receiver remembers to refuse replays.
#[derive(Debug, Default)]
pub(crate) struct Verifier {
    /// Per peer: `(timestamp, nonce)` accepted within the window.
    seen: Mutex<HashMap<NodeId, BTreeSet<(u64, String)>>>,
}

impl Verifier {
    /// Verifies a request's signature over `body`: the sender must be one of
    /// `peers`, its clock within `window` of `now_ms`, the MAC right and the
    /// nonce new. Returns the authenticated sender.
    pub(crate) fn verify(
        &self,
        signed: &Signed,
        body: &[u8],
        secret: &Secret,
        peers: &[NodeId],
        window: Duration,
        now_ms: u64,
    ) -> Result<NodeId, ApiError> {
        let Some(from) = peers.iter().find(|p| p.as_str() == signed.from) else {
            return Err(refused(format!(
                "{FROM} {:?} {NOT_A_PEER}: add its --advertise address to this node's --peers",
                crate::error::echo(&signed.from)
            )));
        };
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        if signed.timestamp_ms.abs_diff(now_ms) > window_ms {
            return Err(refused(format!(
                "stale peer request: its timestamp is {} ms from this node's clock (peer_clock_window_ms \
                 {window_ms}); check the clocks (NTP) of both nodes",
                signed.timestamp_ms.abs_diff(now_ms)
            )));
        }
        let m = mac(secret, &signed.from, signed.timestamp_ms, &signed.nonce, body);
        if m.verify_slice(&signed.mac).is_err() {
            return Err(refused(
                "the peer request's signature does not verify: the nodes hold different cluster secrets, or the request was altered",
            ));
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let nonces = seen.entry(from.clone()).or_default();
        let oldest = now_ms.saturating_sub(window_ms);
        while nonces.first().is_some_and(|(t, _)| *t < oldest) {
            nonces.pop_first();
        }
        let entry = (signed.timestamp_ms, signed.nonce.clone());
        if nonces.contains(&entry) {
            return Err(refused("replayed peer request: this nonce was accepted already"));
        }
        if nonces.len() >= NONCES_MAX {
            return Err(ApiError::overloaded());
        }
        nonces.insert(entry);
        Ok(from.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::for_tests(s)
    }

    fn signed(body: &[u8], key: &Secret, from: &NodeId) -> Signed {
        let mut h = HeaderMap::new();
        sign(&mut h, key, from, body).unwrap();
        Signed::from_headers(&h).unwrap()
    }

    #[test]
    fn a_signed_request_verifies_once_and_its_replay_is_refused() {
        let (key, a) = (secret("0123456789abcdef-secret"), NodeId::parse("127.0.0.1:1").unwrap());
        let v = Verifier::default();
        let s = signed(b"frames", &key, &a);
        let w = Duration::from_secs(30);
        assert_eq!(v.verify(&s, b"frames", &key, std::slice::from_ref(&a), w, unix_ms()).unwrap(), a);
        let again = v.verify(&s, b"frames", &key, std::slice::from_ref(&a), w, unix_ms()).unwrap_err();
        assert!(again.message.contains("replayed"), "{}", again.message);
    }

    #[test]
    fn altered_bodies_other_keys_unknown_senders_and_stale_clocks_are_refused() {
        let (key, a) = (secret("0123456789abcdef-secret"), NodeId::parse("127.0.0.1:1").unwrap());
        let peers = std::slice::from_ref(&a);
        let w = Duration::from_secs(30);
        let v = Verifier::default();
        let s = signed(b"frames", &key, &a);
        assert!(v.verify(&s, b"frameZ", &key, peers, w, unix_ms()).is_err());
        assert!(v.verify(&s, b"frames", &secret("another-secret-0123456"), peers, w, unix_ms()).is_err());
        let b = NodeId::parse("127.0.0.1:2").unwrap();
        assert!(v.verify(&s, b"frames", &key, std::slice::from_ref(&b), w, unix_ms()).is_err());
        let late = unix_ms() + 31_000;
        assert!(v.verify(&s, b"frames", &key, peers, w, late).unwrap_err().message.contains("stale"));
        // Still unused: verifies now.
        assert!(v.verify(&s, b"frames", &key, peers, w, unix_ms()).is_ok());
    }

    #[test]
    fn bearer_secrets_and_malformed_signatures_are_refused_before_the_body() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer 0123456789abcdef-secret"));
        assert!(Signed::from_headers(&h).is_err());
        let key = secret("0123456789abcdef-secret");
        let mut h = HeaderMap::new();
        sign(&mut h, &key, &NodeId::parse("127.0.0.1:1").unwrap(), b"").unwrap();
        h.insert(NONCE, HeaderValue::from_static("xyz"));
        assert!(Signed::from_headers(&h).is_err());
    }

    #[test]
    fn nonces_never_repeat() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}
