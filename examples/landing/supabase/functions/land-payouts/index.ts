// Supabase Edge Function (Deno): land the provider's payouts on a schedule
// (pg_cron + pg_net calling this function) or from a webhook.
//
//   supabase secrets set STRIPE_KEY=sk_… LANDING_DATABASE_URL=postgresql://…
//   supabase functions deploy land-payouts
//
// The same code as the Node loader: landing.ts does the work.
import pg from "npm:pg@8";
import { landPayouts, stripePayouts } from "../../../landing.ts";

Deno.serve(async (_req: Request) => {
  const client = new pg.Client({ connectionString: Deno.env.get("LANDING_DATABASE_URL") });
  await client.connect();
  try {
    const summary = await landPayouts(
      client,
      stripePayouts(Deno.env.get("STRIPE_KEY") ?? ""),
      Deno.env.get("LANDING_SOURCE") ?? "stripe",
    );
    return Response.json(summary);
  } catch (e) {
    return Response.json({ error: String(e) }, { status: 500 });
  } finally {
    await client.end();
  }
});
