//! The requests the streaming server has been asked to serve, by token:
//! single-use, unguessable, expiring. As kubelet's streaming request cache
//! (`k8s.io/cri-streaming/pkg/streaming/request_cache.go`): a URL is good for
//! one connection within [`TTL`], and at most [`MAX_IN_FLIGHT`] wait at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a URL may wait for its connection (kubelet's `CacheTTL`).
pub const TTL: Duration = Duration::from_secs(60);
/// Most URLs waiting at once (kubelet's `maxInFlight`).
pub const MAX_IN_FLIGHT: usize = 1000;

/// Requests waiting for their connection, by token.
pub struct Requests<T> {
    waiting: Mutex<HashMap<String, (Instant, T)>>,
    ttl: Duration,
}

impl<T> Requests<T> {
    pub fn new(ttl: Duration) -> Self {
        Self { waiting: Mutex::new(HashMap::new()), ttl }
    }

    /// Keeps `request` and returns its token: 32 random bytes, base64url
    /// (43 characters). Errors: ResourceExhausted with [`MAX_IN_FLIGHT`]
    /// unexpired requests waiting, as kubelet refuses.
    pub fn insert(&self, request: T) -> Result<String> {
        let now = Instant::now();
        let mut waiting = self.waiting.lock().unwrap();
        waiting.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        if waiting.len() >= MAX_IN_FLIGHT {
            return Err(Error::ResourceExhausted(format!(
                "streaming: {MAX_IN_FLIGHT} requests are waiting for their connection; retry later"
            )));
        }
        let token = token();
        waiting.insert(token.clone(), (now, request));
        Ok(token)
    }

    /// The request of `token`, once: `None` for an unknown, used or expired token.
    pub fn take(&self, token: &str) -> Option<T> {
        let (at, request) = self.waiting.lock().unwrap().remove(token)?;
        (at.elapsed() < self.ttl).then_some(request)
    }
}

fn token() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_good_once_and_unguessable() {
        let requests = Requests::new(TTL);
        let (first, second) = (requests.insert(1).unwrap(), requests.insert(2).unwrap());
        assert_ne!(first, second);
        assert_eq!(first.len(), 43);
        assert_eq!(requests.take("not-a-token"), None);
        assert_eq!(requests.take(&second), Some(2));
        assert_eq!(requests.take(&second), None);
        assert_eq!(requests.take(&first), Some(1));
    }

    #[test]
    fn a_token_expires() {
        let requests = Requests::new(Duration::from_millis(1));
        let token = requests.insert(()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(requests.take(&token), None);
    }

    #[test]
    fn requests_waiting_are_bounded_and_expired_ones_make_room() {
        let requests = Requests::new(TTL);
        for i in 0..MAX_IN_FLIGHT {
            requests.insert(i).unwrap();
        }
        assert!(matches!(requests.insert(0), Err(Error::ResourceExhausted(_))));
        // As if a minute had passed.
        for (at, _) in requests.waiting.lock().unwrap().values_mut() {
            *at -= TTL;
        }
        requests.insert(0).unwrap();
        assert_eq!(requests.waiting.lock().unwrap().len(), 1);
    }
}
