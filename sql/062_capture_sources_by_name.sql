-- How each table was enabled survives a dump and restore. `realtime.capture_sources`
-- kept tables by oid, and a restore gives every table a new one: the rows came back naming
-- tables that no longer exist (the next sync deleted them, so a table enabled both ways
-- lost its `realtime.enable` and stopped being captured when it later left the
-- publication) or, by coincidence, naming another table (whose capture a sync could then
-- stop). As `regclass` the column is dumped as the table's name and restored to its new
-- oid; in the database itself it is the same oid, compared with `pg_class.oid` as before.
--
-- realtime.enabled_tables reads the column, so it is dropped and made again as in 057,
-- with the grants it had.
do $do$
declare
    acl aclitem[];
begin
    if (select a.atttypid from pg_catalog.pg_attribute a
        where a.attrelid = 'realtime.capture_sources'::regclass and a.attname = 'relid')
       = 'regclass'::regtype then
        return;
    end if;
    select c.relacl into acl from pg_catalog.pg_class c
    where c.oid = 'realtime.enabled_tables'::regclass;
    drop view realtime.enabled_tables;
    alter table realtime.capture_sources alter column relid type regclass using relid::regclass;
    execute $view$
create view realtime.enabled_tables as
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
    $view$;
    execute (select coalesce(pg_catalog.string_agg(pg_catalog.format(
                 'grant %s on realtime.enabled_tables to %s', x.privilege_type,
                 case when x.grantee = 0 then 'public'
                      else pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(x.grantee)) end), '; '),
                 'select 1')
             from pg_catalog.aclexplode(acl) x
             where x.grantee <> (select c.relowner from pg_catalog.pg_class c
                                 where c.oid = 'realtime.enabled_tables'::regclass));
end
$do$;
