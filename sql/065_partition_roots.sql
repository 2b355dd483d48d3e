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
-- statement's rows (same content, order and chunks of at most 100 rows as the other
-- statement triggers) under each listed table that is still above the partition, by the
-- name it has when they fire. Both are read from the current catalog, not the writer's
-- snapshot, as the trigger itself is: a REPEATABLE READ writer whose snapshot predates
-- the capture logs its rows all the same, a renamed table's rows carry its new name, and
-- a detached partition (or a restored database, whose oids differ) logs nothing until its
-- triggers are put right.
--
-- The partitions are kept in line by capture_on / capture_off and by sync_publication,
-- which the event trigger runs at the end of the DDL that creates, attaches or detaches a
-- partition, inside that DDL's transaction (so a new partition is never writable
-- uncaptured); the hub's periodic sync repairs what a failed one left. Finding what to
-- change reads pg_inherits and pg_trigger and locks nothing; only a partition whose
-- triggers change is locked (a sync waits at most 500 ms for it, realtime.enable as long
-- as the session allows), without the publication's lock.
-- Our triggers are told apart by their function, never by name alone: a trigger of
-- someone else's with one of these names is left alone (that partition is warned about
-- and not captured). Foreign-table partitions take no triggers (Postgres refuses
-- transition tables on them) and are not captured.
--
-- Still not captured: a partitioned table captured as itself that is also a partition
-- does not see rows written through its own parent (a statement's rows carry no
-- partition).

create or replace function realtime.capture_for_roots() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
declare
    root oid;
    ancestors oid[];
    names text[];
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
    ancestors := array(select a.relid::oid from pg_catalog.pg_partition_ancestors(tg_relid) a);
    foreach root in array pg_catalog.string_to_array(tg_argv[0], ',')::oid[] loop
        if not root = any(ancestors) then
            continue;
        end if;
        names := (select x.object_names
                  from pg_catalog.pg_identify_object_as_address('pg_catalog.pg_class'::regclass,
                                                                root, 0) x);
        if n <= 100 then
            insert into realtime.changes (schema_name, table_name, op, rows, old_rows)
            values (names[1], names[2], tg_op, new_rows, old_rows)
            returning * into l;
        else
            l := null;
            for k in 0 .. (n - 1) / 100 loop
                insert into realtime.changes (schema_name, table_name, op, rows, old_rows)
                values (names[1], names[2], tg_op,
                        realtime.json_slice(new_rows, k * 100, 100),
                        realtime.json_slice(old_rows, k * 100, 100));
            end loop;
        end if;
        if pg_catalog.pg_sequence_last_value('realtime.wake_until'::regclass)
               > (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint then
            perform realtime.wake_with(l.id, l.xid, l.created_at, tg_op, names[1], names[2],
                                       l.rows, l.old_rows);
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

-- Partitions whose triggers differ from what they should be: `roots` is the argument
-- they should have (the captured tables above, nearest first), or null when they should
-- have none. Reads the catalog only; locks nothing.
create or replace function realtime.partition_root_drift()
returns table (relid oid, roots text)
language sql stable set search_path = pg_catalog, pg_temp as $fn$
    with recursive captured as (
        select t.tgrelid as root
        from pg_catalog.pg_trigger t
        join pg_catalog.pg_class c on c.oid = t.tgrelid
        where t.tgname = 'switchboard_capture_insert' and t.tgparentid = 0 and c.relkind = 'p'
    ), below (root, relid, depth) as (
        select r.root, i.inhrelid, 1
        from captured r join pg_catalog.pg_inherits i on i.inhparent = r.root
        where not i.inhdetachpending
        union all
        select b.root, i.inhrelid, b.depth + 1
        from below b join pg_catalog.pg_inherits i on i.inhparent = b.relid
        where not i.inhdetachpending
    ), wanted as (
        select b.relid, pg_catalog.string_agg(b.root::text, ',' order by b.depth) as roots
        from below b
        join pg_catalog.pg_class c on c.oid = b.relid and c.relkind in ('r', 'p')
        group by b.relid
    ), ours as (
        select t.tgrelid as relid, t.tgname, t.tgtype, t.tgargs
        from pg_catalog.pg_trigger t
        where t.tgfoid = 'realtime.capture_for_roots()'::regprocedure and t.tgparentid = 0
    )
    select w.relid, w.roots from wanted w
    where (select pg_catalog.count(*) from ours o
           where o.relid = w.relid
             and (o.tgname, o.tgtype) in (('switchboard_root_insert', 4::int2),
                                          ('switchboard_root_update', 16::int2),
                                          ('switchboard_root_delete', 8::int2))
             and o.tgargs = pg_catalog.convert_to(w.roots, 'UTF8') || '\x00'::bytea) <> 3
    union all
    select distinct o.relid, null::text from ours o
    where not exists (select 1 from wanted w where w.relid = o.relid)
$fn$;

revoke all on function realtime.partition_root_drift() from public;

-- Puts the partitions in line; returns how many it changed. It waits for a partition's
-- lock as long as its caller does: realtime.enable as long as the session's
-- lock_timeout allows, like the captured table's own triggers; a sync at most 500 ms,
-- after which it leaves that partition, with a warning, to the next sync.
create or replace function realtime.sync_partition_roots() returns integer
language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
declare
    d record;
    t name;
    op text;
    changed integer := 0;
begin
    for d in select * from realtime.partition_root_drift() loop
        begin
            -- Only what is wrong is dropped (a drop locks out readers too) and only what
            -- is missing is made.
            for t in select g.tgname from pg_catalog.pg_trigger g
                     where g.tgrelid = d.relid and g.tgparentid = 0
                       and g.tgfoid = 'realtime.capture_for_roots()'::regprocedure
                       and (d.roots is null
                            or g.tgargs <> pg_catalog.convert_to(d.roots, 'UTF8') || '\x00'::bytea
                            or (g.tgname, g.tgtype) not in (('switchboard_root_insert', 4::int2),
                                                            ('switchboard_root_update', 16::int2),
                                                            ('switchboard_root_delete', 8::int2))) loop
                execute pg_catalog.format('drop trigger %I on %s', t, d.relid::regclass);
            end loop;
            if d.roots is not null then
                foreach op in array array['insert', 'update', 'delete'] loop
                    continue when exists (
                        select 1 from pg_catalog.pg_trigger g
                        where g.tgrelid = d.relid and g.tgname = 'switchboard_root_' || op
                          and g.tgfoid = 'realtime.capture_for_roots()'::regprocedure);
                    execute pg_catalog.format(
                        'create trigger %I after %s on %s referencing %s '
                        'for each statement execute function realtime.capture_for_roots(%L)',
                        'switchboard_root_' || op, op, d.relid::regclass,
                        case op when 'insert' then 'new table as switchboard_new'
                                when 'update' then 'old table as switchboard_old new table as switchboard_new'
                                else 'old table as switchboard_old' end,
                        d.roots);
                end loop;
            end if;
            changed := changed + 1;
        exception when others then
            raise warning 'switchboard: could not % capture of partition % for the captured table above it: %',
                case when d.roots is null then 'stop' else 'start' end, d.relid::regclass, sqlerrm;
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

-- sync_publication as in 061, with two changes:
--   * then the partitions below captured tables (also when nothing else drifted; that
--     part needs no lock, and its failure never undoes the publication's part);
--   * a lock that someone else has held for 500 ms no longer stops the sync: it warns,
--     naming the session, and goes on without it. Any role may take any advisory key,
--     so a session holding this one kept every table added to the publication from
--     being captured (rows written to them were never logged). Two syncs may overlap
--     since 061 anyway; the lock only keeps them from doing the same work at once.
create or replace function realtime.sync_publication() returns integer
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
        return realtime.sync_partitions_safely();
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
    return changed + realtime.sync_partitions_safely();
end
$fn$;

-- sync_partition_roots, its failure a warning (so it never undoes what the caller did).
create or replace function realtime.sync_partitions_safely() returns integer
language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
begin
    return realtime.sync_partition_roots();
exception when others then
    raise warning 'switchboard: could not capture partitions for the captured tables above them: %', sqlerrm;
    return 0;
end
$fn$;

revoke all on function realtime.sync_partitions_safely() from public;

select realtime.sync_publication();
