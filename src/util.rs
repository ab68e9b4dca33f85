//! Small helpers the control thread, the client and the load generator share.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the data even when a thread panicked while holding it: the data these
/// locks guard (counters, registries, send state) stays usable, and one panic must not take
/// every later caller down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `len` random characters from `[A-Za-z0-9]` (ICE characters, URL-safe): ICE credentials,
/// session tokens.
pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}
