-- Partitions captured row by row. A statement trigger fires only on the table a statement
-- names, so a partition captured with 012's statement triggers missed every row written
-- through its partitioned table: a partitioned table in supabase_realtime (which lists
-- its partitions) lost the writes made the usual way, through the parent. Row triggers
-- fire on the partition whichever way a row arrives, so a captured partition now logs
-- one log row per row (same content and order: `rows` / `old_rows` hold that one row). A
-- row an UPDATE moves to another partition is logged as a DELETE from the one and an
-- INSERT into the other, as logical decoding reports it. (Row triggers may not have
-- transition tables on partitions, hence one log row per row.)
--
-- A table that becomes a partition after it was captured (ATTACH PARTITION) is switched
-- over by sync_publication, which the event trigger runs after every ALTER TABLE and the
-- hub runs periodically. A partitioned table's own capture (realtime.enable, or a
-- publication with publish_via_partition_root) still sees the statements that name it.

create or replace function realtime.capture_row() returns trigger
language plpgsql security definer as $fn$
declare
    l realtime.changes;
    new_rows json;
    old_rows json;
begin
    if tg_op <> 'DELETE' then
        new_rows := pg_catalog.json_build_array(pg_catalog.row_to_json(new));
    end if;
    if tg_op <> 'INSERT' then
        old_rows := pg_catalog.json_build_array(pg_catalog.row_to_json(old));
    end if;
    insert into realtime.changes (schema_name, table_name, op, rows, old_rows)
    values (tg_table_schema, tg_table_name, tg_op, new_rows, old_rows)
    returning * into l;
    if pg_catalog.pg_sequence_last_value('realtime.wake_until'::regclass)
           > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint then
        perform realtime.wake_with(l.id, l.xid, l.created_at, tg_op, tg_table_schema,
                                   tg_table_name, l.rows, l.old_rows);
    end if;
    return null;
end
$fn$;

revoke all on function realtime.capture_row() from public;

-- As in 020, with row triggers on a partition.
create or replace function realtime.capture_on(tbl regclass) returns void
language plpgsql set search_path = '' as $fn$
declare
    sch  text;
    rel  text;
    kind "char";
    part boolean;
    have text[];
    op   text;
begin
    select n.nspname, c.relname, c.relkind, c.relispartition into sch, rel, kind, part
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
        if part and kind = 'r' then
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

-- Captured partitions still on statement triggers (captured before this migration, or
-- attached after they were captured).
create or replace function realtime.partitions_on_statements() returns setof oid
language sql stable set search_path = '' as $fn$
    select t.tgrelid
    from pg_catalog.pg_trigger t
    join pg_catalog.pg_class c on c.oid = t.tgrelid
    where t.tgname in ('switchboard_capture_insert', 'switchboard_capture_update',
                       'switchboard_capture_delete')
      and t.tgparentid = 0 and c.relispartition and c.relkind = 'r'
      and (t.tgtype & 1) = 0  -- not FOR EACH ROW
    group by t.tgrelid
$fn$;

-- As in 020, and switches captured partitions to row triggers (counted as changed).
create or replace function realtime.sync_publication() returns integer
language plpgsql security definer set search_path = '' set lock_timeout = '500ms' as $fn$
declare
    changed integer := 0;
    r record;
    p oid;
begin
    if not exists (select 1 from realtime.publication_drift())
       and not exists (select 1 from realtime.capture_sources s
                       where not exists (select 1 from pg_catalog.pg_class c
                                         where c.oid = s.relid and c.relkind in ('r', 'p')))
       and not exists (select 1 from realtime.partitions_on_statements()) then
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
    for p in select realtime.partitions_on_statements() loop
        begin
            -- Both in this transaction: no write sees the partition without capture.
            perform realtime.capture_off(p::regclass);
            perform realtime.capture_on(p::regclass);
            changed := changed + 1;
        exception when others then
            raise warning 'switchboard: could not capture partition % row by row: %',
                p::regclass, sqlerrm;
        end;
    end loop;
    return changed;
end
$fn$;

revoke all on function realtime.partitions_on_statements() from public;

select realtime.sync_publication();
