-- The hub's page read as a function with one plan, kept for the session. The read's
-- statement (src/capture/reader.rs, READ_PAGE) asks for the rows of transactions at or
-- after the position's xmax, or in its xip list: a few rows at the end of the log, which
-- the xid index finds (a BitmapOr). Postgres chose that plan only when the log's
-- statistics told it how few rows those are. Without them (a log never analyzed, as on
-- a new database or after a bulk load, until autovacuum gets to it) it guessed a third
-- of the log and read all of it in id order, on every read: 3.6 ms a read instead of
-- 0.14 at 40,000 rows, growing with the log, several hundred times a second while
-- writers are busy, on the writers' cores (`switchboard-bench writeload` on a new
-- cluster: captured single-row writes at 0.45x plain). And every read was planned
-- again (0.2-0.3 ms, more than running it), because the statement's bind values decide
-- the plan.
--
-- Here the planner may not scan the log in full or in id order (`enable_seqscan`,
-- `enable_indexscan` off inside this function only), which leaves the xid index, and
-- `plan_cache_mode` keeps that one plan for the session. The disabled paths' cost
-- (Postgres adds 10^10 to them, and the sequence rules_version() reads has no other)
-- would otherwise call for JIT compilation on every call: `jit` is off here too. Same
-- rows, same order, same columns as the statement it replaces.
--
-- The rows are those new to the position given (p_xmax and p_xip of its snapshot,
-- p_snaps its page snapshots with p_ids the last id of each page, p_ahead the ids it
-- read ahead) and visible in the snapshot of the one statement that reads them, p_limit
-- at most, in id order; that snapshot is returned with every row (one row of nulls when
-- nothing is new), with the server's lifetime and clock and the rules version.
-- commit_time() is evaluated inline (its setting read once per read, not per row).
-- Caller's rights: the caller needs select on realtime.changes, as before.

create or replace function realtime.read_page(
    p_xmax text, p_xip text[], p_snaps text[], p_ids bigint[], p_ahead bigint[], p_limit bigint)
returns table (
    snapshot text, rules_version bigint, origin_server bigint, origin_at bigint,
    id bigint, op text, schema_name text, table_name text, record jsonb, old_record jsonb,
    rows json, old_rows json, topic text, event text, private boolean, message_id text,
    binary_payload bytea, xid text, created_at timestamptz, age_ms bigint)
language plpgsql volatile
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_indexscan = off
set jit = off
as $fn$
#variable_conflict use_column
declare
    commit_times boolean := pg_catalog.current_setting('track_commit_timestamp') = 'on';
begin
    return query
    with snap as materialized (
        select pg_catalog.pg_current_snapshot() as s, realtime.rules_version() as rv),
    stamp as materialized (
        select snap.s, snap.rv,
               (extract(epoch from pg_catalog.pg_postmaster_start_time()) * 1000000)::int8 as server,
               (extract(epoch from pg_catalog.clock_timestamp()) * 1000000)::int8 as at
        from snap)
    select st.s::text, st.rv, st.server, st.at,
           c.id, c.op, c.schema_name, c.table_name, c.record, c.old_record, c.rows, c.old_rows,
           c.topic, c.event, c.private, c.message_id, c.binary_payload, c.xid, c.created_at,
           c.age_ms
    from stamp st left join lateral (
        select c.id, c.op, c.schema_name, c.table_name, c.record, c.old_record, c.rows,
               c.old_rows, c.topic, c.event, c.private, c.message_id::text as message_id,
               c.binary_payload, c.xid::text as xid,
               case when commit_times
                    then coalesce(pg_catalog.pg_xact_commit_timestamp(pg_catalog.xid(c.xid)),
                                  c.created_at)
                    else c.created_at end as created_at,
               (extract(epoch from pg_catalog.clock_timestamp() - c.created_at) * 1000)::int8
                   as age_ms
        from realtime.changes c
        where (c.xid >= p_xmax::xid8 or c.xid = any(p_xip::xid8[]))
          and c.id <> all(p_ahead)
          and not exists (
              select 1 from unnest(p_snaps, p_ids) as p(snap, last_id)
              where c.id <= p.last_id and pg_catalog.pg_visible_in_snapshot(c.xid, p.snap::pg_snapshot))
        order by c.id
        limit p_limit) c on true;
end
$fn$;
