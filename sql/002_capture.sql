-- The capture trigger, enable/disable, the list of enabled tables, and realtime.send.
-- NOTIFY carries no payload: identical notifications fold into one per transaction,
-- and it is only a wake-up; the rows travel through realtime.changes.

create or replace function realtime.capture() returns trigger
language plpgsql security definer set search_path = '' as $fn$
begin
    insert into realtime.changes (schema_name, table_name, op, record, old_record)
    values (
        tg_table_schema,
        tg_table_name,
        tg_op,
        case when tg_op <> 'DELETE' then to_jsonb(new) end,
        case when tg_op <> 'INSERT' then to_jsonb(old) end
    );
    perform pg_notify('switchboard_changes', '');
    return null;
end
$fn$;

create or replace function realtime.enable(tbl regclass) returns void
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
    if exists (select 1 from pg_catalog.pg_trigger
               where tgrelid = tbl and tgname = 'switchboard_capture') then
        return;
    end if;
    begin
        execute format(
            'create trigger switchboard_capture after insert or update or delete on %I.%I '
            'for each row execute function realtime.capture()', sch, rel);
    exception when duplicate_object then
        null; -- enabled concurrently
    end;
end
$fn$;

create or replace function realtime.disable(tbl regclass) returns void
language plpgsql set search_path = '' as $fn$
declare
    sch text;
    rel text;
begin
    select n.nspname, c.relname into sch, rel
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.oid = tbl;
    execute format('drop trigger if exists switchboard_capture on %I.%I', sch, rel);
end
$fn$;

create or replace view realtime.enabled_tables as
select n.nspname::text as schema_name, c.relname::text as table_name
from pg_catalog.pg_trigger t
join pg_catalog.pg_class c on c.oid = t.tgrelid
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where t.tgname = 'switchboard_capture' and t.tgparentid = 0;

create or replace function realtime.send(
    payload jsonb, event text, topic text, private boolean default true
) returns void
language plpgsql security definer set search_path = '' as $fn$
begin
    insert into realtime.changes (op, record, topic, event, private)
    values ('BROADCAST', payload, topic, event, private);
    perform pg_notify('switchboard_changes', '');
end
$fn$;

revoke all on function realtime.capture() from public;
revoke all on function realtime.enable(regclass) from public;
revoke all on function realtime.disable(regclass) from public;
revoke all on function realtime.send(jsonb, text, text, boolean) from public;
