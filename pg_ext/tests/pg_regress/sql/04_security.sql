-- The trust boundary, attacked: user text never becomes SQL text in the
-- extension owner's context, and no API function can be made to tokenize
-- differently from how its text was checked.
\c - medallion_test_admin

-- Every SECURITY DEFINER function pins search_path and standard_conforming_strings.
SELECT count(*) > 20 AS definer_functions FROM pg_proc
 WHERE pronamespace = 'medallion'::regnamespace AND prosecdef;
SELECT p.oid::regprocedure AS unpinned FROM pg_proc p
 WHERE p.pronamespace = 'medallion'::regnamespace AND p.prosecdef
   AND NOT (coalesce(p.proconfig, '{}') @> ARRAY['standard_conforming_strings=on']
            AND EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%'));
-- Nothing in the schema is executable by PUBLIC.
SELECT p.oid::regprocedure AS public_function FROM pg_proc p
 WHERE p.pronamespace = 'medallion'::regnamespace AND has_function_privilege('public', p.oid, 'EXECUTE');

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
