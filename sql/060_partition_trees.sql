-- A partitioned table captured as itself (realtime.enable on it, or a publication with
-- publish_via_partition_root) sees every row of its partitions. Its statement triggers
-- fired only for statements naming it, so rows written straight into a partition, or
-- through a parent above it, were lost. It is now captured with row triggers on the
-- partitioned table itself: Postgres clones them onto every partition at any depth,
-- present and future (CREATE ... PARTITION OF, ATTACH), and removes the clones on
-- DETACH, so nothing has to keep them in line. A clone fires on the partition that holds
-- the row, however the row arrived, and logs it under the table that owns the trigger:
-- one log row per row (same content as a partition's own capture), and a row an UPDATE
-- moves between partitions is a DELETE and an INSERT, as logical decoding reports it.
-- A partition captured as well (a publication listing partitions) logs its own row
-- under its own name, as before.
--
-- The triggers are named `switchboard_capture_tree_<oid>_<op>`: a name per table, because
-- clones keep their parent's name and a partition may hold only one trigger of a name
-- (one shared name would make an ATTACH of a captured partitioned table under another
-- fail). Nothing reads the oid back from a name: the owner of a clone is found through
-- pg_trigger, for each row (a rename applies at once; nothing a writer can set decides
-- it), and a table counts as captured by its own triggers' function (so
-- realtime.enabled_tables never lists a partition for its parent's clones).

create or replace function realtime.capture_row() returns trigger
language plpgsql security definer as $fn$
declare
    l realtime.changes;
    new_rows json;
    old_rows json;
    sch text := tg_table_schema;
    rel text := tg_table_name;
    owner_sch text;
    owner_rel text;
begin
    if tg_nargs > 0 then
        -- A clone: the captured table is the ancestor holding this trigger as its own.
        select n.nspname, c.relname into owner_sch, owner_rel
        from pg_catalog.pg_partition_ancestors(tg_relid) a
        join pg_catalog.pg_trigger t
          on t.tgrelid = a.relid and t.tgname = tg_name and t.tgparentid = 0
        join pg_catalog.pg_class c on c.oid = a.relid
        join pg_catalog.pg_namespace n on n.oid = c.relnamespace;
        if found then
            sch := owner_sch;
            rel := owner_rel;
        end if;
    end if;
    if tg_op <> 'DELETE' then
        new_rows := pg_catalog.json_build_array(pg_catalog.row_to_json(new));
    end if;
    if tg_op <> 'INSERT' then
        old_rows := pg_catalog.json_build_array(pg_catalog.row_to_json(old));
    end if;
    insert into realtime.changes (schema_name, table_name, op, rows, old_rows)
    values (sch, rel, tg_op, new_rows, old_rows)
    returning * into l;
    if pg_catalog.pg_sequence_last_value('realtime.wake_until'::regclass)
           > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint then
        perform realtime.wake_with(l.id, l.xid, l.created_at, tg_op, sch, rel,
                                   l.rows, l.old_rows);
    end if;
    return null;
end
$fn$;

revoke all on function realtime.capture_row() from public;

-- As in 058, and a partitioned table gets row triggers of its own name (replacing the
-- statement triggers it was captured with before).
create or replace function realtime.capture_on(tbl regclass) returns void
language plpgsql set search_path = '' as $fn$
declare
    sch  text;
    rel  text;
    kind "char";
    part boolean;
    have text[];
    op   text;
    name text;
begin
    select n.nspname, c.relname, c.relkind, c.relispartition into sch, rel, kind, part
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.oid = tbl;
    if kind not in ('r', 'p') then
        raise exception 'realtime.enable: % is not a table', tbl
            using errcode = 'wrong_object_type';
    end if;
    select pg_catalog.array_agg(t.tgname::text) into have
    from pg_catalog.pg_trigger t where t.tgrelid = tbl and t.tgparentid = 0;
    have := coalesce(have, '{}');
    if 'switchboard_capture' = any(have) then
        execute format('drop trigger switchboard_capture on %I.%I', sch, rel);
    end if;
    if kind = 'p' then
        foreach op in array array['insert', 'update', 'delete'] loop
            if ('switchboard_capture_' || op) = any(have) then
                execute format('drop trigger %I on %I.%I', 'switchboard_capture_' || op, sch, rel);
            end if;
            -- By function, not name: a restored database keeps its triggers under the
            -- names the old oids gave them.
            continue when exists (
                select 1 from pg_catalog.pg_trigger t
                where t.tgrelid = tbl and t.tgparentid = 0
                  and t.tgfoid = 'realtime.capture_row'::regproc
                  and (t.tgtype & case op when 'insert' then 4 when 'delete' then 8
                                          else 16 end) <> 0);
            name := format('switchboard_capture_tree_%s_%s', tbl::oid, op);
            begin
                execute format(
                    'create trigger %I after %s on %I.%I '
                    'for each row execute function realtime.capture_row(''tree'')',
                    name, op, sch, rel);
            exception when duplicate_object then
                -- Enabled concurrently, or the name is taken on a partition.
                if not exists (select 1 from pg_catalog.pg_trigger t
                               where t.tgrelid = tbl and t.tgname = name) then
                    raise exception 'realtime.enable: cannot capture %: a partition of it already has a trigger named %',
                        tbl, name using errcode = 'duplicate_object';
                end if;
            end;
        end loop;
        return;
    end if;
    begin
        if part then
            foreach op in array array['insert', 'update', 'delete'] loop
                if not ('switchboard_capture_' || op) = any(have) then
                    execute format(
                        'create trigger %I after %s on %I.%I '
                        'for each row execute function realtime.capture_row()',
                        'switchboard_capture_' || op, op, sch, rel);
                end if;
            end loop;
            return;
        end if;
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

-- As in 020, and a partitioned table's row triggers (dropping them drops their clones).
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
               and (g.tgname in ('switchboard_capture', 'switchboard_capture_insert',
                                 'switchboard_capture_update', 'switchboard_capture_delete')
                    or g.tgfoid = 'realtime.capture_row'::regproc) loop
        execute format('drop trigger %I on %I.%I', t, sch, rel);
    end loop;
end
$fn$;

-- As in 057; a table is captured by an INSERT capture trigger of its own (a clone of a
-- parent's says the parent is captured, not the partition).
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
where t.tgparentid = 0
  and (t.tgtype & 4) <> 0  -- fires on INSERT
  and t.tgfoid in ('realtime.capture_insert'::regproc, 'realtime.capture_row'::regproc);

-- Partitioned tables captured before this migration move to row triggers, in this
-- transaction: no write sees them without capture.
do $do$
declare
    p oid;
begin
    for p in select t.tgrelid from pg_catalog.pg_trigger t
             join pg_catalog.pg_class c on c.oid = t.tgrelid
             where t.tgname = 'switchboard_capture_insert' and t.tgparentid = 0
               and c.relkind = 'p' loop
        perform realtime.capture_on(p::regclass);
    end loop;
end
$do$;
