// Land a paginated SaaS API into Postgres the Fivetran way: every object of
// every page is upserted into `landing.<object>` by its API id; an object
// that did not change leaves the row untouched (no new change reaches the
// lake). Runs with Node ≥ 18 (`npm install pg`) — the same code runs in a
// Supabase Edge Function or Deno with `import pg from "npm:pg"`.
//
//   DATABASE_URL=postgresql://… node loader.mjs --fixture fixture/    # recorded pages
//   DATABASE_URL=postgresql://… STRIPE_KEY=sk_… node loader.mjs       # the live API
//
// Pages are fetched with Stripe's cursor pagination (`has_more`,
// `starting_after`); one transaction per page, so a crash re-loads at most
// one page and never leaves half of one.
import { readFile, readdir } from "node:fs/promises";
import pg from "pg";

const SOURCE = process.env.LANDING_SOURCE ?? "stripe";

/** Upsert one page of payouts; returns how many rows changed. */
async function upsertPayouts(client, objects) {
  const res = await client.query(
    `INSERT INTO landing.payment_payouts
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
      WHERE landing.payment_payouts.payload IS DISTINCT FROM EXCLUDED.payload`,
    [SOURCE, JSON.stringify(objects)],
  );
  return res.rowCount;
}

/** Pages from recorded files (page-1.json, page-2.json, …), in order. */
async function* fixturePages(dir) {
  const files = (await readdir(dir)).filter((f) => /^page-\d+\.json$/.test(f));
  files.sort((a, b) => parseInt(a.slice(5)) - parseInt(b.slice(5)));
  for (const f of files) yield JSON.parse(await readFile(`${dir}/${f}`, "utf8"));
}

/** Pages from the live API, following the cursor. */
async function* apiPages(key) {
  let after = null;
  for (;;) {
    const url = new URL("https://api.stripe.com/v1/payouts");
    url.searchParams.set("limit", "100");
    if (after) url.searchParams.set("starting_after", after);
    const r = await fetch(url, { headers: { Authorization: `Bearer ${key}` } });
    if (!r.ok) throw new Error(`payouts page: HTTP ${r.status}`);
    const page = await r.json();
    yield page;
    if (!page.has_more || page.data.length === 0) return;
    after = page.data[page.data.length - 1].id;
  }
}

async function main() {
  const i = process.argv.indexOf("--fixture");
  const pages = i > 0 ? fixturePages(process.argv[i + 1]) : apiPages(process.env.STRIPE_KEY);
  const client = new pg.Client({ connectionString: process.env.DATABASE_URL });
  await client.connect();
  let seen = 0, changed = 0, n = 0;
  try {
    for await (const page of pages) {
      await client.query("BEGIN");
      changed += await upsertPayouts(client, page.data);
      await client.query("COMMIT");
      seen += page.data.length;
      n += 1;
    }
  } catch (e) {
    await client.query("ROLLBACK").catch(() => {});
    throw e;
  } finally {
    await client.end();
  }
  console.log(JSON.stringify({ pages: n, objects: seen, changed }));
}

main().catch((e) => {
  console.error(e.message);
  process.exit(1);
});
