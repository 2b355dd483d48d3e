-- Cheaper capture for single-row (and up to 100-row) statements. Measured per captured
-- single-row INSERT transaction (backend CPU, see BENCHMARKS.md, "writeload"), the
-- capture trigger of 012 spent its time in:
--   * the CHECK constraint on `op`: Postgres parses the constraint's stored expression
--     again for every INSERT statement into the log (ExecConstraints -> stringToNode);
--   * starting the executor for a window function, a sort, a group aggregate and an
--     ordered aggregate, for a statement that touched one row;
--   * a query to read the wake-up lease out of its sequence.
--
-- * The CHECK constraint goes: only this schema's SECURITY DEFINER functions write the log
--   (writers and the hub have no INSERT right on it), each with a constant `op`, and
--   readers skip a row with an unknown op.
-- * A statement of 1 to 100 rows is logged by one plain aggregate over its transition
--   table (rows in the order the statement touched them, as before; JSON text identical:
--   the same json_agg). Larger statements, and empty ones, take 012's chunked query (an
--   empty statement logs nothing). At most 101 rows are turned into JSON before a larger
--   statement falls back.
-- * The lease is read with pg_sequence_last_value, a plain function call that PL/pgSQL
--   evaluates without starting an executor (same value as `last_value`; null while the
--   sequence was never set, which compares like the initial 0).
--
-- The log stays an ordinary WAL-logged table with the same columns and indexes.

alter table realtime.changes drop constraint if exists changes_op_check;

create or replace function realtime.capture_insert() returns trigger
language plpgsql security definer as $fn$
begin
    insert into realtime.changes (schema_name, table_name, op, rows)
    select tg_table_schema, tg_table_name, 'INSERT', pg_catalog.json_agg(pg_catalog.row_to_json(n.*))
    from (select * from switchboard_new limit 101) n
    having pg_catalog.count(*) between 1 and 100;
    if not found then
        insert into realtime.changes (schema_name, table_name, op, rows)
        select tg_table_schema, tg_table_name, 'INSERT', pg_catalog.json_agg(r.j order by r.i)
        from (select pg_catalog.row_to_json(n.*) as j, pg_catalog.row_number() over () as i
                from switchboard_new n) r
        group by (r.i - 1) / 100
        order by (r.i - 1) / 100;
    end if;
    if found and pg_catalog.pg_sequence_last_value('realtime.wake_until'::regclass)
           > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint then
        perform pg_catalog.pg_notify('switchboard_changes', '');
    end if;
    return null;
end
$fn$;

-- Old and new rows of one UPDATE are paired by position, as in 012: both transition
-- tables hold the rows in the order the statement updated them.
create or replace function realtime.capture_update() returns trigger
language plpgsql security definer as $fn$
begin
    insert into realtime.changes (schema_name, table_name, op, rows, old_rows)
    select tg_table_schema, tg_table_name, 'UPDATE',
           pg_catalog.json_agg(pg_catalog.row_to_json(n.*)),
           (select pg_catalog.json_agg(pg_catalog.row_to_json(o.*))
              from (select * from switchboard_old limit 101) o)
    from (select * from switchboard_new limit 101) n
    having pg_catalog.count(*) between 1 and 100;
    if not found then
        insert into realtime.changes (schema_name, table_name, op, rows, old_rows)
        select tg_table_schema, tg_table_name, 'UPDATE',
               pg_catalog.json_agg(n.j order by n.i), pg_catalog.json_agg(o.j order by n.i)
        from (select pg_catalog.row_to_json(x.*) as j, pg_catalog.row_number() over () as i
                from switchboard_new x) n
        join (select pg_catalog.row_to_json(x.*) as j, pg_catalog.row_number() over () as i
                from switchboard_old x) o on o.i = n.i
        group by (n.i - 1) / 100
        order by (n.i - 1) / 100;
    end if;
    if found and pg_catalog.pg_sequence_last_value('realtime.wake_until'::regclass)
           > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint then
        perform pg_catalog.pg_notify('switchboard_changes', '');
    end if;
    return null;
end
$fn$;

create or replace function realtime.capture_delete() returns trigger
language plpgsql security definer as $fn$
begin
    insert into realtime.changes (schema_name, table_name, op, old_rows)
    select tg_table_schema, tg_table_name, 'DELETE', pg_catalog.json_agg(pg_catalog.row_to_json(o.*))
    from (select * from switchboard_old limit 101) o
    having pg_catalog.count(*) between 1 and 100;
    if not found then
        insert into realtime.changes (schema_name, table_name, op, old_rows)
        select tg_table_schema, tg_table_name, 'DELETE', pg_catalog.json_agg(r.j order by r.i)
        from (select pg_catalog.row_to_json(o.*) as j, pg_catalog.row_number() over () as i
                from switchboard_old o) r
        group by (r.i - 1) / 100
        order by (r.i - 1) / 100;
    end if;
    if found and pg_catalog.pg_sequence_last_value('realtime.wake_until'::regclass)
           > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint then
        perform pg_catalog.pg_notify('switchboard_changes', '');
    end if;
    return null;
end
$fn$;

revoke all on function realtime.capture_insert() from public;
revoke all on function realtime.capture_update() from public;
revoke all on function realtime.capture_delete() from public;

-- The hub's reads of the log share the machine with the writers; each read called two
-- SQL functions that Postgres plans again for every statement that calls them (a SQL
-- function with a SET clause is never inlined): rules_version() once per read (most of
-- the read's own cost), commit_time() once per row. As PL/pgSQL their plans are kept for
-- the session. Same results.
create or replace function realtime.rules_version()
returns bigint
language plpgsql stable
set search_path = ''
as $fn$
begin
    if exists (select 1 from pg_catalog.pg_event_trigger
               where evtname = 'switchboard_rules_version' and evtenabled <> 'D') then
        return (select s.last_value from realtime.rules_version_seq s);
    end if;
    return -(extract(epoch from pg_catalog.clock_timestamp()))::bigint;
end
$fn$;

-- Called once per row read, so without a SET clause (which would switch search_path on
-- every call); every name is qualified and it runs with the caller's rights.
create or replace function realtime.commit_time(x xid8, fallback timestamptz)
returns timestamptz
language plpgsql stable
as $fn$
begin
    if pg_catalog.current_setting('track_commit_timestamp') = 'on' then
        return coalesce(pg_catalog.pg_xact_commit_timestamp(pg_catalog.xid(x)), fallback);
    end if;
    return fallback;
end
$fn$;
