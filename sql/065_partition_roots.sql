-- A partitioned table captured as itself (`realtime.enable`, or the publication with
-- publish_via_partition_root) now also receives the rows written straight into its
-- partitions, under its own name, as Supabase's decoder reports them. Its statement
-- triggers fire only for statements that name it, so those rows were never logged.
--
-- Every partition below a captured partitioned table, at any depth, gets three statement
-- triggers (`switchboard_root_insert` / `_update` / `_delete`). They fire only for
-- statements that name that partition, so a statement through the captured table is
-- still logged once, by the captured table's own triggers. They log the statement's rows
-- under the name of each captured table above the partition, found when they fire: a
-- table renamed, detached or no longer captured since is never logged under a stale name.
-- Same content, order and chunks of at most 100 rows as the other statement triggers.
--
-- The partitions are kept in line without the publication's lock (creating a trigger on
-- a partition needs no other table's lock and a trigger made twice is skipped): by
-- capture_on / capture_off, and by sync_publication, which the event trigger runs at the
-- end of the DDL that creates, attaches or detaches a partition, inside that DDL's
-- transaction, so a new partition is never writable uncaptured. The hub's periodic sync
-- repairs what a failed one left.
--
-- Still not captured: a partitioned table that is itself a partition does not see rows
-- written through its own parent (a statement's rows carry no partition).

create or replace function realtime.capture_for_roots() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
declare
    r record;
    l realtime.changes;
    new_rows json;
    old_rows json;
    n int;
    k int;
begin
    if tg_op <> 'DELETE' then
        select pg_catalog.json_agg(pg_catalog.row_to_json(x.*)) into new_rows from switchboard_new x;
    end if;
    if tg_op <> 'INSERT' then
        select pg_catalog.json_agg(pg_catalog.row_to_json(x.*)) into old_rows from switchboard_old x;
    end if;
    n := coalesce(pg_catalog.json_array_length(coalesce(new_rows, old_rows)), 0);
    if n = 0 then
        return null;
    end if;
    -- The captured partitioned tables above this one, nearest first (inline: plpgsql
    -- keeps this plan for the session, a SQL function's would be made for every call).
    for r in
        select n.nspname::text as schema_name, c.relname::text as table_name
        from pg_catalog.pg_partition_ancestors(tg_relid) with ordinality a (relid, k)
        join pg_catalog.pg_class c on c.oid = a.relid
        join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        where a.k > 1
          and exists (select 1 from pg_catalog.pg_trigger t
                      where t.tgrelid = a.relid and t.tgname = 'switchboard_capture_insert'
                        and t.tgparentid = 0)
        order by a.k
    loop
        if n <= 100 then
            insert into realtime.changes (schema_name, table_name, op, rows, old_rows)
            values (r.schema_name, r.table_name, tg_op, new_rows, old_rows)
            returning * into l;
        else
            l := null;
            for k in 0 .. (n - 1) / 100 loop
                insert into realtime.changes (schema_name, table_name, op, rows, old_rows)
                values (r.schema_name, r.table_name, tg_op,
                        realtime.json_slice(new_rows, k * 100, 100),
                        realtime.json_slice(old_rows, k * 100, 100));
            end loop;
        end if;
        if pg_catalog.pg_sequence_last_value('realtime.wake_until'::regclass)
               > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint then
            perform realtime.wake_with(l.id, l.xid, l.created_at, tg_op, r.schema_name,
                                       r.table_name, l.rows, l.old_rows);
        end if;
    end loop;
    return null;
end
$fn$;

revoke all on function realtime.capture_for_roots() from public;

-- Elements `skip + 1` to `skip + take` of a JSON array, in order (null for a null array).
create or replace function realtime.json_slice(arr json, skip int, take int) returns json
language sql immutable set search_path = pg_catalog, pg_temp as $fn$
    select pg_catalog.json_agg(e.v order by e.i)
    from pg_catalog.json_array_elements(arr) with ordinality e (v, i)
    where e.i > skip and e.i <= skip + take
$fn$;

revoke all on function realtime.json_slice(json, int, int) from public;

-- Partitions that should have the triggers and lack one (adding), and partitions that
-- have one and should not (removing).
create or replace function realtime.partition_root_drift()
returns table (relid oid, adding boolean)
language sql stable set search_path = pg_catalog, pg_temp as $fn$
    with wanted as (
        select distinct x.relid::oid as relid
        from pg_catalog.pg_trigger t
        join pg_catalog.pg_class p on p.oid = t.tgrelid and p.relkind = 'p'
        cross join lateral pg_catalog.pg_partition_tree(t.tgrelid) x
        join pg_catalog.pg_class c on c.oid = x.relid and c.relkind in ('r', 'p')
        where t.tgname = 'switchboard_capture_insert' and t.tgparentid = 0
          and x.relid::oid <> t.tgrelid
    ), have as (
        select t.tgrelid as relid, pg_catalog.count(*) as triggers
        from pg_catalog.pg_trigger t
        where t.tgname in ('switchboard_root_insert', 'switchboard_root_update',
                           'switchboard_root_delete')
          and t.tgparentid = 0
        group by t.tgrelid
    )
    select w.relid, true from wanted w
    where not exists (select 1 from have h where h.relid = w.relid and h.triggers = 3)
    union all
    select h.relid, false from have h
    where not exists (select 1 from wanted w where w.relid = h.relid)
$fn$;

revoke all on function realtime.partition_root_drift() from public;

-- Puts the partitions in line; returns how many it changed. A partition it cannot lock
-- within lock_timeout (busy writers) is left, with a warning, to the next sync.
create or replace function realtime.sync_partition_roots() returns integer
language plpgsql security definer set search_path = pg_catalog, pg_temp
set lock_timeout = '500ms' as $fn$
declare
    d record;
    op text;
    changed integer := 0;
begin
    for d in select * from realtime.partition_root_drift() loop
        begin
            foreach op in array array['insert', 'update', 'delete'] loop
                if not d.adding then
                    execute pg_catalog.format('drop trigger if exists %I on %s',
                                              'switchboard_root_' || op, d.relid::regclass);
                elsif not exists (select 1 from pg_catalog.pg_trigger t
                                  where t.tgrelid = d.relid
                                    and t.tgname = 'switchboard_root_' || op) then
                    execute pg_catalog.format(
                        'create trigger %I after %s on %s referencing %s '
                        'for each statement execute function realtime.capture_for_roots()',
                        'switchboard_root_' || op, op, d.relid::regclass,
                        case op when 'insert' then 'new table as switchboard_new'
                                when 'update' then 'old table as switchboard_old new table as switchboard_new'
                                else 'old table as switchboard_old' end);
                end if;
            end loop;
            changed := changed + 1;
        exception when duplicate_object then
            changed := changed + 1; -- made concurrently
        when others then
            raise warning 'switchboard: could not % capture of partition % for the captured table above it: %',
                case when d.adding then 'start' else 'stop' end, d.relid::regclass, sqlerrm;
        end;
    end loop;
    return changed;
end
$fn$;

revoke all on function realtime.sync_partition_roots() from public;

-- capture_on / capture_off as before, then the partitions below (only the owner calls
-- them, so no grants move with the new functions).
alter function realtime.capture_on(regclass) rename to capture_on_058;
create function realtime.capture_on(tbl regclass) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $fn$
begin
    perform realtime.capture_on_058(tbl);
    perform realtime.sync_partition_roots();
end
$fn$;
revoke all on function realtime.capture_on(regclass) from public;

alter function realtime.capture_off(regclass) rename to capture_off_020;
create function realtime.capture_off(tbl regclass) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $fn$
begin
    perform realtime.capture_off_020(tbl);
    perform realtime.sync_partition_roots();
end
$fn$;
revoke all on function realtime.capture_off(regclass) from public;

-- sync_publication as in 061, then the partitions below captured tables (also when the
-- publication's lock was busy: that part needs no lock). The grants move with it.
alter function realtime.sync_publication() rename to sync_publication_061;
create function realtime.sync_publication() returns integer
language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
declare
    tables integer := realtime.sync_publication_061();
    partitions integer := realtime.sync_partition_roots();
begin
    if tables < 0 then
        return tables;
    end if;
    return tables + partitions;
end
$fn$;
revoke all on function realtime.sync_publication() from public;
do $do$
begin
    execute (select coalesce(pg_catalog.string_agg(pg_catalog.format(
                 'grant execute on function realtime.sync_publication() to %s',
                 case when x.grantee = 0 then 'public'
                      else pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(x.grantee)) end), '; '),
                 'select 1')
             from pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) x
             where p.oid = 'realtime.sync_publication_061()'::regprocedure
               and x.grantee <> p.proowner and x.privilege_type = 'EXECUTE');
end
$do$;
revoke all on function realtime.sync_publication_061() from public;

select realtime.sync_publication();
