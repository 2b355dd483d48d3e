-- Arguments refused before they change anything: a table in schema realtime for capture,
-- a webhook replay from the future.

-- Tables in schema realtime are never captured (the publication sync already passes them
-- over). realtime.enable, and create_webhook / alter_webhook through
-- enable_webhook_tables, accepted them, and capture on realtime.changes inserts into the
-- table it fires on: every captured write then failed with "stack depth limit exceeded".
-- Now they are refused, changing nothing. Same signatures, so existing grants are kept.

-- Raises a clear error when `tbl` is in schema realtime.
create or replace function realtime.check_capturable(tbl regclass) returns void
language plpgsql stable set search_path = '' as $fn$
begin
    if exists (select 1 from pg_catalog.pg_class c
               join pg_catalog.pg_namespace n on n.oid = c.relnamespace
               where c.oid = check_capturable.tbl and n.nspname = 'realtime') then
        raise exception 'tables in schema realtime cannot be captured (got %)', check_capturable.tbl
            using errcode = 'invalid_parameter_value';
    end if;
end
$fn$;

create or replace function realtime.enable(tbl regclass) returns void
language plpgsql security definer set search_path = '' as $fn$
begin
    perform realtime.check_capturable(tbl);
    perform realtime.capture_on(tbl);
    insert into realtime.capture_sources (relid, via) values (tbl, 'realtime.enable')
    on conflict do nothing;
end
$fn$;

-- Every table is checked, also one already captured (so no endpoint names such a table).
create or replace function realtime.enable_webhook_tables(tbls regclass[]) returns void
language plpgsql volatile set search_path = '' as $fn$
declare
    t regclass;
begin
    foreach t in array tbls loop
        perform realtime.check_capturable(t);
        if not exists (
            select 1 from realtime.enabled_tables e
            join pg_catalog.pg_namespace n on n.nspname = e.schema_name
            join pg_catalog.pg_class c on c.relnamespace = n.oid and c.relname = e.table_name
            where c.oid = t
        ) then
            perform realtime.enable(t);
        end if;
    end loop;
end
$fn$;

-- grant_hub (055) grants the new function too (enable_webhook_tables runs as the hub).
alter function realtime.grant_hub(text) rename to grant_hub_055;
create function realtime.grant_hub(hub text) returns void
language plpgsql volatile set search_path = '' as $fn$
begin
    perform realtime.grant_hub_055(hub);
    execute pg_catalog.format(
        'grant execute on function realtime.check_capturable(regclass) to %I', hub);
end
$fn$;
revoke all on function realtime.grant_hub(text) from public;

-- A replay from a time in the future moved the cursor to "now" and so skipped every
-- change not yet delivered, with no lost-data mark (webhooks pause, never drop). Now it
-- is refused, changing nothing. Same signature, so its grants are kept.
create or replace function realtime.replay_webhook(name text, "from" timestamptz) returns text
language plpgsql volatile set search_path = '' as $fn$
declare
    pos text;
begin
    if replay_webhook."from" > pg_catalog.clock_timestamp() then
        raise exception 'replay from must not be in the future (got %)', replay_webhook."from"
            using errcode = 'invalid_parameter_value';
    end if;
    pos := realtime.position_at(replay_webhook."from");
    update realtime.webhook_endpoints e
    set position = pos, data_lost_at = null, failures = 0, version = e.version + 1,
        updated_at = pg_catalog.now()
    where e.name = replay_webhook.name;
    if not found then
        raise exception 'no webhook named "%"', replay_webhook.name using errcode = 'undefined_object';
    end if;
    perform realtime.hold_webhook_position(replay_webhook.name, pos);
    return pos;
end
$fn$;
