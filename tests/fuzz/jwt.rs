//! JWT handling: any token, and any mutation of a good one, verifies or fails with a
//! `TokenError` whose text (and join-error code) says what is wrong; only tokens whose
//! signature, role, `exp` and `nbf` are right ever verify.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use proptest::prelude::*;
use serde_json::{json, Value};
use switchboard::auth::{mint_hs256, Verifier};

use super::{assert_clear, config};

const SECRET: &str = "fuzz-secret-0123456789-0123456789";
const NOW: i64 = 1_800_000_000;

fn verifier() -> Verifier {
    Verifier::new(Some(SECRET), None)
        .unwrap()
        .allow_roles(&["anon".into(), "authenticated".into()])
        .unavailable_roles(&["staff".into()])
        .nbf_leeway(30)
}

fn claim_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (NOW - 100..NOW + 100).prop_map(Value::from),
        ".{0,10}".prop_map(Value::from),
        prop_oneof![
            Just("anon"),
            Just("authenticated"),
            Just("staff"),
            Just("postgres")
        ]
        .prop_map(Value::from),
    ]
}

fn claims() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("role"),
        Just("exp"),
        Just("nbf"),
        Just("sub"),
        Just("iat"),
        Just("aud")
    ];
    prop::collection::btree_map(key, claim_value(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// A token: signed claims, possibly damaged (a byte flipped, parts swapped, a header with
/// another alg), or arbitrary text.
fn token() -> impl Strategy<Value = String> {
    let signed = claims().prop_map(|c| mint_hs256(SECRET, &c).unwrap());
    let damaged = (claims(), any::<usize>(), any::<u8>()).prop_map(|(c, at, b)| {
        let mut t = mint_hs256(SECRET, &c).unwrap().into_bytes();
        let i = at % t.len();
        t[i] = b;
        String::from_utf8_lossy(&t).into_owned()
    });
    let header = prop_oneof![
        Just(json!({"alg": "none"})),
        Just(json!({"alg": "HS256", "typ": "JWT"})),
        Just(json!({"alg": "RS256"})),
        Just(json!({"alg": "ES256", "kid": "x"})),
        Just(json!({"alg": 7})),
        Just(json!([])),
    ];
    let forged = (header, claims(), ".{0,20}").prop_map(|(h, c, sig)| {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(h.to_string()),
            URL_SAFE_NO_PAD.encode(c.to_string()),
            URL_SAFE_NO_PAD.encode(sig)
        )
    });
    prop_oneof![signed, damaged, forged, ".{0,60}", "[A-Za-z0-9_.=-]{0,80}"]
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn any_token_verifies_or_is_refused_with_a_clear_reason(t in token()) {
        match verifier().verify_at(&t, NOW) {
            Ok(c) => {
                // Only a well-signed token with an allowed role and a live exp gets here.
                let payload = t.split('.').nth(1).unwrap();
                let raw: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
                prop_assert!(["anon", "authenticated"].contains(&&*c.role));
                prop_assert_eq!(raw["role"].as_str(), Some(&*c.role));
                prop_assert!(c.exp > NOW);
                if let Some(nbf) = raw.get("nbf") {
                    prop_assert!(nbf.as_f64().is_some_and(|n| n <= (NOW + 30) as f64));
                }
            }
            Err(e) => {
                assert_clear(&e.to_string());
                prop_assert!(!e.code().is_empty());
            }
        }
    }
}
