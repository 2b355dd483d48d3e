-- Tables enabled the Supabase way: a table in the `supabase_realtime` publication is
-- captured exactly as if `realtime.enable` had been called, however it got there (ADD
-- TABLE, FOR ALL TABLES, FOR TABLES IN SCHEMA, a new table or one moved into a published
-- schema, the publication created or dropped). `realtime.capture_sources` records which
-- way each table was enabled, so removing it from the publication does not undo a
-- `realtime.enable` and `realtime.disable` does not take it out of the publication's care.
--
-- Membership is read from pg_publication_tables, never from the DDL command list
-- (pg_event_trigger_ddl_commands() is empty for DROP TABLE and DROP PUBLICATION). An event
-- trigger reconciles at the end of every DDL that can change membership; the hub also
-- reconciles at start and periodically, every second when the event trigger is missing
-- (creating one needs superuser).

create table if not exists realtime.capture_sources (
    relid    oid not null,
    via      text not null check (via in ('publication', 'realtime.enable')),
    added_at timestamptz not null default now(),
    primary key (relid, via)
);

revoke all on realtime.capture_sources from public;

-- Tables captured before this migration were enabled with realtime.enable.
insert into realtime.capture_sources (relid, via)
select t.tgrelid, 'realtime.enable'
from pg_catalog.pg_trigger t
where t.tgname = 'switchboard_capture_insert' and t.tgparentid = 0
on conflict do nothing;

-- The publication, empty, unless it exists. With wal_level below `logical` Postgres only
-- warns: the publication is still a list of tables, which is all the hub reads.
do $do$
begin
    if not exists (select 1 from pg_catalog.pg_publication where pubname = 'supabase_realtime') then
        begin
            create publication supabase_realtime;
        exception when insufficient_privilege then
            raise notice 'switchboard: cannot create publication supabase_realtime; tables can still be enabled with realtime.enable';
        end;
    end if;
end
$do$;

-- Where capture and the publication disagree: tables to start capturing (`adding`) and
-- tables the publication no longer lists. Tables in schema `realtime` are never captured
-- (a FOR ALL TABLES publication lists the hub's own log).
create or replace function realtime.publication_drift()
returns table (relid oid, adding boolean)
language sql stable set search_path = '' as $fn$
    with published as (
        select distinct c.oid as relid
        from pg_catalog.pg_publication_tables p
        join pg_catalog.pg_namespace n on n.nspname = p.schemaname
        join pg_catalog.pg_class c on c.relnamespace = n.oid and c.relname = p.tablename
        where p.pubname = 'supabase_realtime' and p.schemaname <> 'realtime'
          and c.relkind in ('r', 'p')
    )
    select p.relid, true
    from published p
    where not exists (select 1 from realtime.capture_sources s
                      where s.relid = p.relid and s.via = 'publication')
    union all
    select s.relid, false
    from realtime.capture_sources s
    where s.via = 'publication'
      and not exists (select 1 from published p where p.relid = s.relid)
$fn$;

-- Brings capture in line with the publication; returns how many tables started or stopped
-- being captured, or -1 when another reconcile held the lock too long (the next one
-- catches up). Nothing is locked while nothing drifted, so the hub's periodic check never
-- gets in the way of the event trigger. Lock waits stay below the default
-- deadlock_timeout, so a reconcile running inside someone's DDL gives up (with a WARNING)
-- before it could deadlock with them; a table whose triggers cannot be changed is
-- reported with a WARNING and retried at the next call, the others proceed.
create or replace function realtime.sync_publication() returns integer
language plpgsql security definer set search_path = '' set lock_timeout = '500ms' as $fn$
declare
    changed integer := 0;
    r record;
begin
    if not exists (select 1 from realtime.publication_drift())
       and not exists (select 1 from realtime.capture_sources s
                       where not exists (select 1 from pg_catalog.pg_class c
                                         where c.oid = s.relid and c.relkind in ('r', 'p'))) then
        return 0;
    end if;
    -- One reconcile at a time per database ("sbpubsyn").
    begin
        perform pg_catalog.pg_advisory_xact_lock(8314037285011469678);
    exception when lock_not_available then
        return -1;
    end;
    delete from realtime.capture_sources s
    where not exists (select 1 from pg_catalog.pg_class c
                      where c.oid = s.relid and c.relkind in ('r', 'p'));
    for r in select d.relid, d.adding from realtime.publication_drift() d loop
        begin
            if r.adding then
                insert into realtime.capture_sources (relid, via) values (r.relid, 'publication');
                perform realtime.capture_on(r.relid::regclass);
            else
                delete from realtime.capture_sources where relid = r.relid and via = 'publication';
                if not exists (select 1 from realtime.capture_sources where relid = r.relid) then
                    perform realtime.capture_off(r.relid::regclass);
                end if;
            end if;
            changed := changed + 1;
        exception when others then
            raise warning 'switchboard: could not % capture of % (publication supabase_realtime): %',
                case when r.adding then 'start' else 'stop' end, r.relid::regclass, sqlerrm;
        end;
    end loop;
    return changed;
end
$fn$;

-- Whether the event trigger keeps capture in line by itself (else the hub polls).
create or replace function realtime.publication_sync_is_automatic() returns boolean
language sql stable set search_path = '' as $fn$
    select exists (select 1 from pg_catalog.pg_event_trigger
                   where evtname = 'switchboard_publication_sync' and evtenabled <> 'D')
$fn$;

-- The event trigger's body: a failed reconcile must never fail the user's DDL.
create or replace function realtime.publication_changed() returns event_trigger
language plpgsql set search_path = '' as $fn$
begin
    perform realtime.sync_publication();
exception when others then
    raise warning 'switchboard: could not sync capture with publication supabase_realtime: %', sqlerrm;
end
$fn$;

do $do$
begin
    if not exists (select 1 from pg_catalog.pg_event_trigger where evtname = 'switchboard_publication_sync') then
        begin
            create event trigger switchboard_publication_sync on ddl_command_end
                when tag in ('CREATE PUBLICATION', 'ALTER PUBLICATION', 'DROP PUBLICATION',
                             'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO',
                             'ALTER TABLE', 'DROP TABLE')
                execute function realtime.publication_changed();
        exception when insufficient_privilege then
            raise notice 'switchboard: cannot create an event trigger; the hub syncs capture with publication supabase_realtime every second';
        end;
    end if;
end
$do$;

-- capture_on / capture_off as in 012, without a NOTICE for every trigger that is absent
-- (the event trigger runs them on other people's DDL).
create or replace function realtime.capture_on(tbl regclass) returns void
language plpgsql set search_path = '' as $fn$
declare
    sch  text;
    rel  text;
    kind "char";
    have text[];
begin
    select n.nspname, c.relname, c.relkind into sch, rel, kind
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.oid = tbl;
    if kind not in ('r', 'p') then
        raise exception 'realtime.enable: % is not a table', tbl
            using errcode = 'wrong_object_type';
    end if;
    select pg_catalog.array_agg(t.tgname::text) into have
    from pg_catalog.pg_trigger t where t.tgrelid = tbl;
    have := coalesce(have, '{}');
    if 'switchboard_capture' = any(have) then
        execute format('drop trigger switchboard_capture on %I.%I', sch, rel);
    end if;
    begin
        if not 'switchboard_capture_insert' = any(have) then
            execute format(
                'create trigger switchboard_capture_insert after insert on %I.%I '
                'referencing new table as switchboard_new '
                'for each statement execute function realtime.capture_insert()', sch, rel);
        end if;
        if not 'switchboard_capture_update' = any(have) then
            execute format(
                'create trigger switchboard_capture_update after update on %I.%I '
                'referencing old table as switchboard_old new table as switchboard_new '
                'for each statement execute function realtime.capture_update()', sch, rel);
        end if;
        if not 'switchboard_capture_delete' = any(have) then
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
    for t in select g.tgname from pg_catalog.pg_trigger g
             where g.tgrelid = tbl and g.tgparentid = 0
               and g.tgname in ('switchboard_capture', 'switchboard_capture_insert',
                                'switchboard_capture_update', 'switchboard_capture_delete') loop
        execute format('drop trigger %I on %I.%I', t, sch, rel);
    end loop;
end
$fn$;

-- realtime.enable / disable are the other way in and out; a table stays captured while
-- either way holds.
create or replace function realtime.enable(tbl regclass) returns void
language plpgsql security definer set search_path = '' as $fn$
begin
    perform realtime.capture_on(tbl);
    insert into realtime.capture_sources (relid, via) values (tbl, 'realtime.enable')
    on conflict do nothing;
end
$fn$;

create or replace function realtime.disable(tbl regclass) returns void
language plpgsql security definer set search_path = '' as $fn$
begin
    delete from realtime.capture_sources where relid = tbl and via = 'realtime.enable';
    if exists (select 1 from realtime.capture_sources where relid = tbl) then
        raise notice 'switchboard: % stays captured: it is in publication supabase_realtime', tbl;
        return;
    end if;
    perform realtime.capture_off(tbl);
end
$fn$;

-- Every captured table and how it was enabled: `publication`, `realtime.enable`, or both
-- (`publication, realtime.enable`).
create or replace view realtime.enabled_tables as
select n.nspname::text as schema_name, c.relname::text as table_name,
       coalesce((select pg_catalog.string_agg(s.via, ', ' order by s.via)
                 from realtime.capture_sources s where s.relid = c.oid),
                'realtime.enable') as enabled_via
from pg_catalog.pg_trigger t
join pg_catalog.pg_class c on c.oid = t.tgrelid
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where t.tgname = 'switchboard_capture_insert' and t.tgparentid = 0;

revoke all on function realtime.capture_on(regclass) from public;
revoke all on function realtime.capture_off(regclass) from public;
revoke all on function realtime.publication_drift() from public;
revoke all on function realtime.sync_publication() from public;
revoke all on function realtime.publication_changed() from public;
revoke all on function realtime.enable(regclass) from public;
revoke all on function realtime.disable(regclass) from public;

select realtime.sync_publication();
