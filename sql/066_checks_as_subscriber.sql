drop function if exists realtime.prepare_check(text, text);

-- A row-scope check is parsed as the owner of the `realtime` schema's functions (the role
-- that migrated it), not as the hub. The check embeds the table's policies, and Postgres
-- looks names up (and checks USAGE on their schemas) when it parses, where its own RLS
-- uses policies parsed when they were created and checks no schema USAGE at all. Parsed
-- as a hub that is not a superuser (`authenticator`, which has no USAGE on `auth` in a
-- Supabase project), every policy left to Postgres that called `auth.uid()`, or a helper
-- in a schema only the table's owner may use (`private.is_member()`, as Supabase's docs
-- advise), failed for every subscriber, so none of them received anything from that
-- table. The check still runs as the subscriber, with its claims.
--
-- As in 040, except whose membership counts: the session's login (the hub), which is
-- whom Postgres asks when it sets a role, rather than `current_user`, which inside
-- realtime.prepare_check below is that function's owner.
create or replace function realtime.visibility_rule(rel oid, role_name text)
returns table (mode text, columns text[], check_sql text)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $fn$
declare
    viewer record;
    tbl record;
    cols text[];
    permissive text;
    restrictive text;
    expr text;
begin
    select r.oid, r.rolsuper or r.rolbypassrls as bypass
      into viewer from pg_roles r where r.rolname = role_name;
    if not found or not pg_has_role(session_user, viewer.oid, 'MEMBER') then
        return query select 'deny', null::text[], null::text;
        return;
    end if;

    select c.relname, n.nspname, c.relnamespace, c.relowner, c.relrowsecurity, c.relforcerowsecurity
      into tbl
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.oid = rel;
    if not found or not has_schema_privilege(viewer.oid, tbl.relnamespace, 'USAGE') then
        return query select 'deny', null::text[], null::text;
        return;
    end if;

    if not has_table_privilege(viewer.oid, rel, 'SELECT') then
        select array_agg(a.attname::text order by a.attnum) into cols
          from pg_attribute a
         where a.attrelid = rel and a.attnum > 0 and not a.attisdropped
           and has_column_privilege(viewer.oid, rel, a.attnum, 'SELECT');
        -- Nothing selectable, or a primary-key column hidden: send nothing.
        if cols is null or exists (
            select 1
              from pg_index i
              join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
             where i.indrelid = rel and i.indisprimary
               and not has_column_privilege(viewer.oid, rel, a.attnum, 'SELECT')
        ) then
            return query select 'deny', null::text[], null::text;
            return;
        end if;
    end if;

    if not tbl.relrowsecurity
       or viewer.bypass
       or (not tbl.relforcerowsecurity and pg_has_role(viewer.oid, tbl.relowner, 'USAGE')) then
        return query select 'all', cols, null::text;
        return;
    end if;

    select string_agg('(' || pg_get_expr(p.polqual, p.polrelid) || ')', ' or ' order by p.polname)
               filter (where p.polpermissive),
           string_agg('(' || pg_get_expr(p.polqual, p.polrelid) || ')', ' and ' order by p.polname)
               filter (where not p.polpermissive)
      into permissive, restrictive
      from pg_policy p
     where p.polrelid = rel
       and p.polcmd in ('r', '*')
       and p.polqual is not null
       and (0::oid = any(p.polroles)
            or exists (select 1 from unnest(p.polroles) pr(oid)
                        where pg_has_role(viewer.oid, pr.oid, 'USAGE')));
    -- No applicable permissive policy: RLS shows nothing.
    if permissive is null then
        return query select 'deny', null::text[], null::text;
        return;
    end if;

    expr := '(' || permissive || ')' || coalesce(' and ' || restrictive, '');
    return query select 'rls', cols, format(
        'select coalesce((select %1$s from jsonb_populate_record(null::%2$I.%3$I, $1) as %3$I), false), '
        'case when $2 is null then false '
        'else coalesce((select %1$s from jsonb_populate_record(null::%2$I.%3$I, $2) as %3$I), false) end',
        expr, tbl.nspname, tbl.relname);
end
$fn$;

revoke all on function realtime.visibility_rule(oid, text) from public;

-- The text a check of `check_sql` is prepared with as statement `stmt`.
create or replace function realtime.check_statement(stmt text, check_sql text) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $fn$
    select pg_catalog.format('prepare %I(jsonb, jsonb) as %s', stmt, check_sql)
$fn$;
revoke all on function realtime.check_statement(text, text) from public;

-- Prepares the check of table `rel` for role `role_name` (as realtime.visibility_rule
-- builds it from the catalog, never text from the caller) as a statement named after its
-- text, parsed with this function's owner's rights, unless this session holds exactly
-- that statement already (a statement of the same name with other text, which any code
-- running in the session may prepare, is replaced); returns the statement's name.
-- Parsing only: a prepared statement is planned and run, and its privileges checked, as
-- whoever executes it.
create or replace function realtime.prepare_check(rel oid, role_name text) returns text
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $fn$
declare
    check_sql text;
    stmt text;
    held text;
begin
    select r.check_sql into check_sql
      from realtime.visibility_rule(prepare_check.rel, prepare_check.role_name) r
     where r.mode = 'rls';
    if check_sql is null then
        raise exception 'no row-level security check of table % for role %',
            prepare_check.rel::regclass, pg_catalog.quote_ident(prepare_check.role_name);
    end if;
    stmt := 'switchboard_rlsp_' || pg_catalog.md5(check_sql);
    select p.statement into held from pg_catalog.pg_prepared_statements p where p.name = stmt;
    if held is distinct from realtime.check_statement(stmt, check_sql) then
        if held is not null then
            execute pg_catalog.format('deallocate %I', stmt);
        end if;
        execute realtime.check_statement(stmt, check_sql);
    end if;
    return stmt;
end
$fn$;
revoke all on function realtime.prepare_check(oid, text) from public;

-- As in 064, and the hub may prepare checks.
alter function realtime.grant_hub(text) rename to grant_hub_064;
create function realtime.grant_hub(hub text) returns void
language plpgsql volatile set search_path = pg_catalog, pg_temp as $fn$
begin
    perform realtime.grant_hub_064(hub);
    execute pg_catalog.format(
        'grant execute on function realtime.prepare_check(oid, text) to %I', hub);
    execute pg_catalog.format(
        'grant execute on function realtime.check_statement(text, text) to %I', hub);
end
$fn$;
revoke all on function realtime.grant_hub(text) from public;

-- Otherwise as in 022.
create or replace function realtime.visible_to(
    item_rel oid[],
    item_row jsonb[],
    item_old jsonb[],
    check_item int[],
    check_role text[],
    check_claims text[])
returns table (check_no int, visible bool, old_visible bool, columns text[], problem text)
language plpgsql volatile
-- The search path the checks are prepared under: a prepared statement run under another
-- is parsed again, as whoever runs it.
set search_path = pg_catalog, pg_temp
as $fn$
#variable_conflict use_column
declare
    saved_role text := current_setting('role');
    saved_claims text := coalesce(current_setting('request.jwt.claims', true), '');
    saved_sub text := coalesce(current_setting('request.jwt.claim.sub', true), '');
    saved_claim_role text := coalesce(current_setting('request.jwt.claim.role', true), '');
    c record;
    stmt text;
    held text;
    retried text[] := '{}';
    v bool;
    ov bool;
begin
    -- Policies may call functions; none of them may change anything here.
    perform set_config('transaction_read_only', 'on', true);
    for c in
        with item as (
            select i, rel, rec, old
              from unnest(item_rel, item_row, item_old) with ordinality as u(rel, rec, old, i)
        ),
        chk as (
            select n, item.rel, item.rec, item.old, u.role_name, u.claims
              from unnest(check_item, check_role, check_claims) with ordinality
                   as u(item_no, role_name, claims, n)
              join item on item.i = u.item_no
        ),
        rule as materialized (
            select p.rel, p.role_name, r.mode, r.columns, r.check_sql
              from (select distinct rel, role_name from chk) p
             cross join lateral realtime.visibility_rule(p.rel, p.role_name) r
        )
        select chk.n, chk.rel, chk.role_name, chk.claims, chk.rec, chk.old,
               rule.mode, rule.columns, rule.check_sql
          from chk
          join rule on rule.rel = chk.rel and rule.role_name = chk.role_name
         order by chk.n
    loop
        check_no := c.n;
        columns := c.columns;
        visible := false;
        old_visible := false;
        problem := null;
        if c.rec is null or c.mode = 'deny' then
            null;
        elsif c.mode = 'all' then
            visible := true;
            old_visible := c.old is not null;
        else
            begin
                -- Prepared once per session and text (a policy change changes the text,
                -- hence the name), so repeated checks skip parsing; parsed by the owner
                -- (022's statements, `switchboard_rls_…`, were parsed by the hub). The
                -- statement held under that name is compared with the check's text before
                -- every run: code that ran in this session (another table's policy,
                -- during its check) may have prepared one of its own under that name.
                stmt := 'switchboard_rlsp_' || md5(c.check_sql);
                select p.statement into held
                  from pg_catalog.pg_prepared_statements p where p.name = stmt;
                if held is distinct from realtime.check_statement(stmt, c.check_sql) then
                    stmt := realtime.prepare_check(c.rel, c.role_name);
                end if;
                perform set_config('request.jwt.claims', c.claims, true),
                        set_config('request.jwt.claim.sub',
                                   coalesce(c.claims::jsonb ->> 'sub', ''), true),
                        set_config('request.jwt.claim.role', c.role_name, true),
                        set_config('role', c.role_name, true);
                begin
                    execute format('execute %I(%L, %L)', stmt, c.rec, c.old) into v, ov;
                exception when insufficient_privilege then
                    -- A statement whose table changed is parsed again when it next runs,
                    -- as whoever runs it: parse it again as the owner and run it once
                    -- more, once per statement and role in a call (a check that reads a
                    -- table with row-level security is parsed again as every role that
                    -- runs it, and fails again below if that role may not use a schema
                    -- the policies name).
                    if stmt || pg_catalog.chr(1) || c.role_name = any(retried) then
                        raise;
                    end if;
                    retried := retried || (stmt || pg_catalog.chr(1) || c.role_name);
                    perform set_config('role', saved_role, true);
                    execute format('deallocate %I', stmt);
                    stmt := realtime.prepare_check(c.rel, c.role_name);
                    perform set_config('role', c.role_name, true);
                    execute format('execute %I(%L, %L)', stmt, c.rec, c.old) into v, ov;
                end;
                perform set_config('role', saved_role, true);
                visible := v;
                old_visible := ov;
            exception when others then
                visible := false;
                old_visible := false;
                problem := realtime.policy_problem(c.rel, c.role_name, c.claims, c.rec, c.old, sqlerrm);
            end;
        end if;
        return next;
    end loop;
    perform set_config('role', saved_role, true),
            set_config('request.jwt.claims', saved_claims, true),
            set_config('request.jwt.claim.sub', saved_sub, true),
            set_config('request.jwt.claim.role', saved_claim_role, true);
end
$fn$;

