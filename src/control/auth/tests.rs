//! Tokens, JWTs and grants: configuration parsing and checks.

use super::*;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_800_000_000;

fn config(text: &str) -> Result<AuthConfig, String> {
    AuthConfig::parse(&text.parse::<toml::Table>().unwrap()["auth"])
}

fn hs256(claims: &Value) -> String {
    let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = hmac::sign(&key, format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fn with_tokens() -> Authenticator {
    let c = config(&format!(
        "[[auth.tokens]]\ntoken = \"publisher-token-0001\"\nallow = [\"publish\"]\n\
         streams = \"cam*\"\nname = \"studio\"\n[[auth.tokens]]\ntoken = \
         \"admin-token-000000001\"\nallow = [\"admin\", \"play\"]\n[auth.jwt]\nsecret = \
         \"{SECRET}\"\n"
    ))
    .unwrap();
    Authenticator::new(&c, "internal-token-0000000000").unwrap()
}

#[test]
fn globs_match_runs_and_single_characters() {
    let g = Glob::parse("cam*").unwrap();
    assert!(g.matches("cam") && g.matches("cam-1") && !g.matches("xcam"));
    let g = Glob::parse("*-hd-?").unwrap();
    assert!(g.matches("a-hd-1") && g.matches("-hd-x") && !g.matches("a-hd-12"));
    assert!(Glob::parse("a*b*c").unwrap().matches("abxbyc"));
    assert!(!Glob::parse("a*b*c").unwrap().matches("abxby"));
    assert!(Glob::any().matches("anything.at.all"));
    assert!(Glob::parse("exact").unwrap().matches("exact"));
    assert!(!Glob::parse("exact").unwrap().matches("exact2"));
    assert!(Glob::parse("").is_err());
}

#[test]
fn static_tokens_grant_their_rights_on_their_streams() {
    let auth = with_tokens();
    assert_eq!(auth.authenticate(None, NOW), Err(Refusal::Missing));
    assert_eq!(auth.authenticate(Some("  "), NOW), Err(Refusal::Missing));
    let grant = auth
        .authenticate(Some("publisher-token-0001"), NOW)
        .unwrap();
    assert_eq!(grant.holder, "studio");
    assert!(grant.check(Right::Publish, Some("cam-1")).is_ok());
    let wrong_stream = grant.check(Right::Publish, Some("other")).unwrap_err();
    assert_eq!(wrong_stream.status(), 403);
    assert!(wrong_stream.to_string().contains("`cam*`, not `other`"));
    let wrong_right = grant.check(Right::Play, Some("cam-1")).unwrap_err();
    assert!(wrong_right.to_string().contains("allows publish, not play"));
    let unknown = auth
        .authenticate(Some("publisher-token-0002"), NOW)
        .unwrap_err();
    assert_eq!(unknown.status(), 401);
    assert!(unknown.challenge().unwrap().contains("invalid_token"));
    // Admin covers the API whatever the stream pattern.
    let admin = auth
        .authenticate(Some("admin-token-000000001"), NOW)
        .unwrap();
    assert!(admin.check(Right::Admin, None).is_ok());
    assert!(
        auth.authenticate(Some("internal-token-0000000000"), NOW)
            .unwrap()
            .internal
    );
}

#[test]
fn hs256_jwts_carry_rights_streams_and_expiry() {
    let auth = with_tokens();
    let good =
        hs256(&json!({"sub": "alice", "exp": NOW + 60, "allow": ["play"], "streams": "live-*"}));
    let grant = auth.authenticate(Some(&good), NOW).unwrap();
    assert_eq!(grant.holder, "JWT alice");
    assert!(grant.check(Right::Play, Some("live-7")).is_ok());
    assert!(grant.check(Right::Play, Some("cam")).is_err());
    assert!(grant.check(Right::Publish, Some("live-7")).is_err());
    assert_eq!(grant.claims["sub"], "alice");

    let expired = hs256(&json!({"exp": NOW - 3600, "allow": ["play"]}));
    let e = auth.authenticate(Some(&expired), NOW).unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    let within_leeway = hs256(&json!({"exp": NOW - 10, "allow": ["play"]}));
    assert!(auth.authenticate(Some(&within_leeway), NOW).is_ok());
    let no_exp = hs256(&json!({"allow": ["play"]}));
    assert!(
        auth.authenticate(Some(&no_exp), NOW)
            .unwrap_err()
            .to_string()
            .contains("exp")
    );
    let early = hs256(&json!({"exp": NOW + 7200, "nbf": NOW + 3600, "allow": ["play"]}));
    assert!(auth.authenticate(Some(&early), NOW).is_err());

    // A changed payload breaks the signature.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] = URL_SAFE_NO_PAD
        .encode(json!({"sub": "alice", "exp": NOW + 60, "allow": ["play", "admin"]}).to_string());
    let forged = parts.join(".");
    assert!(
        auth.authenticate(Some(&forged), NOW)
            .unwrap_err()
            .to_string()
            .contains("signature")
    );
    // `alg: none` and other algorithms are refused before any signature is looked at.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(json!({"exp": NOW + 60, "allow": ["admin"]}).to_string())
    );
    assert!(
        auth.authenticate(Some(&none), NOW)
            .unwrap_err()
            .to_string()
            .contains("none")
    );
}

#[test]
fn es256_jwts_verify_with_a_pem_public_key() {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let spki = pair.public_key().as_der().unwrap();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(spki.as_ref())
    );
    let path = std::env::temp_dir().join(format!("corecast-es256-{}.pem", std::process::id()));
    std::fs::write(&path, pem).unwrap();
    let c = AuthConfig {
        jwt: Some(JwtConfig::PublicKey(path.display().to_string())),
        ..AuthConfig::default()
    };
    let auth = Authenticator::new(&c, "internal-token-0000000000").unwrap();
    let _ = std::fs::remove_file(&path);
    let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#);
    let body = URL_SAFE_NO_PAD.encode(json!({"exp": NOW + 60, "allow": ["publish"]}).to_string());
    let signing_input = format!("{head}.{body}");
    let sig = pair.sign(&rng, signing_input.as_bytes()).unwrap();
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    assert!(auth.authenticate(Some(&token), NOW).unwrap().rights.publish);
    // An HS256 token made with the public key as its secret is refused (algorithm confusion).
    let confused = hs256(&json!({"exp": NOW + 60, "allow": ["admin"]}));
    assert!(
        auth.authenticate(Some(&confused), NOW)
            .unwrap_err()
            .to_string()
            .contains("HS256")
    );
}

#[test]
fn configuration_errors_say_what_is_wrong() {
    let e = config("[[auth.tokens]]\ntoken = \"short\"\nallow = [\"play\"]\n").unwrap_err();
    assert!(e.contains("at least 16"), "{e}");
    let e = config("[[auth.tokens]]\ntoken = \"long-enough-token-1\"\nallow = [\"fly\"]\n")
        .unwrap_err();
    assert!(e.contains("`fly` is not a right"), "{e}");
    let e = config("[auth.jwt]\nsecret = \"short\"\n").unwrap_err();
    assert!(e.contains("at least 32"), "{e}");
    let e = config("[auth.webhook]\nurl = \"ftp://x\"\n").unwrap_err();
    assert!(e.contains("auth.webhook.url"), "{e}");
    let e = config("[auth]\nmetrics = \"secret\"\n").unwrap_err();
    assert!(e.contains("auth.metrics"), "{e}");
    let e = config("[auth.jwt]\nsecret = \"x\"\nkey = 1\n").unwrap_err();
    assert!(e.contains("auth.jwt.key"), "{e}");
    let ok =
        config("[auth]\nmetrics = \"admin\"\n[auth.webhook]\nurl = \"http://127.0.0.1:9/h\"\n")
            .unwrap();
    assert!(!ok.enabled());
    assert_eq!(ok.webhook.unwrap().timeout.as_millis(), 2000);
}

#[test]
fn tokens_never_show_in_debug_output() {
    let c = config("[[auth.tokens]]\ntoken = \"do-not-print-me-123\"\nallow = \"play\"\n").unwrap();
    let shown = format!("{c:?}{}", c.to_toml());
    assert!(!shown.contains("do-not-print-me"), "{shown}");
}

#[test]
fn bearer_headers_parse_case_insensitively() {
    assert_eq!(bearer("Bearer abc"), Some("abc"));
    assert_eq!(bearer("bearer  abc "), Some("abc"));
    assert_eq!(bearer("Basic abc"), None);
}

#[test]
fn the_cluster_token_plays_any_stream_and_does_nothing_else() {
    let auth = with_tokens().with_cluster_token(Some("cluster-token-00000001"));
    let grant = auth
        .authenticate(Some("cluster-token-00000001"), NOW)
        .unwrap();
    assert!(
        grant.internal,
        "no per-token cap, no webhook for a node's pull"
    );
    assert!(grant.check(Right::Play, Some("any-stream")).is_ok());
    assert!(grant.check(Right::Publish, Some("any-stream")).is_err());
    assert!(grant.check(Right::Admin, None).is_err());
    // Without a cluster token configured, it is just an unknown token.
    assert!(
        with_tokens()
            .authenticate(Some("cluster-token-00000001"), NOW)
            .is_err()
    );
}
