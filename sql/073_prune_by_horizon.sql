-- Pruning the log cost (rows pruned) x (rows in realtime.log_holds): 013's prune_log
-- asked, for every row old enough, whether any live hold had not read it, each time
-- scanning every hold, expired ones included (they stay a day, and every resumable
-- channel closed without a leave parks one). With ~15,000 holds a prune of ~4,600 rows
-- took 10 s, on the capture connection, while no change reached any subscriber.
--
-- Same rows deleted, same holds marked lost; now the live holds are read once, and a row
-- below the oldest xmin among them (every hold has read it) is decided without looking
-- at them; only the rows above it are checked against each live hold's snapshot. JIT is
-- off: compiling the query cost more than running it. The hub also prunes on a
-- connection of its own now, so a slow prune holds back no change.
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
        returning c.xid
    ),
    newest as materialized (
        select pg_catalog.max(g.xid) as xid from gone g
    ),
    marked as (
        update realtime.log_holds h set lost_at = pg_catalog.now()
        from newest n
        where h.kind <> 'node' and h.lost_at is null and h.expires_at > pg_catalog.now()
          and pg_catalog.pg_snapshot_xmin(h.snapshot) <= n.xid
          and exists (select 1 from gone g
                      where not pg_catalog.pg_visible_in_snapshot(g.xid, h.snapshot))
        returning 1
    ),
    cleared as (
        delete from realtime.log_holds h
        where h.expires_at < pg_catalog.now() - interval '1 day'
    )
    select (select pg_catalog.count(*) from gone), (select pg_catalog.count(*) from marked)
$fn$;

revoke all on function realtime.prune_log(pg_snapshot, float8, float8) from public;
