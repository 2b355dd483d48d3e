-- Who still needs the change log: one row per reader that is not done with it. Retention
-- deletes a row only once every live hold has read it (its transaction is visible in the
-- hold's snapshot), and only after it is older than the retention.
--   kind 'node':   a hub's own capture position, checkpointed about every second; it
--                  stops holding once the hub is gone longer than its expiry.
--   other kinds:   durable readers (parked subscriptions, webhook endpoints, ...); they
--                  hold at most up to the cap, and a hold whose unread rows were deleted
--                  at the cap is marked lost.

create table if not exists realtime.log_holds (
    kind       text not null,
    holder     text not null,
    snapshot   pg_snapshot not null,
    expires_at timestamptz not null,
    lost_at    timestamptz,
    updated_at timestamptz not null default now(),
    primary key (kind, holder)
);

revoke all on realtime.log_holds from public;

-- Deletes log rows older than `keep_secs` that every live hold and `own` (the caller's
-- own position) have read; rows older than `cap_secs` are deleted even if a non-node hold
-- has not read them, and such holds are marked lost. Returns (deleted, holds marked lost).
create or replace function realtime.prune_log(own pg_snapshot, keep_secs float8, cap_secs float8)
returns table (deleted bigint, lost bigint)
language sql volatile set search_path = '' as $fn$
    with gone as (
        delete from realtime.changes c
        where c.created_at < pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => keep_secs)
          and pg_catalog.pg_visible_in_snapshot(c.xid, own)
          and not exists (
              select 1 from realtime.log_holds h
              where h.kind = 'node' and h.expires_at > pg_catalog.now()
                and not pg_catalog.pg_visible_in_snapshot(c.xid, h.snapshot))
          and (c.created_at < pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => cap_secs)
               or not exists (
                  select 1 from realtime.log_holds h
                  where h.kind <> 'node' and h.expires_at > pg_catalog.now() and h.lost_at is null
                    and not pg_catalog.pg_visible_in_snapshot(c.xid, h.snapshot)))
        returning c.xid
    ),
    marked as (
        update realtime.log_holds h set lost_at = pg_catalog.now()
        where h.kind <> 'node' and h.lost_at is null and h.expires_at > pg_catalog.now()
          and exists (select 1 from gone g
                      where not pg_catalog.pg_visible_in_snapshot(g.xid, h.snapshot))
        returning 1
    ),
    cleared as (
        delete from realtime.log_holds h
        where h.expires_at < pg_catalog.now() - interval '1 day'
    )
    select (select count(*) from gone), (select count(*) from marked)
$fn$;

revoke all on function realtime.prune_log(pg_snapshot, float8, float8) from public;
