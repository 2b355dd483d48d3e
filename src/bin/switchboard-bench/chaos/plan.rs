//! Planning a chaos run: a fresh database with the schema, and the subscribers drawn
//! from the seed (who they are, which topics, bindings, serializer, resume or not).

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};

use super::model::{self, Binding, Filter, Op, Table, Viewer, KINDS, N_MAX, STRANGERS};
use super::subscriber::{ChanSpec, ConnSpec};
use super::ChaosArgs;
use crate::env::SECRET;
use crate::BenchError;

/// Creates a fresh database on `server_url`, migrates it and loads the schema and the
/// access rows; returns its URL.
pub async fn create_database(server_url: &str, users: usize) -> Result<String, BenchError> {
    let name = format!("chaos_{}_{:08x}", std::process::id(), rand::random::<u32>());
    let admin = crate::pgload::connect(server_url).await?;
    admin
        .batch_execute(&format!("create database \"{name}\""))
        .await?;
    let url = with_dbname(server_url, &name);
    let c = crate::pgload::connect(&url).await?;
    switchboard::db::migrate(&c).await?;
    c.batch_execute(model::SCHEMA).await?;
    for (user, owner) in model::access_rows(users) {
        c.execute(
            "insert into public.access values ($1::text::uuid, $2::text::uuid)",
            &[&user, &owner],
        )
        .await?;
    }
    Ok(url)
}

/// `url` with its database name replaced (URL form only).
fn with_dbname(url: &str, name: &str) -> String {
    let (base, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    format!("{}/{name}{query}", &base[..path])
}

/// A token for `claims` (plus `exp`), valid well past a run of `duration` seconds.
pub fn token(claims: &Value, duration: f64) -> String {
    let mut claims = claims.clone();
    claims["exp"] = json!(chrono::Utc::now().timestamp() + 7200 + duration as i64);
    switchboard::auth::mint_hs256(SECRET, &claims).expect("mint token")
}

pub fn topics(n: usize) -> Vec<String> {
    (0..n.max(3))
        .map(|i| format!("realtime:room-{i}"))
        .collect()
}

fn filter(rng: &mut StdRng, viewer: Viewer, users: usize) -> Filter {
    let owner = match viewer {
        Viewer::User(u) if rng.random_bool(0.5) => u,
        Viewer::User(u) => (u + 1) % users,
        Viewer::Service => rng.random_range(0..users + STRANGERS),
    };
    let kind = rng.random_range(0..KINDS.len());
    match rng.random_range(0..10) {
        0..=3 => Filter::None,
        4 => Filter::OwnerEq(owner),
        5 => Filter::KindEq(kind),
        6 => Filter::KindNeq(kind),
        7 => Filter::KindIn(kind, (kind + 2) % KINDS.len()),
        8 => Filter::NGt(rng.random_range(0..N_MAX)),
        _ => Filter::NLte(rng.random_range(0..N_MAX)),
    }
}

/// Connections of one to three channels until `a.subscribers` channels are planned.
pub fn subscribers(a: &ChaosArgs, rng: &mut StdRng) -> Vec<Arc<ConnSpec>> {
    let topics = topics(a.topics);
    let mut specs = Vec::new();
    let mut sub = 0;
    while sub < a.subscribers {
        let index = specs.len();
        let viewer = if rng.random_bool(0.2) {
            Viewer::Service
        } else {
            Viewer::User(rng.random_range(0..a.users))
        };
        let claims = match viewer {
            Viewer::User(u) => json!({"role": "authenticated", "sub": model::owner_uuid(u)}),
            Viewer::Service => json!({"role": "service_role", "sub": format!("service-{index}")}),
        };
        let n = rng.random_range(1..=3).min(a.subscribers - sub);
        let mut chosen = topics.clone();
        chosen.shuffle(rng);
        let channels = chosen
            .into_iter()
            .take(n)
            .map(|topic| {
                let binding = Binding {
                    table: Table::ALL[rng.random_range(0..Table::ALL.len())],
                    event: match rng.random_range(0..6) {
                        0 => Some(Op::Insert),
                        1 => Some(Op::Update),
                        2 => Some(Op::Delete),
                        _ => None,
                    },
                    filter: filter(rng, viewer, a.users),
                };
                sub += 1;
                ChanSpec {
                    sub: sub - 1,
                    topic,
                    binding,
                }
            })
            .collect();
        specs.push(Arc::new(ConnSpec {
            index,
            v2: rng.random_bool(0.5),
            resume: rng
                .random_bool(a.resumable)
                .then(|| format!("chaos-{index}-{:08x}", rng.random::<u32>())),
            viewer,
            token: token(&claims, a.common.duration),
            channels,
        }));
    }
    specs
}
