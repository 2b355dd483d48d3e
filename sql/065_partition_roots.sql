-- A partitioned table captured as itself (`realtime.enable`, or the publication with
-- publish_via_partition_root) now also receives the rows written straight into its
-- partitions, under its own name, as Supabase's decoder reports them. Its statement
-- triggers fire only for statements that name it, so those rows were never logged.
--
-- Every partition below a captured partitioned table, at any depth, gets three statement
-- triggers (`switchboard_root_insert` / `_update` / `_delete`, on
-- realtime.capture_for_roots) whose argument lists the oids of the captured tables above
-- it. They fire only for statements that name that partition, so a statement through the
-- captured table is still logged once, by that table's own triggers. They log the
-- statement's rows as the captured table's own triggers do (same content, order, chunks
-- of at most 100 rows, one pass) under each listed table that is still above the
-- partition, by the name it has when they fire. Both are read from the current catalog,
-- not the writer's snapshot, as the trigger itself is: a REPEATABLE READ writer whose
-- snapshot predates the capture logs its rows all the same, a renamed table's rows carry
-- its new name, and a detached partition logs nothing.
--
-- Upkeep (realtime.sync_partition_roots): finding what to change costs a few index probes
-- per table looked at and locks nothing; our triggers are told apart by their function,
-- and a captured table by its capture trigger's function, never by name alone (a trigger
-- disabled or set to fire on replicas only counts as missing). Only a partition whose
-- triggers change is locked, and only after what would refuse the change (another trigger
-- with one of the names, no right to make triggers) has been checked and warned about.
-- It runs
--   * in realtime.enable / disable (capture_on / capture_off), for that table's tree;
--   * in the event trigger at the end of any role's DDL, inside that DDL's transaction,
--     for each table the DDL made or changed, everything below it and the tables above
--     it (so a partition created or attached under a captured table is captured before
--     anyone can write to it);
--   * in the hub's sync (at start and every 5 s), for every partition; it also takes the
--     triggers off a detached partition (they log nothing meanwhile).
-- Not captured:
--   * foreign-table partitions (no triggers on them), and statements that name a
--     partitioned table with a foreign table below it (Postgres would refuse transition
--     tables for a statement through it that reaches the foreign table, so it takes no
--     triggers; its other partitions do);
--   * until the next sync: a partition made by DDL that runs at REPEATABLE READ (the
--     event trigger reads the catalog through its snapshot), one made without the event
--     trigger (migrations run by a non-superuser), a partitioned table whose last foreign
--     partition was dropped (a DROP is not in the event trigger's list of commands), and,
--     after a restore from a dump, every partition (its triggers name the old oids, so
--     they log nothing);
--   * a partitioned table captured as itself that is also a partition does not see rows
--     written through its own parent (a statement's rows carry no partition).

create or replace function realtime.capture_for_roots() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
declare
    root oid;
    ancestors oid[];
    names text[];
    l realtime.changes;
begin
    ancestors := array(select a.relid::oid from pg_catalog.pg_partition_ancestors(tg_relid) a);
    foreach root in array pg_catalog.string_to_array(tg_argv[0], ',')::oid[] loop
        continue when not root = any(ancestors);
        names := (select x.object_names
                  from pg_catalog.pg_identify_object_as_address('pg_catalog.pg_class'::regclass,
                                                                root, 0) x);
        l := null;
        -- As capture_insert / capture_update / capture_delete (052), under that name: up
        -- to 100 rows by one aggregate, more in one pass of chunks of 100.
        if tg_op = 'INSERT' then
            insert into realtime.changes (schema_name, table_name, op, rows)
            select names[1], names[2], 'INSERT', pg_catalog.json_agg(pg_catalog.row_to_json(n.*))
            from (select * from switchboard_new limit 101) n
            having pg_catalog.count(*) between 1 and 100
            returning * into l;
            if not found then
                insert into realtime.changes (schema_name, table_name, op, rows)
                select names[1], names[2], 'INSERT', pg_catalog.json_agg(r.j order by r.i)
                from (select pg_catalog.row_to_json(n.*) as j, pg_catalog.row_number() over () as i
                        from switchboard_new n) r
                group by (r.i - 1) / 100
                order by (r.i - 1) / 100;
            end if;
        elsif tg_op = 'UPDATE' then
            insert into realtime.changes (schema_name, table_name, op, rows, old_rows)
            select names[1], names[2], 'UPDATE',
                   pg_catalog.json_agg(pg_catalog.row_to_json(n.*)),
                   (select pg_catalog.json_agg(pg_catalog.row_to_json(o.*))
                      from (select * from switchboard_old limit 101) o)
            from (select * from switchboard_new limit 101) n
            having pg_catalog.count(*) between 1 and 100
            returning * into l;
            if not found then
                insert into realtime.changes (schema_name, table_name, op, rows, old_rows)
                select names[1], names[2], 'UPDATE',
                       pg_catalog.json_agg(n.j order by n.i), pg_catalog.json_agg(o.j order by n.i)
                from (select pg_catalog.row_to_json(x.*) as j, pg_catalog.row_number() over () as i
                        from switchboard_new x) n
                join (select pg_catalog.row_to_json(x.*) as j, pg_catalog.row_number() over () as i
                        from switchboard_old x) o on o.i = n.i
                group by (n.i - 1) / 100
                order by (n.i - 1) / 100;
            end if;
        else
            insert into realtime.changes (schema_name, table_name, op, old_rows)
            select names[1], names[2], 'DELETE', pg_catalog.json_agg(pg_catalog.row_to_json(o.*))
            from (select * from switchboard_old limit 101) o
            having pg_catalog.count(*) between 1 and 100
            returning * into l;
            if not found then
                insert into realtime.changes (schema_name, table_name, op, old_rows)
                select names[1], names[2], 'DELETE', pg_catalog.json_agg(r.j order by r.i)
                from (select pg_catalog.row_to_json(o.*) as j, pg_catalog.row_number() over () as i
                        from switchboard_old o) r
                group by (r.i - 1) / 100
                order by (r.i - 1) / 100;
            end if;
        end if;
        if found and pg_catalog.pg_sequence_last_value('realtime.wake_until'::regclass)
               > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint then
            perform realtime.wake_with(l.id, l.xid, l.created_at, tg_op, names[1], names[2],
                                       l.rows, l.old_rows);
        end if;
    end loop;
    return null;
end
$fn$;

revoke all on function realtime.capture_for_roots() from public;

-- Whether `t`, one of our triggers, is one of the three a partition needs, with `roots`
-- as its argument, firing (disabled or replica-only ones count as missing).
create or replace function realtime.root_trigger_is_right(t pg_catalog.pg_trigger, roots text)
returns boolean
language sql stable set search_path = pg_catalog, pg_temp as $fn$
    select t.tgenabled in ('O', 'A')
       and (t.tgname, t.tgtype) in (('switchboard_root_insert', 4::int2),
                                    ('switchboard_root_update', 16::int2),
                                    ('switchboard_root_delete', 8::int2))
       and t.tgargs = pg_catalog.convert_to(roots, 'UTF8') || pg_catalog.decode('00', 'hex')
$fn$;

revoke all on function realtime.root_trigger_is_right(pg_catalog.pg_trigger, text) from public;

-- Partitions whose triggers differ from what they should be: `roots` is the argument
-- they should have (the captured tables above, nearest first), or null when they should
-- have none. Looks at `scope` (and, with `below`, every partition under it), or, when
-- `scope` is null, at every partition and every table that has our triggers. A table is
-- captured when it has 058's insert trigger (by its function: a trigger of that name on
-- another function is not capture). A partitioned table with a foreign table anywhere
-- below it takes no triggers: Postgres refuses transition tables for a statement through
-- it that reaches the foreign table. A partition whose detach (or an ancestor's) is
-- pending is left as it is until the detach is done. Each table costs a few index probes
-- of pg_inherits and pg_trigger (plpgsql, so the plans are kept); nothing is locked.
create or replace function realtime.partition_root_drift(scope oid, below boolean)
returns table (relid oid, roots text)
language plpgsql stable set search_path = pg_catalog, pg_temp as $fn$
declare
    k oid;
    kind "char";
    want text;
begin
    for k in
        with recursive in_scope (relid) as (
            select scope where scope is not null
            union all
            select i.inhrelid from in_scope s join pg_catalog.pg_inherits i on i.inhparent = s.relid
            where below
        )
        select s.relid from in_scope s
        union
        select c.oid from pg_catalog.pg_class c where scope is null and c.relispartition
        union
        select t.tgrelid from pg_catalog.pg_trigger t
        where scope is null and t.tgfoid = 'realtime.capture_for_roots()'::regprocedure
    loop
        continue when exists (select 1 from pg_catalog.pg_partition_ancestors(k) a
                              join pg_catalog.pg_inherits i on i.inhrelid = a.relid::oid
                              where i.inhdetachpending);
        kind := (select c.relkind from pg_catalog.pg_class c where c.oid = k);
        want := null;
        if kind = 'r' or (kind = 'p' and not exists (
               with recursive sub (relid) as (
                   select k
                   union all
                   select i.inhrelid from sub s join pg_catalog.pg_inherits i on i.inhparent = s.relid
               )
               select 1 from sub s join pg_catalog.pg_class c on c.oid = s.relid
               where c.relkind = 'f')) then
            want := (select pg_catalog.string_agg(a.relid::oid::text, ',' order by a.n)
                     from pg_catalog.pg_partition_ancestors(k) with ordinality a (relid, n)
                     where a.n > 1
                       and exists (select 1 from pg_catalog.pg_trigger t
                                   where t.tgrelid = a.relid::oid and t.tgparentid = 0
                                     and t.tgfoid = 'realtime.capture_insert()'::regprocedure));
        end if;
        if want is null then
            continue when not exists (
                select 1 from pg_catalog.pg_trigger t
                where t.tgrelid = k and t.tgparentid = 0
                  and t.tgfoid = 'realtime.capture_for_roots()'::regprocedure);
        else
            continue when (select pg_catalog.count(*) from pg_catalog.pg_trigger t
                           where t.tgrelid = k and t.tgparentid = 0
                             and t.tgfoid = 'realtime.capture_for_roots()'::regprocedure
                             and realtime.root_trigger_is_right(t, want)) = 3;
        end if;
        relid := k;
        roots := want;
        return next;
    end loop;
end
$fn$;

revoke all on function realtime.partition_root_drift(oid, boolean) from public;

-- Puts the partitions `partition_root_drift(scope, below)` names in line; returns how
-- many it changed. What it cannot do (another trigger has one of the names, no right to
-- make triggers on the partition) is warned about before any lock is asked for. A
-- partition is locked, then what it needs is read again (another session may have put it
-- right while this one waited), and drift is read again until nothing new turns up (a
-- partition committed while this one waited). It waits for a lock as long as its caller
-- does: realtime.enable as long as the session's lock_timeout allows, as for the captured
-- table's own triggers; a sync at most 500 ms a partition, after which it leaves that
-- partition, with a warning, to the next sync.
create or replace function realtime.sync_partition_roots(scope oid, below boolean)
returns integer
language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
declare
    d record;
    roots text;
    t name;
    op text;
    seen oid[] := '{}';
    more boolean := true;
    changed integer := 0;
begin
    while more loop
        more := false;
        for d in select x.* from realtime.partition_root_drift(scope, below) x
                 where not x.relid = any(seen) loop
            seen := seen || d.relid;
            more := true;
            if d.roots is not null and exists (
                   select 1 from pg_catalog.pg_trigger g
                   where g.tgrelid = d.relid and pg_catalog.left(g.tgname, 17) = 'switchboard_root_'
                     and g.tgfoid <> 'realtime.capture_for_roots()'::regprocedure) then
                raise warning 'switchboard: partition % is not captured for the captured table above it: another trigger is named switchboard_root_…',
                    d.relid::regclass;
                continue;
            end if;
            if not pg_catalog.has_table_privilege(d.relid, 'TRIGGER') then
                raise warning 'switchboard: partition % is not captured for the captured table above it: % may not make triggers on it',
                    d.relid::regclass, current_user;
                continue;
            end if;
            begin
                execute pg_catalog.format('lock table only %s in share row exclusive mode',
                                          d.relid::regclass);
                roots := null;
                select x.roots into roots from realtime.partition_root_drift(d.relid, false) x;
                continue when not found;
                -- Only what is wrong is dropped (a drop locks out readers too) and only
                -- what is missing is made.
                for t in select g.tgname from pg_catalog.pg_trigger g
                         where g.tgrelid = d.relid and g.tgparentid = 0
                           and g.tgfoid = 'realtime.capture_for_roots()'::regprocedure
                           and (roots is null or not realtime.root_trigger_is_right(g, roots)) loop
                    execute pg_catalog.format('drop trigger %I on %s', t, d.relid::regclass);
                end loop;
                if roots is not null then
                    foreach op in array array['insert', 'update', 'delete'] loop
                        continue when exists (
                            select 1 from pg_catalog.pg_trigger g
                            where g.tgrelid = d.relid and g.tgname = 'switchboard_root_' || op);
                        execute pg_catalog.format(
                            'create trigger %I after %s on %s referencing %s '
                            'for each statement execute function realtime.capture_for_roots(%L)',
                            'switchboard_root_' || op, op, d.relid::regclass,
                            case op when 'insert' then 'new table as switchboard_new'
                                    when 'update' then 'old table as switchboard_old new table as switchboard_new'
                                    else 'old table as switchboard_old' end,
                            roots);
                    end loop;
                end if;
                changed := changed + 1;
            exception when others then
                raise warning 'switchboard: could not % capture of partition % for the captured table above it: %',
                    case when d.roots is null then 'stop' else 'start' end, d.relid::regclass, sqlerrm;
            end;
        end loop;
    end loop;
    return changed;
end
$fn$;

revoke all on function realtime.sync_partition_roots(oid, boolean) from public;

-- sync_partition_roots, its failure a warning (so it never undoes what its caller did).
create or replace function realtime.sync_partitions_safely(scope oid, below boolean)
returns integer
language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
begin
    return realtime.sync_partition_roots(scope, below);
exception when others then
    raise warning 'switchboard: could not capture partitions for the captured tables above them: %', sqlerrm;
    return 0;
end
$fn$;

revoke all on function realtime.sync_partitions_safely(oid, boolean) from public;

-- capture_on / capture_off as before, then the partitions below that table (only the
-- owner calls them, so no grants move with the new functions).
alter function realtime.capture_on(regclass) rename to capture_on_058;
create function realtime.capture_on(tbl regclass) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $fn$
begin
    perform realtime.capture_on_058(tbl);
    perform realtime.sync_partition_roots(tbl, true);
end
$fn$;
revoke all on function realtime.capture_on(regclass) from public;

alter function realtime.capture_off(regclass) rename to capture_off_020;
create function realtime.capture_off(tbl regclass) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $fn$
begin
    perform realtime.capture_off_020(tbl);
    perform realtime.sync_partition_roots(tbl, true);
end
$fn$;
revoke all on function realtime.capture_off(regclass) from public;

-- The publication's part of the sync: 061's, with one change. A lock that someone else
-- has held for 500 ms no longer stops it: it warns, naming the session, and goes on
-- without it. Any role may take any advisory key, so a session holding this one kept
-- every table added to the publication from being captured (rows written to them were
-- never logged). Two syncs may overlap since 061 anyway; the lock only keeps them from
-- doing the same work at once.
create or replace function realtime.sync_publication_tables() returns integer
language plpgsql security definer set search_path = pg_catalog, pg_temp set lock_timeout = '500ms'
as $fn$
declare
    changed integer := 0;
    r record;
    p oid;
    deadline timestamptz;
    holder int;
begin
    -- A sync never runs inside another, so a lock this session holds now was left by one
    -- that failed where nothing could release it: release it.
    while realtime.holds_sync_lock() loop
        perform pg_catalog.pg_advisory_unlock(8314037285011469678);
    end loop;
    if not exists (select 1 from realtime.publication_drift())
       and not exists (select 1 from realtime.capture_sources s
                       where not exists (select 1 from pg_catalog.pg_class c
                                         where c.oid = s.relid and c.relkind in ('r', 'p')))
       and not exists (select 1 from realtime.partitions_on_statements()) then
        return 0;
    end if;
    -- Tried every 5 ms for up to 500 ms, never waited for in the lock manager (see 061).
    deadline := pg_catalog.clock_timestamp() + interval '500 ms';
    begin
        while not pg_catalog.pg_try_advisory_lock(8314037285011469678) loop
            if pg_catalog.clock_timestamp() >= deadline then
                select l.pid into holder from pg_catalog.pg_locks l
                where l.locktype = 'advisory' and l.classid = 1935762652
                  and l.database = (select d.oid from pg_catalog.pg_database d
                                    where d.datname = pg_catalog.current_database())
                  and l.objid = 1853240686 and l.objsubid = 1 and l.granted;
                raise warning 'switchboard: the publication sync''s lock has been held for 500 ms by session %; syncing without it',
                    coalesce(holder::text, '(gone)');
                exit;
            end if;
            perform pg_catalog.pg_sleep(0.005);
        end loop;
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
    exception when others or query_canceled then
        if realtime.holds_sync_lock() then
            perform pg_catalog.pg_advisory_unlock(8314037285011469678);
        end if;
        raise;
    end;
    if realtime.holds_sync_lock() then
        perform pg_catalog.pg_advisory_unlock(8314037285011469678);
    end if;
    return changed;
end
$fn$;

revoke all on function realtime.sync_publication_tables() from public;

-- What the hub runs: the publication's part, then every partition below a captured table
-- (also when nothing else drifted; its failure never undoes the publication's part).
create or replace function realtime.sync_publication() returns integer
language plpgsql security definer set search_path = pg_catalog, pg_temp set lock_timeout = '500ms'
as $fn$
begin
    return realtime.sync_publication_tables() + realtime.sync_partitions_safely(null, true);
end
$fn$;

-- What the event trigger runs at the end of any role's DDL, in its transaction: the
-- publication's part, then each table the DDL made or changed with everything below it,
-- and the tables above it (a new or attached partition is captured before anyone can
-- write to it, and a partitioned table that now has a foreign table below it loses its
-- triggers; drift elsewhere is left to the hub's sync, so one role's DDL locks nothing
-- outside the partition trees it touched). A detached partition keeps its triggers until the hub's next sync; they
-- log nothing meanwhile (it is no longer below the tables they name).
create or replace function realtime.publication_changed() returns event_trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp set lock_timeout = '500ms'
as $fn$
declare
    t oid;
    a oid;
begin
    perform realtime.sync_publication_tables();
    for t in select distinct c.objid from pg_catalog.pg_event_trigger_ddl_commands() c
             where c.classid = 'pg_catalog.pg_class'::regclass
               and c.object_type in ('table', 'foreign table') loop
        perform realtime.sync_partitions_safely(t, true);
        for a in select x.relid::oid from pg_catalog.pg_partition_ancestors(t) x
                 where x.relid::oid <> t loop
            perform realtime.sync_partitions_safely(a, false);
        end loop;
    end loop;
exception when others then
    raise warning 'switchboard: could not sync capture with publication supabase_realtime: %', sqlerrm;
end
$fn$;

-- The event trigger also fires for foreign tables: one created or attached as a partition
-- under a partitioned table with the triggers makes them go.
do $do$
begin
    if exists (select 1 from pg_catalog.pg_event_trigger where evtname = 'switchboard_publication_sync') then
        begin
            drop event trigger switchboard_publication_sync;
            create event trigger switchboard_publication_sync on ddl_command_end
                when tag in ('CREATE PUBLICATION', 'ALTER PUBLICATION', 'DROP PUBLICATION',
                             'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO',
                             'ALTER TABLE', 'DROP TABLE',
                             'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE')
                execute function realtime.publication_changed();
        exception when insufficient_privilege then
            raise notice 'switchboard: cannot replace the event trigger; foreign-table partitions are noticed at the hub''s next sync';
        end;
    end if;
end
$do$;

select realtime.sync_publication();
