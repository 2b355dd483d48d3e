//! Row keys: the recognised row-scope policies `<column> = <claim>` (found by
//! `realtime.row_keys`, sql/041_row_keys.sql) judged in-process. A row's key in the
//! column and a viewer's key from its claims are equal exactly when Postgres's `=` says
//! true; a claim that Postgres might read differently (or reject) is `Unsure`, and that
//! viewer's rows are judged in Postgres. Pure: no Postgres, no tokio.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::row::Row;

/// How both sides of one recognised policy compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// uuid = uuid (`auth.uid()` or `::uuid`).
    Uuid,
    /// Any integer column against a claim cast to an integer type with this range.
    Int { min: i64, max: i64 },
    /// text = text under a deterministic collation: byte equality.
    Text,
}

/// One recognised permissive policy: rows whose `column` equals the viewer's `claim`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowKey {
    pub column: String,
    /// `None`: `auth.uid()`, the `sub` claim as a uuid.
    pub claim: Option<String>,
    pub ty: KeyType,
}

/// A viewer's side of one [`RowKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimKey {
    /// Rows whose key is this.
    Key(String),
    /// The claim is absent or null: the policy is never true.
    Never,
    /// Postgres must judge (the claim may read differently there, or raise).
    Unsure,
}

/// How row scope narrows one role's subscribers of one table before any check.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Gate {
    /// Every subscriber is a candidate (not known yet, every row, or other policies).
    #[default]
    Open,
    /// The role sees nothing of the table.
    Nobody,
    /// A row is visible to viewers whose key equals the row's key under any of these.
    Keyed(Arc<[RowKey]>),
}

impl RowKey {
    /// The keys `realtime.row_keys` returned (a JSON array); `None` if any is unreadable.
    pub fn parse_all(v: &Value) -> Option<Vec<RowKey>> {
        let items = v.as_array()?;
        let keys: Option<Vec<RowKey>> = items.iter().map(RowKey::parse).collect();
        keys.filter(|k| !k.is_empty())
    }

    fn parse(v: &Value) -> Option<RowKey> {
        let ty = match v.get("type")?.as_str()? {
            "uuid" => KeyType::Uuid,
            "int2" => KeyType::Int {
                min: i16::MIN.into(),
                max: i16::MAX.into(),
            },
            "int4" => KeyType::Int {
                min: i32::MIN.into(),
                max: i32::MAX.into(),
            },
            "int8" => KeyType::Int {
                min: i64::MIN,
                max: i64::MAX,
            },
            "text" => KeyType::Text,
            _ => return None,
        };
        let claim = match v.get("claim")? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            _ => return None,
        };
        Some(RowKey {
            column: v.get("column")?.as_str()?.to_owned(),
            claim,
            ty,
        })
    }

    /// The row's key (`to_jsonb` output); `None` when the column is NULL or missing, which
    /// equals nothing.
    pub fn of_row(&self, row: &Row) -> Option<String> {
        match (self.ty, row.get(&self.column)?) {
            (KeyType::Uuid, Value::String(s)) => uuid_key(s),
            (KeyType::Int { .. }, Value::Number(n)) => n.as_i64().map(|n| n.to_string()),
            (KeyType::Text, Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    /// The viewer's key, from its claims object (`None`: the claims are not a JSON object,
    /// which Postgres would reject).
    pub fn of_claims(&self, claims: Option<&Map<String, Value>>) -> ClaimKey {
        let Some(claims) = claims else {
            return ClaimKey::Unsure;
        };
        let name = self.claim.as_deref().unwrap_or("sub");
        let text = match claims.get(name) {
            None | Some(Value::Null) => return ClaimKey::Never,
            Some(Value::String(s)) => s.as_str(),
            // `->>` gives a number's text as jsonb prints it, which may differ from ours.
            Some(Value::Number(n)) if self.claim.is_some() && self.ty != KeyType::Text => {
                return int_claim(&n.to_string(), self.ty);
            }
            Some(_) => return ClaimKey::Unsure,
        };
        match self.ty {
            KeyType::Uuid => uuid_key(text).map_or(ClaimKey::Unsure, ClaimKey::Key),
            KeyType::Int { .. } => int_claim(text, self.ty),
            KeyType::Text => ClaimKey::Key(text.to_owned()),
        }
    }
}

/// Whether a viewer with `viewer` keys (aligned with `keys`) sees `row`.
pub fn sees(keys: &[RowKey], viewer: &[ClaimKey], row: &Row) -> bool {
    keys.iter().zip(viewer).any(|(key, mine)| match mine {
        ClaimKey::Key(k) => key.of_row(row).is_some_and(|r| &r == k),
        ClaimKey::Never | ClaimKey::Unsure => false,
    })
}

/// Only the hyphenated form, which Postgres's uuid input surely reads the same way.
fn uuid_key(s: &str) -> Option<String> {
    (s.len() == 36)
        .then(|| uuid::Uuid::try_parse(s).ok())
        .flatten()
        .map(|u| u.to_string())
}

/// Plain decimal digits within the cast's range; anything else (spaces, `+`, out of
/// range, which Postgres rejects or reads its own way) is for Postgres to judge.
fn int_claim(text: &str, ty: KeyType) -> ClaimKey {
    let KeyType::Int { min, max } = ty else {
        return ClaimKey::Unsure;
    };
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return ClaimKey::Unsure;
    }
    match text.parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => ClaimKey::Key(n.to_string()),
        _ => ClaimKey::Unsure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn key(column: &str, claim: Option<&str>, ty: &str) -> RowKey {
        RowKey::parse(&json!({"column": column, "claim": claim, "type": ty})).unwrap()
    }

    const U: &str = "aaaaaaaa-0000-4000-8000-00000000000a";

    #[test]
    fn keys_parse_from_row_keys_output_and_refuse_anything_else() {
        let v = json!([{"column": "cu", "claim": null, "type": "uuid"},
                       {"column": "org", "claim": "org_id", "type": "int8"}]);
        let keys = RowKey::parse_all(&v).unwrap();
        assert_eq!(keys[0].claim, None);
        assert_eq!(keys[1].claim.as_deref(), Some("org_id"));
        assert!(RowKey::parse_all(&json!([])).is_none());
        assert!(
            RowKey::parse_all(&json!([{"column": "x", "claim": null, "type": "numeric"}]))
                .is_none()
        );
        assert!(RowKey::parse_all(&Value::Null).is_none());
    }

    #[test]
    fn uid_keys_read_the_sub_claim_as_postgres_would() {
        let k = key("cu", None, "uuid");
        let upper = U.to_uppercase();
        assert_eq!(
            k.of_claims(Some(&claims(json!({"sub": upper})))),
            ClaimKey::Key(U.into())
        );
        assert_eq!(k.of_claims(Some(&claims(json!({})))), ClaimKey::Never);
        assert_eq!(
            k.of_claims(Some(&claims(json!({"sub": null})))),
            ClaimKey::Never
        );
        // Postgres raises (or reads its own way) for these: it must judge them.
        for sub in [
            json!(""),
            json!("user-1"),
            json!(U.replace('-', "")),
            json!(7),
        ] {
            assert_eq!(
                k.of_claims(Some(&claims(json!({ "sub": sub })))),
                ClaimKey::Unsure
            );
        }
        assert_eq!(k.of_claims(None), ClaimKey::Unsure);
        let row = claims(json!({"cu": U}));
        assert_eq!(k.of_row(&row).as_deref(), Some(U));
        assert_eq!(k.of_row(&claims(json!({"cu": null}))), None);
    }

    #[test]
    fn integer_keys_compare_by_value_within_the_casts_range() {
        let k = key("org", Some("org_id"), "int4");
        let of = |v: Value| k.of_claims(Some(&claims(json!({ "org_id": v }))));
        assert_eq!(of(json!("42")), ClaimKey::Key("42".into()));
        assert_eq!(of(json!("-0")), ClaimKey::Key("0".into()));
        assert_eq!(of(json!(42)), ClaimKey::Key("42".into()));
        assert_eq!(
            of(json!("3000000000")),
            ClaimKey::Unsure,
            "out of int4 range"
        );
        assert_eq!(of(json!(" 42")), ClaimKey::Unsure);
        assert_eq!(of(json!("4.2e1")), ClaimKey::Unsure);
        assert_eq!(of(json!(true)), ClaimKey::Unsure);
        let row: Row = serde_json::from_str(r#"{"org": 42}"#).unwrap();
        assert_eq!(k.of_row(&row).as_deref(), Some("42"));
    }

    #[test]
    fn text_keys_are_the_claims_string_and_other_json_is_for_postgres() {
        let k = key("team", Some("team"), "text");
        let of = |v: Value| k.of_claims(Some(&claims(json!({ "team": v }))));
        assert_eq!(of(json!("Red ")), ClaimKey::Key("Red ".into()));
        assert_eq!(of(json!(5)), ClaimKey::Unsure);
        assert_eq!(of(json!({"a": 1})), ClaimKey::Unsure);
    }

    #[test]
    fn a_row_is_seen_through_any_of_several_policies() {
        let keys = [
            key("owner", None, "uuid"),
            key("team", Some("team"), "text"),
        ];
        let viewer = [ClaimKey::Key(U.into()), ClaimKey::Key("red".into())];
        let row = |owner: Value, team: Value| claims(json!({"owner": owner, "team": team}));
        assert!(sees(&keys, &viewer, &row(json!(U), json!("blue"))));
        assert!(sees(&keys, &viewer, &row(Value::Null, json!("red"))));
        assert!(!sees(&keys, &viewer, &row(Value::Null, json!("blue"))));
        let never = [ClaimKey::Never, ClaimKey::Never];
        assert!(!sees(&keys, &never, &row(json!(U), json!("red"))));
    }
}
