-- Partitions. Postgres fires a table's statement triggers only for the statements that
-- name it, so capture with statement triggers lost rows at both ends of a partition tree:
--
-- * A captured partition (a partitioned table in supabase_realtime lists its partitions)
--   missed every row written through its parent, the usual way. A partition captured under
--   its own name now has row triggers, which fire however a row arrives: one log row per
--   row (same content and order: `rows` / `old_rows` hold that one row). A row an UPDATE
--   moves to another partition is logged as a DELETE from the one and an INSERT into the
--   other, as logical decoding reports it. (Row triggers may not have transition tables
--   on partitions, hence one log row per row.)
-- * A partitioned table captured as itself (`realtime.enable` on it, or the publication
--   with `publish_via_partition_root`) missed the rows written straight into one of its
--   partitions. Every partition below it (`pg_partition_tree`, any depth) now has
--   statement triggers of its own, `switchboard_as_<ancestor oid>_{insert,update,delete}`,
--   that log under the ancestor's name (its oid is the trigger's argument; the name is
--   read when the trigger fires, so a renamed table keeps its changes). A partition's
--   statement triggers fire exactly for the statements that name it, and the ancestor's
--   for those that name the ancestor, so no row is logged twice.
--
-- sync_publication (the event trigger after CREATE TABLE and ALTER TABLE, and the hub
-- periodically) keeps both in line as partitions are created, attached and detached,
-- including tables captured before this migration.

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

-- The capture functions are 052's, with the name taken from the argument when there is
-- one (a table's own triggers have none: the same statements as before).
create or replace function realtime.capture_insert() returns trigger
language plpgsql security definer as $fn$
declare
    l realtime.changes;
    sch text := tg_table_schema;
    rel text := tg_table_name;
begin
    if tg_nargs > 0 then
        -- A partition's trigger for a captured partitioned ancestor: that table's name now.
        select n.nspname, c.relname into sch, rel
        from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        where c.oid = tg_argv[0]::oid;
        if not found then
            return null; -- a trigger left over from a table dropped since: nothing to log
        end if;
    end if;
    insert into realtime.changes (schema_name, table_name, op, rows)
    select sch, rel, 'INSERT', pg_catalog.json_agg(pg_catalog.row_to_json(n.*))
    from (select * from switchboard_new limit 101) n
    having pg_catalog.count(*) between 1 and 100
    returning * into l;
    if not found then
        insert into realtime.changes (schema_name, table_name, op, rows)
        select sch, rel, 'INSERT', pg_catalog.json_agg(r.j order by r.i)
        from (select pg_catalog.row_to_json(n.*) as j, pg_catalog.row_number() over () as i
                from switchboard_new n) r
        group by (r.i - 1) / 100
        order by (r.i - 1) / 100;
    end if;
    if found and pg_catalog.pg_sequence_last_value('realtime.wake_until'::regclass)
           > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint then
        perform realtime.wake_with(l.id, l.xid, l.created_at, 'INSERT', sch,
                                   rel, l.rows, null);
    end if;
    return null;
end
$fn$;

-- Old and new rows of one UPDATE are paired by position, as in 012.
create or replace function realtime.capture_update() returns trigger
language plpgsql security definer as $fn$
declare
    l realtime.changes;
    sch text := tg_table_schema;
    rel text := tg_table_name;
begin
    if tg_nargs > 0 then
        -- A partition's trigger for a captured partitioned ancestor: that table's name now.
        select n.nspname, c.relname into sch, rel
        from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        where c.oid = tg_argv[0]::oid;
        if not found then
            return null; -- a trigger left over from a table dropped since: nothing to log
        end if;
    end if;
    insert into realtime.changes (schema_name, table_name, op, rows, old_rows)
    select sch, rel, 'UPDATE',
           pg_catalog.json_agg(pg_catalog.row_to_json(n.*)),
           (select pg_catalog.json_agg(pg_catalog.row_to_json(o.*))
              from (select * from switchboard_old limit 101) o)
    from (select * from switchboard_new limit 101) n
    having pg_catalog.count(*) between 1 and 100
    returning * into l;
    if not found then
        insert into realtime.changes (schema_name, table_name, op, rows, old_rows)
        select sch, rel, 'UPDATE',
               pg_catalog.json_agg(n.j order by n.i), pg_catalog.json_agg(o.j order by n.i)
        from (select pg_catalog.row_to_json(x.*) as j, pg_catalog.row_number() over () as i
                from switchboard_new x) n
        join (select pg_catalog.row_to_json(x.*) as j, pg_catalog.row_number() over () as i
                from switchboard_old x) o on o.i = n.i
        group by (n.i - 1) / 100
        order by (n.i - 1) / 100;
    end if;
    if found and pg_catalog.pg_sequence_last_value('realtime.wake_until'::regclass)
           > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint then
        perform realtime.wake_with(l.id, l.xid, l.created_at, 'UPDATE', sch,
                                   rel, l.rows, l.old_rows);
    end if;
    return null;
end
$fn$;

create or replace function realtime.capture_delete() returns trigger
language plpgsql security definer as $fn$
declare
    l realtime.changes;
    sch text := tg_table_schema;
    rel text := tg_table_name;
begin
    if tg_nargs > 0 then
        -- A partition's trigger for a captured partitioned ancestor: that table's name now.
        select n.nspname, c.relname into sch, rel
        from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        where c.oid = tg_argv[0]::oid;
        if not found then
            return null; -- a trigger left over from a table dropped since: nothing to log
        end if;
    end if;
    insert into realtime.changes (schema_name, table_name, op, old_rows)
    select sch, rel, 'DELETE', pg_catalog.json_agg(pg_catalog.row_to_json(o.*))
    from (select * from switchboard_old limit 101) o
    having pg_catalog.count(*) between 1 and 100
    returning * into l;
    if not found then
        insert into realtime.changes (schema_name, table_name, op, old_rows)
        select sch, rel, 'DELETE', pg_catalog.json_agg(r.j order by r.i)
        from (select pg_catalog.row_to_json(o.*) as j, pg_catalog.row_number() over () as i
                from switchboard_old o) r
        group by (r.i - 1) / 100
        order by (r.i - 1) / 100;
    end if;
    if found and pg_catalog.pg_sequence_last_value('realtime.wake_until'::regclass)
           > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint then
        perform realtime.wake_with(l.id, l.xid, l.created_at, 'DELETE', sch,
                                   rel, null, l.old_rows);
    end if;
    return null;
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

-- Partitions below captured partitioned tables and their `switchboard_as_` triggers:
-- (partition, ancestor, true) where they are missing, (table, ancestor, false) where they
-- are left over (detached, or the ancestor no longer captured).
create or replace function realtime.descendant_drift()
returns table (relid oid, ancestor oid, adding boolean)
language sql stable set search_path = '' as $fn$
    with captured as (
        select t.tgrelid as a
        from pg_catalog.pg_trigger t
        join pg_catalog.pg_class c on c.oid = t.tgrelid
        where t.tgname = 'switchboard_capture_insert' and t.tgparentid = 0 and c.relkind = 'p'),
    wanted as (
        select p.relid::oid as relid, c.a
        from captured c, pg_catalog.pg_partition_tree(c.a::regclass) p
        where p.relid::oid <> c.a),
    have as (
        select t.tgrelid as relid,
               pg_catalog.substring(t.tgname, '^switchboard_as_([0-9]+)_insert$')::oid as a
        from pg_catalog.pg_trigger t
        where t.tgname ~ '^switchboard_as_[0-9]+_insert$' and t.tgparentid = 0)
    select w.relid, w.a, true from wanted w
    where not exists (select 1 from have h where h.relid = w.relid and h.a = w.a)
    union all
    select h.relid, h.a, false from have h
    where not exists (select 1 from wanted w where w.relid = h.relid and w.a = h.a)
$fn$;

-- Adds (`on`) or drops the triggers through which partition `tbl` logs under `ancestor`.
create or replace function realtime.capture_as(tbl regclass, ancestor oid, "on" boolean)
returns void
language plpgsql set search_path = '' as $fn$
declare
    sch text;
    rel text;
    op  text;
    name text;
begin
    select n.nspname, c.relname into sch, rel
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.oid = tbl;
    foreach op in array array['insert', 'update', 'delete'] loop
        name := 'switchboard_as_' || ancestor::text || '_' || op;
        execute format('drop trigger if exists %I on %I.%I', name, sch, rel);
        if "on" then
            execute format(
                'create trigger %I after %s on %I.%I %s for each statement '
                'execute function realtime.capture_%s(%L)',
                name, op, sch, rel,
                case op
                    when 'insert' then 'referencing new table as switchboard_new'
                    when 'update' then 'referencing old table as switchboard_old new table as switchboard_new'
                    else 'referencing old table as switchboard_old'
                end,
                op, ancestor::text);
        end if;
    end loop;
end
$fn$;

-- Brings every `switchboard_as_` trigger of `ancestor` (or of all, when null) in line.
create or replace function realtime.sync_descendants(ancestor oid) returns integer
language plpgsql set search_path = '' as $fn$
declare
    r record;
    changed integer := 0;
begin
    for r in select d.relid, d.ancestor, d.adding from realtime.descendant_drift() d
             where sync_descendants.ancestor is null or d.ancestor = sync_descendants.ancestor loop
        begin
            perform realtime.capture_as(r.relid::regclass, r.ancestor, r.adding);
            changed := changed + 1;
        exception when others then
            raise warning 'switchboard: could not % capture of % for its partitioned table %: %',
                case when r.adding then 'start' else 'stop' end, r.relid::regclass,
                r.ancestor, sqlerrm;
        end;
    end loop;
    return changed;
end
$fn$;

-- capture_on / capture_off as in 020, with row triggers on a partition, and the partitions
-- of a partitioned table.
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
    if kind = 'p' then
        perform realtime.sync_descendants(tbl::oid);
    end if;
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
    perform realtime.sync_descendants(tbl::oid);
end
$fn$;


-- As in 020, and brings partitions in line: captured partitions still on statement
-- triggers switch to row triggers, and the partitions of captured partitioned tables get
-- (or lose) their `switchboard_as_` triggers.
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
       and not exists (select 1 from realtime.partitions_on_statements())
       and not exists (select 1 from realtime.descendant_drift()) then
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
    changed := changed + realtime.sync_descendants(null);
    return changed;
end
$fn$;


revoke all on function realtime.partitions_on_statements() from public;
revoke all on function realtime.descendant_drift() from public;
revoke all on function realtime.capture_as(regclass, oid, boolean) from public;
revoke all on function realtime.sync_descendants(oid) from public;

select realtime.sync_publication();
