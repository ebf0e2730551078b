// The landing loader as a command (Node >= 22.18 or 24 runs TypeScript as
// is; `npm install pg`):
//
//   DATABASE_URL=postgresql://… STRIPE_KEY=sk_… node loader.ts            # the live API
//   DATABASE_URL=postgresql://… node loader.ts --fixture fixture/          # recorded pages
//
// Prints one JSON line: {"pages", "objects", "changed"}.
import { readFile, readdir } from "node:fs/promises";
import pg from "pg";
import { landPayouts, stripePayouts, type Page, type Payout } from "./landing.ts";

/** Pages from recorded files (page-1.json, page-2.json, …), in order. */
async function* fixturePages(dir: string): AsyncGenerator<Page<Payout>> {
  const files = (await readdir(dir)).filter((f) => /^page-\d+\.json$/.test(f));
  files.sort((a, b) => parseInt(a.slice(5)) - parseInt(b.slice(5)));
  for (const f of files) yield JSON.parse(await readFile(`${dir}/${f}`, "utf8"));
}

const i = process.argv.indexOf("--fixture");
const pages = i > 0 ? fixturePages(process.argv[i + 1]) : stripePayouts(process.env.STRIPE_KEY ?? "");
const client = new pg.Client({ connectionString: process.env.DATABASE_URL });
await client.connect();
try {
  const summary = await landPayouts(client, pages, process.env.LANDING_SOURCE ?? "stripe");
  console.log(JSON.stringify(summary));
} finally {
  await client.end();
}
