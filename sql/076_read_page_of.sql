-- The page read of a durable reader (a webhook endpoint, a change feed request), which
-- wants the changes of a few tables only. `realtime.read_page` (053) returns every log
-- row new to the position with its data, so each endpoint took in every other table's
-- statements whole: one 77 MB insert into a table no endpoint covers was read, in full,
-- by every endpoint, and each pooled connection that carried it kept a read buffer that
-- size. This returns the same rows, in the same order, under the same snapshot (the
-- reader still passes over every one of them), but the data of a row (record,
-- old_record, rows, old_rows, binary_payload) only when it is a change of one of
-- p_tables (`<characters in the schema name>:<schema>.<table>`, as the range read of
-- src/capture/reader.rs spells them) of a kind in p_ops. Broadcasts come without their
-- payload: durable readers deliver none. A row left out is not read from its TOAST
-- storage at all.

create or replace function realtime.read_page_of(
    p_xmax text, p_xip text[], p_snaps text[], p_ids bigint[], p_ahead bigint[], p_limit bigint,
    p_tables text[], p_ops text[])
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
           c.id, c.op, c.schema_name, c.table_name,
           case when c.wanted then c.record end, case when c.wanted then c.old_record end,
           case when c.wanted then c.rows end, case when c.wanted then c.old_rows end,
           c.topic, c.event, c.private, c.message_id,
           case when c.wanted then c.binary_payload end, c.xid, c.created_at, c.age_ms
    from stamp st left join lateral (
        select c.id, c.op, c.schema_name, c.table_name, c.record, c.old_record, c.rows,
               c.old_rows, c.topic, c.event, c.private, c.message_id::text as message_id,
               c.binary_payload, c.xid::text as xid,
               case when commit_times
                    then coalesce(pg_catalog.pg_xact_commit_timestamp(pg_catalog.xid(c.xid)),
                                  c.created_at)
                    else c.created_at end as created_at,
               (extract(epoch from pg_catalog.clock_timestamp() - c.created_at) * 1000)::int8
                   as age_ms,
               (c.op = any(p_ops)
                and pg_catalog.length(c.schema_name) || ':' || c.schema_name || '.'
                    || c.table_name = any(p_tables)) as wanted
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
