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
-- Prepares the check of table `rel` for role `role_name` (as realtime.visibility_rule
-- builds it from the catalog, never text from the caller) as a statement named after its
-- text, parsed with this function's owner's rights, unless this session has it already;
-- returns the statement's name. Parsing only: a prepared statement is planned and run,
-- and its privileges checked, as whoever executes it.
create or replace function realtime.prepare_check(rel oid, role_name text) returns text
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $fn$
declare
    check_sql text;
    stmt text;
begin
    select r.check_sql into check_sql
      from realtime.visibility_rule(prepare_check.rel, prepare_check.role_name) r
     where r.mode = 'rls';
    if check_sql is null then
        raise exception 'no row-level security check of table % for role %',
            prepare_check.rel::regclass, pg_catalog.quote_ident(prepare_check.role_name);
    end if;
    stmt := 'switchboard_rlsp_' || pg_catalog.md5(check_sql);
    if not exists (select 1 from pg_catalog.pg_prepared_statements p where p.name = stmt) then
        execute pg_catalog.format('prepare %I(jsonb, jsonb) as %s', stmt, check_sql);
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
    ready text[] := '{}';
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
                -- (022's statements, `switchboard_rls_…`, were parsed by the hub).
                stmt := 'switchboard_rlsp_' || md5(c.check_sql);
                if not stmt = any(ready) then
                    if not exists (select 1 from pg_catalog.pg_prepared_statements p where p.name = stmt) then
                        stmt := realtime.prepare_check(c.rel, c.role_name);
                    end if;
                    ready := ready || stmt;
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
                    -- as whoever runs it: parse it again as the owner and run it once more
                    -- (a subscriber without a right the check needs fails again, below).
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

