// Land a paginated SaaS API into Postgres the Fivetran way: every object of
// every page is upserted into `landing.<object>` by its API id, and only
// when it changed, so reloading a page writes nothing and nothing reaches
// the lake. One transaction per page: a crash re-loads at most one page
// and never leaves half of one.
//
// No imports: the Postgres client comes from the caller, `pg` under Node
// (loader.ts) or `npm:pg` in a Supabase Edge Function / Deno
// (supabase/functions/land-payouts/index.ts).

/** What this module needs of a Postgres client (`pg.Client` has it). */
export interface Queryable {
  query(sql: string, params?: unknown[]): Promise<{ rowCount: number | null }>;
}

/** One page of a Stripe-style list endpoint. */
export interface Page<T> {
  has_more: boolean;
  data: T[];
}

/** A payout as the provider's API returns it (amount in cents). */
export interface Payout {
  id: string;
  amount: number;
  currency: string;
  arrival_date: number;
  status: string;
}

const UPSERT_PAYOUTS = `
  INSERT INTO landing.payment_payouts
         (id, _source, _loaded_at, payload, amount, currency, arrival_date, status)
  SELECT o->>'id', $1, now(), o,
         (o->>'amount')::numeric / 100, upper(o->>'currency'),
         to_timestamp((o->>'arrival_date')::bigint)::date, o->>'status'
    FROM jsonb_array_elements($2::jsonb) AS o
  ON CONFLICT (id) DO UPDATE
     SET _source = EXCLUDED._source, _loaded_at = EXCLUDED._loaded_at,
         payload = EXCLUDED.payload, amount = EXCLUDED.amount,
         currency = EXCLUDED.currency, arrival_date = EXCLUDED.arrival_date,
         status = EXCLUDED.status
   WHERE landing.payment_payouts.payload IS DISTINCT FROM EXCLUDED.payload`;

/** What a load did. */
export interface LoadSummary {
  pages: number;
  objects: number;
  changed: number;
}

/** Upsert every page; one transaction each. */
export async function landPayouts(
  client: Queryable,
  pages: AsyncIterable<Page<Payout>>,
  source: string,
): Promise<LoadSummary> {
  const summary: LoadSummary = { pages: 0, objects: 0, changed: 0 };
  for await (const page of pages) {
    await client.query("BEGIN");
    try {
      const res = await client.query(UPSERT_PAYOUTS, [source, JSON.stringify(page.data)]);
      await client.query("COMMIT");
      summary.changed += res.rowCount ?? 0;
    } catch (e) {
      await client.query("ROLLBACK").catch(() => {});
      throw e;
    }
    summary.pages += 1;
    summary.objects += page.data.length;
  }
  return summary;
}

/** Pages of Stripe's payouts endpoint, following its cursor. */
export async function* stripePayouts(key: string): AsyncGenerator<Page<Payout>> {
  let after: string | null = null;
  for (;;) {
    const url = new URL("https://api.stripe.com/v1/payouts");
    url.searchParams.set("limit", "100");
    if (after) url.searchParams.set("starting_after", after);
    const r = await fetch(url, { headers: { Authorization: `Bearer ${key}` } });
    if (!r.ok) throw new Error(`payouts page: HTTP ${r.status}`);
    const page = (await r.json()) as Page<Payout>;
    yield page;
    if (!page.has_more || page.data.length === 0) return;
    after = page.data[page.data.length - 1].id;
  }
}
