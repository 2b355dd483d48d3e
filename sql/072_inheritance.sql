-- Tables in a plain inheritance tree (INHERITS, not partitioning) captured row by row, as
-- partitions are since 058. A statement trigger fires only on the table a statement
-- names, and its transition tables hold the rows of every table below it, in that
-- table's shape: an UPDATE or DELETE through a parent (`update parent ...` reaches the
-- children's rows too) logged nothing for a captured child, and logged the child's rows
-- under the parent's name, with the parent's columns only, for a captured parent.
-- Logical decoding reports each row under the table that holds it. Row triggers fire on
-- the table that holds the row, whichever table the statement names, so a captured table
-- with a parent or a child by inheritance now logs one log row per row.
--
-- A captured table that joins such a tree later (CREATE TABLE ... INHERITS, ALTER TABLE
-- ... INHERIT) is switched over by the sync the event trigger runs after that DDL, in its
-- transaction, as a captured partition is.

-- Whether `tbl` is a plain table with an inheritance parent or child (partitions and
-- partitioned tables are not: their parent is partitioned, or they are).
create function realtime.in_inheritance_tree(tbl oid) returns boolean
language sql stable set search_path = pg_catalog, pg_temp as $fn$
    select exists (select 1 from pg_catalog.pg_inherits i
                   join pg_catalog.pg_class p on p.oid = i.inhparent
                   join pg_catalog.pg_class c on c.oid = i.inhrelid
                   where (i.inhrelid = tbl or i.inhparent = tbl)
                     and p.relkind = 'r' and c.relkind = 'r')
$fn$;
revoke all on function realtime.in_inheritance_tree(oid) from public;

-- 058's capture_on (as 065 named it), with row triggers on inheritance trees too.
create or replace function realtime.capture_on_058(tbl regclass) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $fn$
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
        if kind = 'r' and (part or realtime.in_inheritance_tree(tbl)) then
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

-- Captured tables still on statement triggers that should be on row triggers: partitions
-- (058) and, now, tables in an inheritance tree. The sync switches each in one
-- transaction (capture_off, capture_on), so no write finds it without capture.
create or replace function realtime.partitions_on_statements() returns setof oid
language sql stable set search_path = pg_catalog, pg_temp as $fn$
    select t.tgrelid
    from pg_catalog.pg_trigger t
    join pg_catalog.pg_class c on c.oid = t.tgrelid
    where t.tgname in ('switchboard_capture_insert', 'switchboard_capture_update',
                       'switchboard_capture_delete')
      and t.tgparentid = 0 and c.relkind = 'r'
      and (c.relispartition or realtime.in_inheritance_tree(c.oid))
      and (t.tgtype & 1) = 0  -- not FOR EACH ROW
    group by t.tgrelid
$fn$;

select realtime.sync_publication();
