-- A paused endpoint was marked as having lost data when rows of its tables were pruned
-- past it, even if they were of kinds it does not deliver (its `events`): an endpoint of
-- INSERTs alone "lost" the DELETEs it would never have sent. Only the kinds it delivers
-- count now. (Its `filter` is not judged here: a row it would have filtered out still
-- counts as lost.)

create or replace function realtime.prune_log(own pg_snapshot, keep_secs float8, cap_secs float8)
returns table (deleted bigint, lost bigint)
language sql volatile set search_path = pg_catalog, pg_temp set jit = off as $fn$
    with live as materialized (
        select h.kind = 'node' as node, h.snapshot
        from realtime.log_holds h
        where h.expires_at > pg_catalog.now() and (h.kind = 'node' or h.lost_at is null)
    ),
    horizon as materialized (
        select coalesce(pg_catalog.min(pg_catalog.pg_snapshot_xmin(l.snapshot)) filter (where l.node),
                        pg_catalog.pg_snapshot_xmax(own)) as node_xmin,
               coalesce(pg_catalog.min(pg_catalog.pg_snapshot_xmin(l.snapshot)) filter (where not l.node),
                        pg_catalog.pg_snapshot_xmax(own)) as held_xmin,
               coalesce(pg_catalog.array_agg(l.snapshot) filter (where l.node), '{}') as nodes,
               coalesce(pg_catalog.array_agg(l.snapshot) filter (where not l.node), '{}') as held
        from live l
    ),
    gone as (
        delete from realtime.changes c
        using horizon z
        where c.created_at < pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => keep_secs)
          and pg_catalog.pg_visible_in_snapshot(c.xid, own)
          and (c.xid < z.node_xmin
               or not exists (select 1 from pg_catalog.unnest(z.nodes) s(snap)
                              where not pg_catalog.pg_visible_in_snapshot(c.xid, s.snap)))
          and (c.xid < z.held_xmin
               or c.created_at < pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => cap_secs)
               or not exists (select 1 from pg_catalog.unnest(z.held) s(snap)
                              where not pg_catalog.pg_visible_in_snapshot(c.xid, s.snap)))
        returning c.xid, c.schema_name, c.table_name, c.op
    ),
    newest as materialized (
        select pg_catalog.max(g.xid) as xid from gone g
    ),
    -- The names each webhook endpoint selects log rows by, with the kinds of change it
    -- delivers (read only when a webhook hold may be marked).
    hook_tables as materialized (
        select e.name as holder, n.nspname::text as schema_name, c.relname::text as table_name,
               e.events
        from realtime.webhook_endpoints e
        cross join pg_catalog.unnest(e.tables) as t(rel)
        join pg_catalog.pg_class c on c.oid = t.rel
        join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        union
        select e.name, a.value -> 0 ->> 0, a.value -> 0 ->> 1, e.events
        from realtime.webhook_endpoints e
        cross join pg_catalog.jsonb_array_elements(
            case when pg_catalog.jsonb_typeof(e.table_names -> 'aliases') = 'array'
                 then e.table_names -> 'aliases' else '[]' end) as a
        union
        select e.name, l.value -> 1 ->> 0, l.value -> 1 ->> 1, e.events
        from realtime.webhook_endpoints e
        cross join pg_catalog.jsonb_array_elements(
            case when pg_catalog.jsonb_typeof(e.table_names -> 'last' -> 1) = 'array'
                 then e.table_names -> 'last' -> 1 else '[]' end) as l
    ),
    marked as (
        update realtime.log_holds h set lost_at = pg_catalog.now()
        from newest n
        where h.kind <> 'node' and h.lost_at is null and h.expires_at > pg_catalog.now()
          and pg_catalog.pg_snapshot_xmin(h.snapshot) <= n.xid
          and exists (select 1 from gone g
                      where not pg_catalog.pg_visible_in_snapshot(g.xid, h.snapshot)
                        and (h.kind <> 'webhook'
                             or exists (select 1 from hook_tables w
                                        where w.holder = h.holder
                                          and w.schema_name = g.schema_name
                                          and w.table_name = g.table_name
                                          and g.op = any(w.events))))
        returning 1
    ),
    cleared as (
        delete from realtime.log_holds h
        where h.expires_at < pg_catalog.now() - interval '1 day'
    )
    select (select pg_catalog.count(*) from gone), (select pg_catalog.count(*) from marked)
$fn$;

revoke all on function realtime.prune_log(pg_snapshot, float8, float8) from public;
