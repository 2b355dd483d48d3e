-- A row-scope check is prepared as the subscriber's role, not the hub's. The check embeds
-- the table's policies, and Postgres looks names up (and checks USAGE on their schemas)
-- when it parses: prepared as a hub that is not a superuser (`authenticator`, which has
-- no USAGE on `auth` in a Supabase project), every policy left to Postgres that calls
-- `auth.uid()` (or names any schema only the subscribers may use) failed for every
-- subscriber, so none of them received anything from that table. The statement's name
-- now includes the role, since what a name resolves to depends on who parsed it.
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
                perform set_config('request.jwt.claims', c.claims, true),
                        set_config('request.jwt.claim.sub',
                                   coalesce(c.claims::jsonb ->> 'sub', ''), true),
                        set_config('request.jwt.claim.role', c.role_name, true),
                        set_config('role', c.role_name, true);
                -- Prepared once per session, role and text (a policy change changes the
                -- text, hence the name), so repeated checks skip planning.
                stmt := 'switchboard_rls_' || md5(c.role_name || pg_catalog.chr(1) || c.check_sql);
                if not stmt = any(ready) then
                    if not exists (select 1 from pg_catalog.pg_prepared_statements p where p.name = stmt) then
                        execute format('prepare %I(jsonb, jsonb) as %s', stmt, c.check_sql);
                    end if;
                    ready := ready || stmt;
                end if;
                execute format('execute %I(%L, %L)', stmt, c.rec, c.old) into v, ov;
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

