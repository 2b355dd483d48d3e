-- Tables that capture cannot serve are refused by name, changing nothing. realtime.enable
-- and create_webhook / alter_webhook (through enable_webhook_tables) gave Postgres's own
-- `permission denied: "pg_class" is a system catalog` from inside capture_on, and
-- accepted a table of information_schema or a temporary table: a temporary table lives
-- only in its own session, whose end left it listed as captured in no schema a client
-- can name. Now they are refused as the hub refuses a join to them (schemas pg_catalog,
-- information_schema, pg_toast*, pg_temp*; realtime as in 056). Publications refuse the
-- same tables. Same signature, so its grants are kept.
create or replace function realtime.check_capturable(tbl regclass) returns void
language plpgsql stable set search_path = pg_catalog, pg_temp as $fn$
declare
    nsp text;
    persistence "char";
begin
    select n.nspname, c.relpersistence into nsp, persistence
    from pg_catalog.pg_class c
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.oid = check_capturable.tbl;
    if persistence = 't' then
        raise exception 'temporary tables cannot be captured (got %)', check_capturable.tbl
            using errcode = 'invalid_parameter_value';
    end if;
    if nsp in ('realtime', 'pg_catalog', 'information_schema')
       or nsp like 'pg\_toast%' or nsp like 'pg\_temp%' then
        raise exception 'tables in schema % cannot be captured (got %)', nsp, check_capturable.tbl
            using errcode = 'invalid_parameter_value';
    end if;
end
$fn$;

-- A webhook endpoint's `tables` and `events` were stored as given, duplicates included
-- (`{INSERT,INSERT}`), and listed so; each change was delivered once all the same. They
-- are now kept once each, in the order first given, whoever writes the row.
create or replace function realtime.webhook_fields_once() returns trigger
language plpgsql set search_path = pg_catalog, pg_temp as $fn$
begin
    new.tables := (select pg_catalog.array_agg(u.t order by u.i)
                   from (select t, pg_catalog.min(i) as i
                         from pg_catalog.unnest(new.tables) with ordinality as a(t, i)
                         group by t) u);
    new.events := (select pg_catalog.array_agg(u.e order by u.i)
                   from (select e, pg_catalog.min(i) as i
                         from pg_catalog.unnest(new.events) with ordinality as a(e, i)
                         group by e) u);
    return new;
end
$fn$;
revoke all on function realtime.webhook_fields_once() from public;

create trigger webhook_fields_once
    before insert or update of tables, events on realtime.webhook_endpoints
    for each row execute function realtime.webhook_fields_once();

update realtime.webhook_endpoints e set tables = e.tables, events = e.events
where pg_catalog.cardinality(e.tables)
        <> (select pg_catalog.count(distinct t) from pg_catalog.unnest(e.tables) t)
   or pg_catalog.cardinality(e.events)
        <> (select pg_catalog.count(distinct v) from pg_catalog.unnest(e.events) v);
