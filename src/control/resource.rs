//! A session's resource URL: the `Location` of a `201 Created`, the target of its `PATCH`
//! (trickle ICE, ICE restart) and `DELETE`: `/session/{id}-{key}`, with `key` a random secret
//! of the session's own. RFC 9725 makes the resource URL the client's capability (an ICE
//! restart may name any entity tag, `If-Match: *`); session ids count up, so a URL of the id
//! alone would let anyone who guesses a number end another client's session, or restart its
//! ICE with credentials of their own and take its media.

use crate::media::SessionId;

/// Characters of a key: 22 of 62 letters and digits, about 131 bits.
const KEY_LEN: usize = 22;

/// A new session's key.
pub(super) fn new_key() -> String {
    crate::util::random_token(KEY_LEN)
}

/// The resource path of session `id` with `key`.
pub(super) fn path(id: SessionId, key: &str) -> String {
    format!("/session/{id}-{key}")
}

/// The session id of a resource path's last segment (`{id}-{key}`, or a bare `{id}`), and the
/// key it carries. `None`: not a session's segment at all.
pub fn parse(segment: &str) -> Option<(SessionId, Option<&str>)> {
    let (id, key) = match segment.split_once('-') {
        Some((id, key)) => (id, Some(key)),
        None => (segment, None),
    };
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((id.parse().ok()?, key))
}

/// Whether `given` is the session's `expected` key, compared in time independent of where
/// they differ.
pub(super) fn key_matches(expected: &str, given: Option<&str>) -> bool {
    let Some(given) = given else {
        return false;
    };
    expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_parses_back_to_its_id_and_key() {
        let key = new_key();
        assert_eq!(key.len(), KEY_LEN);
        let path = path(42, &key);
        let segment = path.strip_prefix("/session/").unwrap();
        assert_eq!(parse(segment), Some((42, Some(key.as_str()))));
        assert!(key_matches(&key, parse(segment).unwrap().1));
    }

    #[test]
    fn keys_differ_between_sessions() {
        assert_ne!(new_key(), new_key());
    }

    #[test]
    fn a_missing_wrong_or_partial_key_does_not_match() {
        let key = new_key();
        assert!(!key_matches(&key, None));
        assert!(!key_matches(&key, Some("")));
        assert!(!key_matches(&key, Some(&key[..KEY_LEN - 1])));
        let mut wrong = key.clone().into_bytes();
        wrong[KEY_LEN - 1] = if wrong[KEY_LEN - 1] == b'a' {
            b'b'
        } else {
            b'a'
        };
        assert!(!key_matches(
            &key,
            Some(std::str::from_utf8(&wrong).unwrap())
        ));
    }

    #[test]
    fn only_digits_make_an_id() {
        assert_eq!(parse("7"), Some((7, None)));
        assert_eq!(parse("7-"), Some((7, Some(""))));
        for bad in [
            "",
            "-abc",
            "abc",
            "+7-k",
            "7x-k",
            "99999999999999999999999-k",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
