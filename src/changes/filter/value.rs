//! Typed values for filter matching: a filter value or a record's JSON value read as a
//! column's Postgres type, compared with that type's semantics (numbers exactly as
//! decimals, uuids as 128-bit values, timestamps as instants, ...).

use std::cmp::Ordering;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};
use serde_json::Value;
use uuid::Uuid;

/// How a Postgres type (`typname`) is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    /// int2/int4/int8 with the type's range; compared as exact decimals.
    Int {
        min: i64,
        max: i64,
    },
    /// numeric: compared as exact decimals of their text form, with Postgres's order
    /// -Infinity < numbers < Infinity < NaN (and NaN = NaN).
    Number,
    /// float4 (`single`) and float8: like numeric, once a value is rounded to the type
    /// (`'16777217'::float4` is 16777216, `'0.10000000000000001'::float8` is 0.1).
    Float {
        single: bool,
    },
    /// text, varchar, name: byte order of the UTF-8 text, i.e. the "C" collation. A
    /// database with another collation may order some strings differently for lt/gt
    /// (and like/eq are unaffected, except for nondeterministic collations).
    Text,
    /// char(n): like text, trailing spaces ignored.
    Bpchar,
    /// citext: text compared case-insensitively (lowercased).
    Citext,
    Bool,
    Uuid,
    Date,
    Timestamp,
    /// Instants; values without an offset are read as UTC.
    Timestamptz,
    Time,
    /// json, jsonb and arrays (`_int4`, ...): only equality, against a JSON filter value.
    Json,
    /// Types we do not know (enums, domains, ...): equality on the text form only.
    Other,
}

impl Kind {
    pub(super) fn of(type_name: &str) -> Kind {
        match type_name {
            "int2" => Kind::Int {
                min: i16::MIN.into(),
                max: i16::MAX.into(),
            },
            "int4" => Kind::Int {
                min: i32::MIN.into(),
                max: i32::MAX.into(),
            },
            "int8" => Kind::Int {
                min: i64::MIN,
                max: i64::MAX,
            },
            "float4" => Kind::Float { single: true },
            "float8" => Kind::Float { single: false },
            "numeric" => Kind::Number,
            "text" | "varchar" | "name" => Kind::Text,
            "bpchar" => Kind::Bpchar,
            "citext" => Kind::Citext,
            "bool" => Kind::Bool,
            "uuid" => Kind::Uuid,
            "date" => Kind::Date,
            "timestamp" => Kind::Timestamp,
            "timestamptz" => Kind::Timestamptz,
            "time" => Kind::Time,
            "json" | "jsonb" => Kind::Json,
            t if t.starts_with('_') => Kind::Json,
            _ => Kind::Other,
        }
    }

    /// lt/lte/gt/gte make sense.
    pub(super) fn orderable(self) -> bool {
        !matches!(self, Kind::Json | Kind::Other)
    }

    /// like/ilike make sense.
    pub(super) fn textual(self) -> bool {
        matches!(self, Kind::Text | Kind::Bpchar | Kind::Citext)
    }

    /// Reads a filter value; `None` means invalid input for the type.
    pub(super) fn parse(self, s: &str) -> Option<Scalar> {
        let t = s.trim();
        Some(match self {
            Kind::Int { min, max } => {
                let n: i64 = t.parse().ok()?;
                if n < min || n > max {
                    return None;
                }
                Scalar::Num(Decimal::parse(&n.to_string())?)
            }
            Kind::Number => Scalar::Num(Decimal::parse(t)?),
            Kind::Float { single } => Scalar::Num(parse_float(t, single)?),
            Kind::Text | Kind::Other => Scalar::Text(s.to_owned()),
            Kind::Bpchar => Scalar::Text(s.trim_end_matches(' ').to_owned()),
            Kind::Citext => Scalar::Text(s.to_lowercase()),
            Kind::Bool => Scalar::Bool(parse_bool(t)?),
            Kind::Uuid => Scalar::Uuid(Uuid::parse_str(t).ok()?),
            Kind::Date => Scalar::Stamp(
                parse_stamp(t)?
                    .0
                    .map(|dt| dt.date().and_time(NaiveTime::MIN)),
            ),
            Kind::Timestamp => Scalar::Stamp(parse_stamp(t)?.0),
            Kind::Timestamptz => {
                let (at, offset) = parse_stamp(t)?;
                let utc = TimeDelta::seconds(offset.unwrap_or(0).into());
                Scalar::Stamp(at.map(|dt| dt - utc))
            }
            Kind::Time => Scalar::Time(parse_time(t)?),
            Kind::Json => Scalar::Json(serde_json::from_str(t).ok()?),
        })
    }

    /// Reads a record's value (to_jsonb output); `None` if it does not fit the type.
    pub(super) fn read_record(self, v: &Value) -> Option<Scalar> {
        match (self, v) {
            (Kind::Json, v) => Some(Scalar::Json(v.clone())),
            (_, Value::String(s)) => self.parse(s),
            (Kind::Int { .. } | Kind::Number, Value::Number(n)) => {
                Decimal::parse(&n.to_string()).map(Scalar::Num)
            }
            (Kind::Float { .. }, Value::Number(n)) => self.parse(&n.to_string()),
            (Kind::Bool, Value::Bool(b)) => Some(Scalar::Bool(*b)),
            (Kind::Text | Kind::Other, v) => Some(Scalar::Text(v.to_string())),
            _ => None,
        }
    }
}

/// A float4 (`single`) or float8 as Postgres reads it: the nearest value of the type, as
/// its shortest decimal; `None` for bad syntax, or out of the type's range (overflow, or
/// a non-zero value that rounds to zero), which Postgres refuses too.
fn parse_float(t: &str, single: bool) -> Option<Decimal> {
    let exact = Decimal::parse(t)?;
    let Decimal::Finite { digits, .. } = &exact else {
        return Some(exact);
    };
    let (shortest, zero) = if single {
        let v: f32 = t.parse().ok()?;
        (v.is_finite().then(|| v.to_string())?, v == 0.0)
    } else {
        let v: f64 = t.parse().ok()?;
        (v.is_finite().then(|| v.to_string())?, v == 0.0)
    };
    if zero && !digits.is_empty() {
        return None;
    }
    Decimal::parse(&shortest)
}

fn parse_bool(t: &str) -> Option<bool> {
    match t.to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// A point on a line with both infinities (Postgres dates and timestamps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Extended<T> {
    NegInf,
    At(T),
    PosInf,
}

impl<T> Extended<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Extended<U> {
        match self {
            Extended::NegInf => Extended::NegInf,
            Extended::At(t) => Extended::At(f(t)),
            Extended::PosInf => Extended::PosInf,
        }
    }
}

/// A typed value. Dates are stored as midnight timestamps, timestamptz in UTC.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar {
    Num(Decimal),
    Bool(bool),
    Text(String),
    Uuid(Uuid),
    Stamp(Extended<NaiveDateTime>),
    Time(NaiveTime),
    Json(Value),
}

impl Scalar {
    /// Ordering within one type; `None` for JSON (no order) or mismatched types.
    pub(super) fn compare(&self, other: &Scalar) -> Option<Ordering> {
        match (self, other) {
            (Scalar::Num(a), Scalar::Num(b)) => Some(a.cmp(b)),
            (Scalar::Bool(a), Scalar::Bool(b)) => Some(a.cmp(b)),
            (Scalar::Text(a), Scalar::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (Scalar::Uuid(a), Scalar::Uuid(b)) => Some(a.cmp(b)),
            (Scalar::Stamp(a), Scalar::Stamp(b)) => Some(a.cmp(b)),
            (Scalar::Time(a), Scalar::Time(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// A hash key equal for exactly the values `equals` calls equal; only for text and
    /// uuid values (the ones subscriptions are indexed by).
    pub(super) fn index_key(&self) -> Option<String> {
        match self {
            Scalar::Text(t) => Some(t.clone()),
            Scalar::Uuid(u) => Some(u.to_string()),
            _ => None,
        }
    }

    pub(super) fn equals(&self, other: &Scalar) -> bool {
        match (self, other) {
            (Scalar::Json(a), Scalar::Json(b)) => json_eq(a, b),
            _ => self.compare(other) == Some(Ordering::Equal),
        }
    }
}

/// jsonb equality: objects ignore key order, numbers compare by value (1 = 1.0).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            Decimal::parse(&x.to_string()) == Decimal::parse(&y.to_string())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, xv)| y.get(k).is_some_and(|yv| json_eq(xv, yv)))
        }
        _ => a == b,
    }
}

/// An exact decimal: `digits` × 10^`exp`, digits without leading or trailing zeros (empty
/// for zero), or one of the special values. Ordered as Postgres orders numeric/float.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decimal {
    NegInf,
    Finite {
        negative: bool,
        digits: String,
        exp: i64,
    },
    PosInf,
    NaN,
}

impl Decimal {
    /// Accepts `[+-]digits[.digits][e[+-]digits]`, `NaN`, `[+-]Infinity`, `[+-]inf`.
    pub(super) fn parse(s: &str) -> Option<Decimal> {
        let (negative, body) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        match body.to_ascii_lowercase().as_str() {
            "nan" if body.len() == s.len() => return Some(Decimal::NaN),
            "infinity" | "inf" => {
                return Some(if negative {
                    Decimal::NegInf
                } else {
                    Decimal::PosInf
                })
            }
            _ => {}
        }
        let (mantissa, exp) = match body.find(['e', 'E']) {
            Some(i) => (&body[..i], body[i + 1..].parse::<i64>().ok()?),
            None => (body, 0),
        };
        if exp.unsigned_abs() > 1_000_000 {
            return None;
        }
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let all = format!("{int}{frac}");
        let trimmed_start = all.trim_start_matches('0');
        let digits = trimmed_start.trim_end_matches('0');
        let trailing = (trimmed_start.len() - digits.len()) as i64;
        let exp = exp - frac.len() as i64 + trailing;
        Some(Decimal::Finite {
            negative: negative && !digits.is_empty(),
            digits: digits.to_owned(),
            exp: if digits.is_empty() { 0 } else { exp },
        })
    }

    fn rank(&self) -> u8 {
        match self {
            Decimal::NegInf => 0,
            Decimal::Finite { .. } => 1,
            Decimal::PosInf => 2,
            Decimal::NaN => 3,
        }
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let (
            Decimal::Finite {
                negative: an,
                digits: ad,
                exp: ae,
            },
            Decimal::Finite {
                negative: bn,
                digits: bd,
                exp: be,
            },
        ) = (self, other)
        else {
            return self.rank().cmp(&other.rank());
        };
        // sign: negative < zero < positive
        let sign = |neg: bool, d: &str| {
            if d.is_empty() {
                0
            } else if neg {
                -1
            } else {
                1
            }
        };
        let (sa, sb) = (sign(*an, ad), sign(*bn, bd));
        if sa != sb || sa == 0 {
            return sa.cmp(&sb);
        }
        // magnitude: position of the leading digit, then the digits themselves
        let magnitude = (ad.len() as i64 + ae)
            .cmp(&(bd.len() as i64 + be))
            .then_with(|| ad.as_str().cmp(bd.as_str()));
        if sa < 0 {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// `YYYY-MM-DD[( |T)HH:MM[:SS[.frac]]][ ][offset]`, or `[+-]infinity`. Returns the local
/// date-time and the offset in seconds east of UTC if one was given.
fn parse_stamp(t: &str) -> Option<(Extended<NaiveDateTime>, Option<i32>)> {
    match t.to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => return Some((Extended::PosInf, None)),
        "-infinity" => return Some((Extended::NegInf, None)),
        _ => {}
    }
    if t.len() < 10 || !t.is_char_boundary(10) {
        return None;
    }
    let date = NaiveDate::parse_from_str(&t[..10], "%Y-%m-%d").ok()?;
    let mut rest = &t[10..];
    let mut time = NaiveTime::MIN;
    if let Some(after) = rest.strip_prefix(['T', 't', ' ']) {
        let end = after
            .find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.'))
            .unwrap_or(after.len());
        if end > 0 {
            time = parse_time(&after[..end])?;
            rest = &after[end..];
        }
    }
    let offset = parse_offset(rest.trim())?;
    Some((Extended::At(date.and_time(time)), offset))
}

fn parse_time(t: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(t, "%H:%M:%S%.f")
        .or_else(|_| NaiveTime::parse_from_str(t, "%H:%M"))
        .ok()
}

/// `""` -> no offset; `Z`/`UTC`/`GMT`; `+HH`, `+HHMM`, `+HH:MM`, `+HH:MM:SS`.
fn parse_offset(t: &str) -> Option<Option<i32>> {
    if t.is_empty() {
        return Some(None);
    }
    if ["z", "utc", "gmt"].contains(&t.to_ascii_lowercase().as_str()) {
        return Some(Some(0));
    }
    let sign = match t.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let body = &t[1..];
    let nums: Vec<&str> = if body.contains(':') {
        body.split(':').collect()
    } else if body.len() == 4 && body.is_char_boundary(2) {
        vec![&body[..2], &body[2..]]
    } else {
        vec![body]
    };
    if nums.len() > 3 || nums.iter().any(|n| n.is_empty() || n.len() > 2) {
        return None;
    }
    let mut secs = 0i32;
    for (n, unit) in nums.iter().zip([3600, 60, 1]) {
        secs += n.parse::<i32>().ok()? * unit;
    }
    (secs <= 16 * 3600).then_some(Some(sign * secs))
}
