-- The publication's `publish` option, honoured as Supabase honours it: a table enabled
-- only through `supabase_realtime` delivers to postgres_changes subscribers only the
-- events the publication publishes (`alter publication supabase_realtime set (publish =
-- 'insert, update')`, or the dashboard's toggles). Supabase passes the same flags to its
-- decoder as `actions`. A table enabled with `realtime.enable` (alone or as well) delivers
-- every event, as it always did. Capture itself is unchanged: the log keeps every change,
-- and webhooks and the change feed choose their events themselves.
--
-- `events` (and `relid`, so the hub looks a table up by oid) are added at the end of
-- realtime.enabled_tables, so existing grants and readers are kept. ALTER PUBLICATION is DDL, so the rules version moves and the hub re-reads it.

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
where t.tgname = 'switchboard_capture_insert' and t.tgparentid = 0;

-- How a table was enabled decides its events, and `realtime.enable` on a table the
-- publication already captures (or `realtime.disable` of one it keeps) runs no DDL: so a
-- change of realtime.capture_sources moves the rules version as DDL does. Per row, so a
-- call that changes nothing (enabling a table twice) drops no cached rules.
create or replace function realtime.capture_sources_changed() returns trigger
language plpgsql security definer set search_path = '' as $fn$
begin
    perform pg_catalog.nextval('realtime.rules_version_seq');
    return null;
end
$fn$;

revoke all on function realtime.capture_sources_changed() from public;

drop trigger if exists switchboard_rules_version on realtime.capture_sources;
create trigger switchboard_rules_version
    after insert or update or delete on realtime.capture_sources
    for each row execute function realtime.capture_sources_changed();
