//! The chaos world's tables and rules, in SQL and as the judge's own model: which
//! committed change each subscriber may see (row scope by `auth.uid()`, its binding's
//! event and filter). The verdict compares what arrived against this model.

use serde_json::{json, Value};

/// The schema: two captured tables with row-level security (`items`: the portal policy
/// `owner = auth.uid()`, decided in the hub; `notes`: a policy with a subquery, evaluated
/// in Postgres, and REPLICA IDENTITY FULL), the tick table every channel also binds, and
/// the writers' transaction log (to settle commits whose answer was lost).
pub const SCHEMA: &str = r#"
create table public.items (id int8 primary key, owner uuid not null, n int4 not null,
                           kind text not null, stamp int8 not null);
create table public.notes (id int8 primary key, owner uuid not null, n int4 not null,
                           kind text not null, stamp int8 not null);
alter table public.notes replica identity full;
create table public.access (user_id uuid not null, owner uuid not null,
                            primary key (user_id, owner));
create table public.chaos_ticks (k int8 primary key);
create table public.chaos_txlog (tag int8 primary key);
grant usage on schema public to authenticated, service_role;
grant select on public.items, public.notes, public.access, public.chaos_ticks
    to authenticated, service_role;
alter table public.items enable row level security;
create policy own_items on public.items for select to authenticated
    using (owner = auth.uid());
alter table public.notes enable row level security;
create policy shared_notes on public.notes for select to authenticated
    using (owner = auth.uid() or exists (
        select 1 from public.access a where a.user_id = auth.uid() and a.owner = notes.owner));
select realtime.enable('public.items');
select realtime.enable('public.notes');
select realtime.enable('public.chaos_ticks');
"#;

/// Owners no subscriber is: their rows reach only service_role subscribers.
pub const STRANGERS: usize = 4;
/// Row kinds (`kind` column values).
pub const KINDS: [&str; 5] = ["a", "b", "c", "d", "e"];
/// `n` is drawn from 0..N_MAX.
pub const N_MAX: i32 = 100;

/// The uuid of owner `i` (users first, then strangers).
pub fn owner_uuid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{:012}", i + 1)
}

/// Whether user `user` was given access to `owner`'s notes: each even-numbered user
/// sees the next user's notes.
pub fn has_access(user: usize, owner: usize, users: usize) -> bool {
    user.is_multiple_of(2) && owner == (user + 1) % users
}

/// The `access` rows for `users` users.
pub fn access_rows(users: usize) -> Vec<(String, String)> {
    (0..users)
        .flat_map(|u| (0..users).map(move |o| (u, o)))
        .filter(|&(u, o)| u != o && has_access(u, o, users))
        .map(|(u, o)| (owner_uuid(u), owner_uuid(o)))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Items,
    Notes,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Items, Table::Notes];

    pub fn name(self) -> &'static str {
        match self {
            Table::Items => "items",
            Table::Notes => "notes",
        }
    }

    pub fn parse(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }
}

/// A row's values (owner and kind as indexes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub owner: usize,
    pub n: i32,
    pub kind: usize,
    pub stamp: i64,
}

/// What names one change in a frame: an INSERT or UPDATE by the stamp it wrote (never
/// reused, not even by a rolled-back write), a DELETE by its table and row id (ids are
/// never reused, and `old_record` shows the key under the default replica identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Write(i64),
    Delete(u8, i64),
    Tick(i64),
}

/// One committed row change: the row it is judged on (the new row; the old one for a
/// DELETE).
#[derive(Debug, Clone, Copy)]
pub struct Change {
    pub table: Table,
    pub op: Op,
    pub row: Row,
}

impl Change {
    pub fn key(&self) -> Key {
        match self.op {
            Op::Delete => Key::Delete(self.table as u8, self.row.id),
            _ => Key::Write(self.row.stamp),
        }
    }
}

/// Who a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    /// An `authenticated` token for user `i` (`sub` = `owner_uuid(i)`).
    User(usize),
    /// A `service_role` token: every row.
    Service,
}

/// A binding's filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    None,
    OwnerEq(usize),
    KindEq(usize),
    KindNeq(usize),
    KindIn(usize, usize),
    NGt(i32),
    NLte(i32),
}

impl Filter {
    /// The `filter` string of the binding, if any.
    pub fn text(self) -> Option<String> {
        Some(match self {
            Filter::None => return None,
            Filter::OwnerEq(o) => format!("owner=eq.{}", owner_uuid(o)),
            Filter::KindEq(k) => format!("kind=eq.{}", KINDS[k]),
            Filter::KindNeq(k) => format!("kind=neq.{}", KINDS[k]),
            Filter::KindIn(a, b) => format!("kind=in.({},{})", KINDS[a], KINDS[b]),
            Filter::NGt(v) => format!("n=gt.{v}"),
            Filter::NLte(v) => format!("n=lte.{v}"),
        })
    }

    pub fn matches(self, r: &Row) -> bool {
        match self {
            Filter::None => true,
            Filter::OwnerEq(o) => r.owner == o,
            Filter::KindEq(k) => r.kind == k,
            Filter::KindNeq(k) => r.kind != k,
            Filter::KindIn(a, b) => r.kind == a || r.kind == b,
            Filter::NGt(v) => r.n > v,
            Filter::NLte(v) => r.n <= v,
        }
    }
}

/// One channel's data binding (every channel also binds INSERTs of the tick table).
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    pub table: Table,
    /// `None`: `*`.
    pub event: Option<Op>,
    pub filter: Filter,
}

impl Binding {
    /// The join's `postgres_changes` entries: the ticks, then the data binding.
    pub fn entries(&self) -> Value {
        let mut data = json!({
            "event": self.event.map_or("*", Op::name),
            "schema": "public",
            "table": self.table.name(),
        });
        if let Some(f) = self.filter.text() {
            data["filter"] = json!(f);
        }
        json!([
            {"event": "INSERT", "schema": "public", "table": "chaos_ticks"},
            data,
        ])
    }

    /// Whether `viewer` on this binding may receive `c`.
    pub fn sees(&self, viewer: Viewer, users: usize, c: &Change) -> bool {
        c.table == self.table
            && self.event.is_none_or(|e| e == c.op)
            && self.filter.matches(&c.row)
            && match (viewer, c.table) {
                (Viewer::Service, _) => true,
                (Viewer::User(u), Table::Items) => c.row.owner == u,
                (Viewer::User(u), Table::Notes) => {
                    c.row.owner == u || has_access(u, c.row.owner, users)
                }
            }
    }

    /// A short description for the report.
    pub fn describe(&self) -> String {
        format!(
            "{} {} {}",
            self.table.name(),
            self.event.map_or("*", Op::name),
            self.filter.text().unwrap_or_else(|| "-".into())
        )
    }
}
