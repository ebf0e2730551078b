-- The trust boundary, attacked: user text never becomes SQL text in the
-- extension owner's context, and no API function can be made to tokenize
-- differently from how its text was checked.
\c - medallion_test_admin

-- Every SECURITY DEFINER function, and every invoker function that checks
-- its caller and then acts as the extension owner (add_source, add_sources,
-- enable_audit), pins search_path and standard_conforming_strings.
SELECT count(*) > 20 AS definer_functions FROM pg_proc
 WHERE pronamespace = 'medallion'::regnamespace AND prosecdef;
SELECT p.oid::regprocedure AS unpinned FROM pg_proc p
 WHERE p.pronamespace = 'medallion'::regnamespace
   AND (p.prosecdef OR p.proname IN ('add_source', 'add_sources', 'enable_audit', 'row_as_of',
                                     'audit_history', 'audit_diff', 'install_package',
                                     'upgrade_package', 'uninstall_package'))
   AND NOT (coalesce(p.proconfig, '{}') @> ARRAY['standard_conforming_strings=on']
            AND EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%'));
-- Those read their caller: they are not definer functions.
SELECT p.proname, p.prosecdef FROM pg_proc p
 WHERE p.pronamespace = 'medallion'::regnamespace
   AND p.proname IN ('add_source', 'add_sources', 'enable_audit', 'row_as_of', 'audit_history', 'audit_diff',
                     'install_package', 'upgrade_package', 'uninstall_package')
 ORDER BY 1;
-- Nothing in the schema is executable by PUBLIC.
SELECT p.oid::regprocedure AS public_function FROM pg_proc p
 WHERE p.pronamespace = 'medallion'::regnamespace AND has_function_privilege('public', p.oid, 'EXECUTE');

-- Every trigger and event-trigger function resolves names and operators in
-- pg_catalog only, whatever search_path its caller runs with.
SELECT p.oid::regprocedure AS unpinned_trigger_function FROM pg_proc p
 WHERE p.pronamespace = 'medallion'::regnamespace
   AND p.prorettype IN ('trigger'::regtype, 'event_trigger'::regtype)
   AND NOT coalesce(p.proconfig, '{}') @> ARRAY['search_path=pg_catalog, pg_temp'];
SELECT count(*) > 2 AS trigger_functions FROM pg_proc
 WHERE pronamespace = 'medallion'::regnamespace AND prorettype IN ('trigger'::regtype, 'event_trigger'::regtype);
-- The Rust row triggers (invoker, fixed SQL texts only) pin exactly that:
-- one setting saved and restored per audited row.
SELECT p.proname, p.prosecdef, p.proconfig FROM pg_proc p
 WHERE p.pronamespace = 'medallion'::regnamespace AND p.proname IN ('audit_capture', 'audit_guard')
 ORDER BY 1;

-- The tokenizer attack: under standard_conforming_strings = off a backslash
-- escapes a quote, so this filter would end ALTER PUBLICATION's WHERE clause
-- and run DROP TABLE as the extension owner. Inside add_source the setting
-- is pinned on: Postgres parses it as one harmless expression of two literals.
SET standard_conforming_strings = off;
SELECT err($$SELECT medallion.add_source('public.res_partner',
    row_filter => $q$id > 1 OR 'x\' = ') ; DROP TABLE public.secret; --'$q$)$$);
SELECT tablename, rowfilter FROM pg_publication_tables WHERE pubname = 'medallion' AND tablename = 'res_partner';
RESET standard_conforming_strings;
\c - postgres
SELECT to_regclass('public.secret') IS NOT NULL AS secret_still_there;
\c - medallion_test_admin

-- Text that is not exactly one expression to Postgres is refused (42601).
SELECT err($$SELECT medallion.add_source('public.res_partner', row_filter => 'id > 1) ; DROP TABLE public.secret; --')$$);
SELECT err($$SELECT medallion.add_source('public.res_partner', row_filter => 'true; DROP TABLE public.secret')$$);
SELECT err($$SELECT medallion.add_source('public.res_partner', row_filter => 'id FROM public.secret')$$);
SELECT err($$SELECT medallion.add_source('public.res_partner', row_filter => 'id > 1 --')$$);
-- Postgres nests block comments: all of this after `id = 1` is one comment.
SELECT err($$SELECT medallion.add_source('public.res_partner', row_filter => $q$id = 1 /* /* */ ) ; DROP TABLE public.secret; -- */$q$)$$);
SELECT tablename, rowfilter FROM pg_publication_tables WHERE pubname = 'medallion' AND tablename = 'res_partner';
SELECT err($$SELECT medallion.add_source('public.res_partner', row_filter => $q$id = 1 $x$ ) ; DROP TABLE public.secret; $x$ $q$)$$);
\c - postgres
SELECT to_regclass('public.secret') IS NOT NULL AS secret_still_there;
\c - medallion_test_admin
SELECT tablename, rowfilter FROM pg_publication_tables WHERE pubname = 'medallion' AND tablename = 'res_partner';
-- back to no filter for the tests after this one
SELECT medallion.add_source('public.res_partner');

