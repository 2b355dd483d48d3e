-- A table that leaves the publication while another session has it open keeps its
-- capture triggers for a while: dropping a trigger needs an ACCESS EXCLUSIVE lock, which
-- any open transaction that read the table holds off, so the sync in the DDL's own
-- transaction gives up after its lock_timeout (with a WARNING) and a later sync drops
-- them once it can. Meanwhile the triggers go on logging the table's changes, and the hub
-- went on delivering them to subscribers: rows of a table no longer published reached
-- clients until the reader ended.
--
-- realtime.enabled_tables now leaves out a table that is captured only because of the
-- publication and that the publication no longer lists (as realtime.publication_drift
-- tells it: `pg_publication_tables`), whether or not its triggers are gone yet. The hub
-- reads it for which tables are enabled and which events they deliver, and reads it again
-- when the publication changes (the DDL moves the rules version): it delivers nothing of
-- such a table and refuses joins to it, from the moment the ALTER commits.
--
-- Columns and grants as in 062.
create or replace view realtime.enabled_tables as
select n.nspname::text as schema_name, c.relname::text as table_name,
       coalesce((select pg_catalog.string_agg(s.via, ', ' order by s.via)
                 from realtime.capture_sources s where s.relid = c.oid),
                'realtime.enable') as enabled_via,
       case
           when exists (select 1 from realtime.capture_sources s
                        where s.relid = c.oid and s.via = 'publication')
            and not exists (select 1 from realtime.capture_sources s
                            where s.relid = c.oid and s.via = 'realtime.enable')
           then coalesce(
               (select pg_catalog.array_remove(array[
                           case when p.pubinsert then 'INSERT' end,
                           case when p.pubupdate then 'UPDATE' end,
                           case when p.pubdelete then 'DELETE' end], null)
                from pg_catalog.pg_publication p where p.pubname = 'supabase_realtime'),
               '{INSERT,UPDATE,DELETE}')
           else '{INSERT,UPDATE,DELETE}'::text[]
       end as events,
       c.oid as relid
from pg_catalog.pg_trigger t
join pg_catalog.pg_class c on c.oid = t.tgrelid
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where t.tgname = 'switchboard_capture_insert' and t.tgparentid = 0
  and not (exists (select 1 from realtime.capture_sources s
                   where s.relid = c.oid and s.via = 'publication')
           and not exists (select 1 from realtime.capture_sources s
                           where s.relid = c.oid and s.via = 'realtime.enable')
           and not exists (select 1 from pg_catalog.pg_publication_tables p
                           where p.pubname = 'supabase_realtime'
                             and p.schemaname = n.nspname and p.tablename = c.relname));

-- Where capture and the publication still disagree after a sync (realtime.publication_drift:
-- a table to start capturing whose triggers could not be made, or one that left and keeps
-- its triggers), by name, for the hub's log: the sync's WARNINGs reach only the session
-- that ran it.
create or replace function realtime.publication_pending()
returns table (table_name text, adding boolean)
language sql stable security definer set search_path = pg_catalog, pg_temp as $fn$
    select d.relid::regclass::text, d.adding
    from realtime.publication_drift() d
    order by 1
$fn$;
revoke all on function realtime.publication_pending() from public;

-- grant_hub (075) grants it too (the hub's upkeep calls it after each sync).
alter function realtime.grant_hub(text) rename to grant_hub_075;
create function realtime.grant_hub(hub text) returns void
language plpgsql volatile set search_path = pg_catalog, pg_temp as $fn$
begin
    perform realtime.grant_hub_075(hub);
    execute pg_catalog.format(
        'grant execute on function realtime.publication_pending() to %I', hub);
end
$fn$;
revoke all on function realtime.grant_hub(text) from public;
revoke all on function realtime.grant_hub_075(text) from public;
