-- Schema `realtime` and the change log: one row per captured row change or SQL
-- broadcast. Readers select by transaction visibility (`xid`), never by id order alone.

create schema if not exists realtime;

create table if not exists realtime.switchboard_migrations (
    version    int primary key,
    applied_at timestamptz not null default now()
);

create table if not exists realtime.changes (
    id          bigserial primary key,
    xid         xid8 not null default pg_current_xact_id(),
    created_at  timestamptz not null default clock_timestamp(),
    schema_name text,
    table_name  text,
    op          text not null check (op in ('INSERT', 'UPDATE', 'DELETE', 'BROADCAST')),
    record      jsonb,
    old_record  jsonb,
    topic       text,
    event       text,
    private     boolean
);

create index if not exists changes_xid_idx on realtime.changes (xid);
create index if not exists changes_created_at_idx on realtime.changes (created_at);

