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
-- Upkeep (realtime.sync_partition_roots): finding what to change reads pg_inherits and
-- pg_trigger and locks nothing; our triggers are told apart by their function, and a
-- captured table by its capture trigger's function, never by name alone. Only a partition
-- whose triggers change is locked, and only after what would refuse the change (another
-- trigger with one of the names, no right to make triggers) has been checked and warned
-- about. It runs
--   * in realtime.enable / disable (capture_on / capture_off), for that table's tree;
--   * in the event trigger at the end of any role's DDL, inside that DDL's transaction,
--     for the tables the DDL made or changed (so a partition created or attached under a
--     captured table is captured before anyone can write to it);
--   * in the hub's sync (at start and every 5 s), for every partition.
-- Not captured:
--   * foreign-table partitions (no triggers on them), and statements that name a
--     partitioned table with a foreign table below it (Postgres would refuse transition
--     tables for a statement through it that reaches the foreign table, so it takes no
--     triggers; its other partitions do);
--   * until the next sync: a partition made by DDL that runs at REPEATABLE READ (the
--     event trigger reads the catalog through its snapshot), one made without the event
--     trigger (migrations run by a non-superuser), and, after a restore from a dump, every
--     partition (its triggers name the old oids, so they log nothing);
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

-- Partitions at or below `scope` (every partition when null) whose triggers differ from
-- what they should be: `roots` is the argument they should have (the captured tables
-- above, nearest first), or null when they should have none. A table is captured when it
-- has 058's insert trigger (by its function: a trigger of that name on another function
-- is not capture). A partitioned table with a foreign table anywhere below it takes no
-- triggers: Postgres refuses transition tables for a statement that reaches a foreign
-- table through it. A partition whose detach is pending is left as it is until the
-- detach is done. Reads the catalog only; locks nothing.
create or replace function realtime.partition_root_drift(scope oid)
returns table (relid oid, roots text)
language sql stable set search_path = pg_catalog, pg_temp as $fn$
    with recursive captured as (
        select t.tgrelid as root
        from pg_catalog.pg_trigger t
        join pg_catalog.pg_class c on c.oid = t.tgrelid
        where t.tgfoid = 'realtime.capture_insert()'::regprocedure and t.tgparentid = 0
          and c.relkind = 'p'
    ), below (root, relid, depth) as (
        select r.root, i.inhrelid, 1
        from captured r join pg_catalog.pg_inherits i on i.inhparent = r.root
        where not i.inhdetachpending
        union all
        select b.root, i.inhrelid, b.depth + 1
        from below b join pg_catalog.pg_inherits i on i.inhparent = b.relid
        where not i.inhdetachpending
    ), above_foreign (relid) as (
        select i.inhparent
        from pg_catalog.pg_inherits i
        join pg_catalog.pg_class c on c.oid = i.inhrelid and c.relkind = 'f'
        union
        select i.inhparent from above_foreign a join pg_catalog.pg_inherits i on i.inhrelid = a.relid
    ), in_scope (relid) as (
        select scope where scope is not null
        union all
        select i.inhrelid from in_scope s join pg_catalog.pg_inherits i on i.inhparent = s.relid
    ), wanted as (
        select b.relid, pg_catalog.string_agg(b.root::text, ',' order by b.depth) as roots
        from below b
        join pg_catalog.pg_class c on c.oid = b.relid
        where c.relkind = 'r'
           or (c.relkind = 'p' and not exists (select 1 from above_foreign a where a.relid = b.relid))
        group by b.relid
    ), ours as (
        select t.tgrelid as relid, t.tgname, t.tgtype, t.tgargs, t.tgenabled
        from pg_catalog.pg_trigger t
        where t.tgfoid = 'realtime.capture_for_roots()'::regprocedure and t.tgparentid = 0
    )
    select w.relid, w.roots from wanted w
    where (scope is null or exists (select 1 from in_scope s where s.relid = w.relid))
      and (select pg_catalog.count(*) from ours o
           where o.relid = w.relid and o.tgenabled <> 'D'
             and (o.tgname, o.tgtype) in (('switchboard_root_insert', 4::int2),
                                          ('switchboard_root_update', 16::int2),
                                          ('switchboard_root_delete', 8::int2))
             and o.tgargs = pg_catalog.convert_to(w.roots, 'UTF8')
                            || pg_catalog.decode('00', 'hex')) <> 3
    union all
    select distinct o.relid, null::text from ours o
    where (scope is null or exists (select 1 from in_scope s where s.relid = o.relid))
      and not exists (select 1 from wanted w where w.relid = o.relid)
      and not exists (select 1 from pg_catalog.pg_inherits i
                      where i.inhrelid = o.relid and i.inhdetachpending)
$fn$;

revoke all on function realtime.partition_root_drift(oid) from public;

-- Puts the partitions at or below `scope` (all when null) in line; returns how many it
-- changed. What it cannot do (another trigger has one of the names, no right to make
-- triggers on the partition) is warned about before any lock is asked for. A partition
-- is locked, then what it needs is read again (another session may have put it right
-- while this one waited), and drift is read again until nothing new turns up (a
-- partition committed while this one waited). It waits for a lock as long as its caller
-- does: realtime.enable as long as the session's lock_timeout allows, as for the captured
-- table's own triggers; a sync at most 500 ms a partition, after which it leaves that
-- partition, with a warning, to the next sync.
create or replace function realtime.sync_partition_roots(scope oid) returns integer
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
        for d in select x.* from realtime.partition_root_drift(scope) x
                 where not x.relid = any(seen) loop
            seen := seen || d.relid;
            more := true;
            if d.roots is not null and exists (
                   select 1 from pg_catalog.pg_trigger g
                   where g.tgrelid = d.relid and g.tgname like 'switchboard\_root\_%'
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
                select x.roots into roots from realtime.partition_root_drift(d.relid) x
                where x.relid = d.relid;
                continue when not found;
                -- Only what is wrong is dropped (a drop locks out readers too) and only
                -- what is missing is made.
                for t in select g.tgname from pg_catalog.pg_trigger g
                         where g.tgrelid = d.relid and g.tgparentid = 0
                           and g.tgfoid = 'realtime.capture_for_roots()'::regprocedure
                           and (roots is null or g.tgenabled = 'D'
                                or g.tgargs <> pg_catalog.convert_to(roots, 'UTF8')
                                               || pg_catalog.decode('00', 'hex')
                                or (g.tgname, g.tgtype) not in (('switchboard_root_insert', 4::int2),
                                                                ('switchboard_root_update', 16::int2),
                                                                ('switchboard_root_delete', 8::int2))) loop
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

revoke all on function realtime.sync_partition_roots(oid) from public;

-- sync_partition_roots, its failure a warning (so it never undoes what its caller did).
create or replace function realtime.sync_partitions_safely(scope oid) returns integer
language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
begin
    return realtime.sync_partition_roots(scope);
exception when others then
    raise warning 'switchboard: could not capture partitions for the captured tables above them: %', sqlerrm;
    return 0;
end
$fn$;

revoke all on function realtime.sync_partitions_safely(oid) from public;

-- capture_on / capture_off as before, then the partitions below that table (only the
-- owner calls them, so no grants move with the new functions).
alter function realtime.capture_on(regclass) rename to capture_on_058;
create function realtime.capture_on(tbl regclass) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $fn$
begin
    perform realtime.capture_on_058(tbl);
    perform realtime.sync_partition_roots(tbl);
end
$fn$;
revoke all on function realtime.capture_on(regclass) from public;

alter function realtime.capture_off(regclass) rename to capture_off_020;
create function realtime.capture_off(tbl regclass) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $fn$
begin
    perform realtime.capture_off_020(tbl);
    perform realtime.sync_partition_roots(tbl);
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
    return realtime.sync_publication_tables() + realtime.sync_partitions_safely(null);
end
$fn$;

-- What the event trigger runs at the end of any role's DDL, in its transaction: the
-- publication's part, then only the partitions at or below the tables the DDL made,
-- changed or locked outright (a new or attached partition is captured before anyone can
-- write to it, a detached one loses its triggers; other drift is left to the hub's sync,
-- so one role's DDL does not lock other tables until it commits).
create or replace function realtime.publication_changed() returns event_trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp set lock_timeout = '500ms'
as $fn$
declare
    t oid;
begin
    perform realtime.sync_publication_tables();
    for t in select c.objid from pg_catalog.pg_event_trigger_ddl_commands() c
             where c.classid = 'pg_catalog.pg_class'::regclass and c.object_type = 'table'
             union
             -- what the DDL locked outright: a new, attached or detached partition
             select l.relation from pg_catalog.pg_locks l
             where l.pid = pg_catalog.pg_backend_pid() and l.locktype = 'relation'
               and l.mode = 'AccessExclusiveLock' and l.granted
               and l.database = (select d.oid from pg_catalog.pg_database d
                                 where d.datname = pg_catalog.current_database()) loop
        perform realtime.sync_partitions_safely(t);
    end loop;
exception when others then
    raise warning 'switchboard: could not sync capture with publication supabase_realtime: %', sqlerrm;
end
$fn$;

select realtime.sync_publication();
