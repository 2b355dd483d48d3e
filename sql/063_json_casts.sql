-- The capture triggers turn rows into JSON with the rights of the role that ran the
-- migrations (SECURITY DEFINER, so writers need no rights on the log), and for a value
-- whose type has a cast to json Postgres calls that cast's function. Any role that owns
-- a type may create such a cast (`create cast (mood as json) with function ...`), so its
-- code ran with those rights whenever a captured row held that type: a table owner could
-- make itself superuser. An event trigger now refuses a cast to json or jsonb made by a
-- role that is not a superuser (a cast from a type of an extension, made as superuser,
-- is untouched), and migrating warns about casts already there whose function such a
-- role owns.
create or replace function realtime.refuse_json_casts() returns event_trigger
language plpgsql set search_path = pg_catalog, pg_temp as $fn$
declare
    c record;
begin
    if coalesce((select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user),
                false) then
        return;
    end if;
    for c in select d.object_identity
             from pg_catalog.pg_event_trigger_ddl_commands() d
             join pg_catalog.pg_cast k on k.oid = d.objid
             where d.classid = 'pg_catalog.pg_cast'::regclass
               and k.casttarget in ('pg_catalog.json'::regtype, 'pg_catalog.jsonb'::regtype) loop
        raise exception 'switchboard: only a superuser may create a cast to json or jsonb, not cast %: captured rows are turned into JSON with the rights of the role that ran the migrations',
            c.object_identity using errcode = 'insufficient_privilege';
    end loop;
end
$fn$;

do $do$
declare
    c record;
begin
    if not exists (select 1 from pg_catalog.pg_event_trigger where evtname = 'switchboard_json_casts') then
        begin
            create event trigger switchboard_json_casts on ddl_command_end
                when tag in ('CREATE CAST')
                execute function realtime.refuse_json_casts();
        exception when insufficient_privilege then
            raise notice 'switchboard: cannot create an event trigger; casts to json are not checked (the capture functions run with the rights of the role that ran the migrations, not a superuser)';
        end;
    end if;
    for c in select k.castsource::regtype as source, k.castfunc::regprocedure as func
             from pg_catalog.pg_cast k
             join pg_catalog.pg_proc p on p.oid = k.castfunc
             join pg_catalog.pg_roles r on r.oid = p.proowner
             where k.casttarget in ('pg_catalog.json'::regtype, 'pg_catalog.jsonb'::regtype)
               and not r.rolsuper loop
        raise warning 'switchboard: the cast from % to json runs %, which a role that is not a superuser owns: it runs with the migrating role''s rights when a captured row holds that type; drop it or give the function to a superuser',
            c.source, c.func;
    end loop;
end
$do$;
