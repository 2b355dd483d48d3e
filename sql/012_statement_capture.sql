-- Cheaper capture for writers: statement-level triggers with transition tables (one log
-- insert per statement, rows in the order the statement touched them), and a wake-up
-- that writers pay for only while some hub is actually waiting for one.
--
-- Why the wake-up is conditional: a transaction that calls NOTIFY takes a database-wide
-- lock at commit and holds it until its commit is flushed, so notifying writers commit one
-- at a time (no group commit). A hub that is busy reading does not need the wake-up, so it
-- is sent only while `realtime.wake_until` (epoch ms, on Postgres's clock) lies in the
-- future. Sequences are not transactional: a writer sees a hub's lease the moment it is
-- set, whatever its isolation level. A hub sets the lease before it stops reading and then
-- reads once more; any writer that read the old value had already been assigned its xid,
-- so that read (or a later one, while such xids are still running) finds its rows.

create sequence if not exists realtime.wake_until minvalue 0;

-- A statement's rows travel as JSON arrays, up to 100 rows per log row: `rows` holds the
-- new rows (INSERT, UPDATE), `old_rows` the old ones (UPDATE, DELETE), aligned by
-- position. Single `record`/`old_record` values remain for `realtime.send` and for rows
-- logged before this migration. Rows up to a page stay inline and uncompressed.
alter table realtime.changes add column if not exists rows json;
alter table realtime.changes add column if not exists old_rows json;
alter table realtime.changes alter column rows set storage main;
alter table realtime.changes alter column old_rows set storage main;
alter table realtime.changes set (toast_tuple_target = 8160);

-- Sends the wake-up when a hub holds a lease.
create or replace function realtime.wake() returns void
language plpgsql security definer set search_path = '' as $fn$
begin
    if (select last_value from realtime.wake_until)
           > (extract(epoch from pg_catalog.clock_timestamp()) * 1000)::bigint then
        perform pg_catalog.pg_notify('switchboard_changes', '');
    end if;
end
$fn$;

drop function if exists realtime.want_wake(bigint);

-- A hub waiting for wake-ups for the next `lease_ms` milliseconds. Returns whether a
-- lease was still held just before (if not, writers may have skipped the wake-up).
create or replace function realtime.want_wake(lease_ms bigint) returns boolean
language plpgsql security definer set search_path = '' as $fn$
declare
    now_ms bigint := (extract(epoch from pg_catalog.clock_timestamp()) * 1000)::bigint;
    held boolean := (select last_value from realtime.wake_until) > now_ms;
begin
    perform pg_catalog.setval('realtime.wake_until', now_ms + lease_ms);
    return held;
end
$fn$;

-- A hub that polls because writes are frequent: writers stop sending wake-ups at once.
-- (Any other idle hub notices at its next renewal and reads what it missed.)
create or replace function realtime.drop_wake() returns void
language sql security definer set search_path = '' as $fn$
    select pg_catalog.setval('realtime.wake_until', 1)
$fn$;

-- The capture triggers run once per statement on the writer's path, so they stay lean:
-- SECURITY DEFINER (writers need no rights on the log) but no SET clause, with every
-- relation and function schema-qualified instead; the wake-up check is inlined.
create or replace function realtime.capture_insert() returns trigger
language plpgsql security definer as $fn$
begin
    insert into realtime.changes (schema_name, table_name, op, rows)
    select tg_table_schema, tg_table_name, 'INSERT', pg_catalog.json_agg(r.j order by r.i)
    from (select pg_catalog.row_to_json(n.*) as j, pg_catalog.row_number() over () as i
            from switchboard_new n) r
    group by (r.i - 1) / 100
    order by (r.i - 1) / 100;
    if found and (select w.last_value from realtime.wake_until w)
           > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint then
        perform pg_catalog.pg_notify('switchboard_changes', '');
    end if;
    return null;
end
$fn$;

-- Old and new rows of one UPDATE are paired by position: Postgres appends both
-- transition tables row by row in the order the statement updates them.
create or replace function realtime.capture_update() returns trigger
language plpgsql security definer as $fn$
begin
    insert into realtime.changes (schema_name, table_name, op, rows, old_rows)
    select tg_table_schema, tg_table_name, 'UPDATE',
           pg_catalog.json_agg(n.j order by n.i), pg_catalog.json_agg(o.j order by n.i)
    from (select pg_catalog.row_to_json(x.*) as j, pg_catalog.row_number() over () as i
            from switchboard_new x) n
    join (select pg_catalog.row_to_json(x.*) as j, pg_catalog.row_number() over () as i
            from switchboard_old x) o on o.i = n.i
    group by (n.i - 1) / 100
    order by (n.i - 1) / 100;
    if found and (select w.last_value from realtime.wake_until w)
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
    select tg_table_schema, tg_table_name, 'DELETE', pg_catalog.json_agg(r.j order by r.i)
    from (select pg_catalog.row_to_json(o.*) as j, pg_catalog.row_number() over () as i
            from switchboard_old o) r
    group by (r.i - 1) / 100
    order by (r.i - 1) / 100;
    if found and (select w.last_value from realtime.wake_until w)
           > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint then
        perform pg_catalog.pg_notify('switchboard_changes', '');
    end if;
    return null;
end
$fn$;

-- Turns capture on for a table: three statement-level triggers. Idempotent.
create or replace function realtime.capture_on(tbl regclass) returns void
language plpgsql set search_path = '' as $fn$
declare
    sch  text;
    rel  text;
    kind "char";
begin
    select n.nspname, c.relname, c.relkind into sch, rel, kind
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.oid = tbl;
    if kind not in ('r', 'p') then
        raise exception 'realtime.enable: % is not a table', tbl
            using errcode = 'wrong_object_type';
    end if;
    execute format('drop trigger if exists switchboard_capture on %I.%I', sch, rel);
    begin
        if not exists (select 1 from pg_catalog.pg_trigger
                       where tgrelid = tbl and tgname = 'switchboard_capture_insert') then
            execute format(
                'create trigger switchboard_capture_insert after insert on %I.%I '
                'referencing new table as switchboard_new '
                'for each statement execute function realtime.capture_insert()', sch, rel);
        end if;
        if not exists (select 1 from pg_catalog.pg_trigger
                       where tgrelid = tbl and tgname = 'switchboard_capture_update') then
            execute format(
                'create trigger switchboard_capture_update after update on %I.%I '
                'referencing old table as switchboard_old new table as switchboard_new '
                'for each statement execute function realtime.capture_update()', sch, rel);
        end if;
        if not exists (select 1 from pg_catalog.pg_trigger
                       where tgrelid = tbl and tgname = 'switchboard_capture_delete') then
            execute format(
                'create trigger switchboard_capture_delete after delete on %I.%I '
                'referencing old table as switchboard_old '
                'for each statement execute function realtime.capture_delete()', sch, rel);
        end if;
    exception when duplicate_object then
        null; -- enabled concurrently
    end;
end
$fn$;

create or replace function realtime.capture_off(tbl regclass) returns void
language plpgsql set search_path = '' as $fn$
declare
    sch text;
    rel text;
    t   text;
begin
    select n.nspname, c.relname into sch, rel
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.oid = tbl;
    foreach t in array array['switchboard_capture', 'switchboard_capture_insert',
                             'switchboard_capture_update', 'switchboard_capture_delete'] loop
        execute format('drop trigger if exists %I on %I.%I', t, sch, rel);
    end loop;
end
$fn$;

create or replace function realtime.enable(tbl regclass) returns void
language sql set search_path = '' as $fn$
    select realtime.capture_on(tbl)
$fn$;

create or replace function realtime.disable(tbl regclass) returns void
language sql set search_path = '' as $fn$
    select realtime.capture_off(tbl)
$fn$;

create or replace view realtime.enabled_tables as
select n.nspname::text as schema_name, c.relname::text as table_name
from pg_catalog.pg_trigger t
join pg_catalog.pg_class c on c.oid = t.tgrelid
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where t.tgname = 'switchboard_capture_insert' and t.tgparentid = 0;

create or replace function realtime.send(
    payload jsonb, event text, topic text, private boolean default true
) returns void
language plpgsql security definer set search_path = '' as $fn$
begin
    insert into realtime.changes (op, record, topic, event, private)
    values ('BROADCAST', payload, topic, event, private);
    perform realtime.wake();
end
$fn$;

-- Tables enabled before this migration move from the row trigger to the statement
-- triggers.
do $do$
declare
    t regclass;
begin
    for t in select tgrelid::regclass from pg_catalog.pg_trigger
             where tgname = 'switchboard_capture' and tgparentid = 0 loop
        perform realtime.capture_on(t);
    end loop;
end
$do$;

drop function if exists realtime.capture();

revoke all on function realtime.wake() from public;
revoke all on function realtime.want_wake(bigint) from public;
revoke all on function realtime.drop_wake() from public;
revoke all on function realtime.capture_insert() from public;
revoke all on function realtime.capture_update() from public;
revoke all on function realtime.capture_delete() from public;
revoke all on function realtime.capture_on(regclass) from public;
revoke all on function realtime.capture_off(regclass) from public;
revoke all on function realtime.enable(regclass) from public;
revoke all on function realtime.disable(regclass) from public;
