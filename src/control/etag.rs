//! The session resource's entity tag (RFC 9725 §4.3.1, RFC 9110 §13.1.1): it names the
//! session's ICE session, is sent on the 201 and on each ICE restart's 200, and a PATCH must
//! name it in `If-Match`. A stale tag is refused with 412 (the client missed a restart); a
//! restart without `If-Match` with 428; a trickle may send `If-Match: *` or nothing. Pure:
//! the header's text in, a verdict out.

/// Why a PATCH's precondition failed; the status and the message are the response's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreconditionError {
    #[error(
        "If-Match {given} does not name the session's current ICE session ({current}): it was \
         restarted since"
    )]
    Stale { given: String, current: String },
    #[error(
        "an ICE restart needs If-Match with the session's ETag (from the 201 or the last restart)"
    )]
    Missing,
    #[error("If-Match `{0}` is not a list of entity tags (\"...\")")]
    Malformed(String),
}

impl PreconditionError {
    pub fn status(&self) -> u16 {
        match self {
            PreconditionError::Stale { .. } => 412,
            PreconditionError::Missing => 428,
            PreconditionError::Malformed(_) => 400,
        }
    }
}

/// A fresh entity tag, quoted as the header carries it.
pub fn new_etag() -> String {
    format!("\"{}\"", crate::util::random_token(16))
}

/// Checks `If-Match` (`if_match`, the header's value if sent) against the `current` tag, for
/// an ICE restart (`restart`) or a trickle.
pub fn check_if_match(
    if_match: Option<&str>,
    current: &str,
    restart: bool,
) -> Result<(), PreconditionError> {
    let Some(header) = if_match.map(str::trim) else {
        return match restart {
            true => Err(PreconditionError::Missing),
            false => Ok(()),
        };
    };
    if header == "*" {
        return Ok(());
    }
    let mut tags = Vec::new();
    for tag in header.split(',').map(str::trim) {
        // Strong comparison (RFC 9110 §13.1.1): a weak tag never matches.
        let opaque = tag.strip_prefix("W/").unwrap_or(tag);
        let quoted = opaque.len() >= 2 && opaque.starts_with('"') && opaque.ends_with('"');
        if !quoted || opaque[1..opaque.len() - 1].contains('"') {
            return Err(PreconditionError::Malformed(
                header.chars().take(80).collect(),
            ));
        }
        tags.push(tag);
    }
    if tags.contains(&current) {
        Ok(())
    } else {
        Err(PreconditionError::Stale {
            given: header.chars().take(80).collect(),
            current: current.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "\"abc123\"";

    #[test]
    fn the_current_tag_or_a_star_passes() {
        for restart in [false, true] {
            assert_eq!(check_if_match(Some(TAG), TAG, restart), Ok(()));
            assert_eq!(check_if_match(Some(" * "), TAG, restart), Ok(()));
            assert_eq!(
                check_if_match(Some("\"old\", \"abc123\""), TAG, restart),
                Ok(())
            );
        }
    }

    #[test]
    fn a_stale_or_weak_tag_is_412() {
        let stale = check_if_match(Some("\"old\""), TAG, false).unwrap_err();
        assert_eq!(stale.status(), 412);
        assert!(stale.to_string().contains("restarted"));
        // A weak tag never matches a strong comparison.
        assert_eq!(
            check_if_match(Some("W/\"abc123\""), TAG, true)
                .unwrap_err()
                .status(),
            412
        );
    }

    #[test]
    fn a_restart_needs_if_match_and_a_trickle_does_not() {
        assert_eq!(
            check_if_match(None, TAG, true),
            Err(PreconditionError::Missing)
        );
        assert_eq!(check_if_match(None, TAG, true).unwrap_err().status(), 428);
        assert_eq!(check_if_match(None, TAG, false), Ok(()));
    }

    #[test]
    fn an_unquoted_tag_is_malformed() {
        for header in ["abc123", "\"abc", "\"a\"b\"", ""] {
            assert_eq!(
                check_if_match(Some(header), TAG, false)
                    .unwrap_err()
                    .status(),
                400,
                "{header}"
            );
        }
    }

    #[test]
    fn fresh_tags_are_quoted_and_differ() {
        let (a, b) = (new_etag(), new_etag());
        assert!(a.starts_with('"') && a.ends_with('"') && a.len() == 18);
        assert_ne!(a, b);
        assert_eq!(check_if_match(Some(&a), &a, true), Ok(()));
    }
}
