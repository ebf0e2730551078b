//! Audit end to end: parallel writers against one hash chain while the
//! sidecar's sealer runs, and the real Odoo 18 workload replayed through the
//! audit trigger (history and past states checked against the source).

use std::collections::HashMap;

use super::*;

/// A tiny deterministic generator (no extra dependency for the test).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_writers_yield_one_valid_chain() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE public.account_move (id serial PRIMARY KEY, name varchar, state varchar, \
            amount_total numeric, write_uid int, write_date timestamp); \
         INSERT INTO public.account_move (name, state, amount_total, write_uid, write_date) \
            SELECT 'INV/' || g, 'draft', g, 1, now() FROM generate_series(1, 200) g; \
         SELECT medallion.enable_audit('public.account_move');",
    );
    const WRITERS: u64 = 4;
    const TXNS: u64 = 250;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = env.client().await;
        writers.push(tokio::spawn(async move {
            let mut rng = Lcg(w + 1);
            let (mut committed, mut rolled_back) = (0u64, 0u64);
            for i in 0..TXNS {
                let id = 1 + rng.next(200) as i32;
                let abort = i % 7 == 3;
                let tag = if abort { "rolled-back" } else { "kept" };
                client.batch_execute("BEGIN").await.unwrap();
                client
                    .execute(
                        "UPDATE public.account_move SET amount_total = amount_total + 1, \
                            write_uid = $2, write_date = now() WHERE id = $1",
                        &[&id, &((w + 10) as i32)],
                    )
                    .await
                    .unwrap();
                client
                    .execute(
                        "INSERT INTO public.account_move (name, state, amount_total, write_uid) \
                         VALUES ($1, 'draft', 1, $2)",
                        &[&format!("{tag}/{w}/{i}"), &((w + 10) as i32)],
                    )
                    .await
                    .unwrap();
                if abort {
                    client.batch_execute("ROLLBACK").await.unwrap();
                    rolled_back += 1;
                } else {
                    client.batch_execute("COMMIT").await.unwrap();
                    committed += 1;
                }
            }
            (committed, rolled_back)
        }));
    }
    // The sidecar's sealer runs all the time, racing the writers.
    let sealer_client = env.client().await;
    let stop = CancellationToken::new();
    let sealer_stop = stop.clone();
    let sealer = tokio::spawn(async move {
        let mut sealed = 0i64;
        let mut rounds = 0;
        while !sealer_stop.is_cancelled() {
            sealed += medallion::audit::seal(&sealer_client)
                .await
                .expect("seal while writers run");
            rounds += 1;
            // VACUUM/ANALYZE invalidate the log's relcache entry under the
            // writers' feet (autovacuum does the same in production).
            if rounds % 5 == 0 {
                sealer_client
                    .batch_execute("VACUUM ANALYZE medallion.audit_log")
                    .await
                    .expect("vacuum the audit log while writers run");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (sealed, rounds)
    });
    let mut committed = 0;
    for w in writers {
        let (c, r) = w.await.unwrap();
        assert!(r > 0, "every writer rolled some transactions back");
        committed += c;
    }
    stop.cancel();
    let (sealed_live, rounds) = sealer.await.unwrap();
    assert!(
        rounds > 3,
        "the sealer ran while writers wrote ({rounds} rounds)"
    );
    assert!(sealed_live > 0, "records were sealed while writers wrote");

    assert!(committed > 0, "writers committed transactions");
    // One more change after the sealer stopped: a read-only verification
    // (which cannot seal) must report it unsealed, then verify_audit seals it.
    env.sql("UPDATE public.account_move SET amount_total = amount_total + 1, write_uid = 9 WHERE id = 1");
    let client = env.client().await;
    client.batch_execute("BEGIN READ ONLY").await.unwrap();
    let ro = client
        .query_one(
            "SELECT status, unsealed, concat_ws(' ', broken_seq, record_id, problem) \
               FROM medallion.verify_audit('public.account_move')",
            &[],
        )
        .await
        .expect("read-only verify_audit");
    client.batch_execute("COMMIT").await.unwrap();
    let direct = env.sql(
        "SELECT count(*) FROM medallion.audit_log l LEFT JOIN medallion.audit_seal s ON s.record_id = l.id \
          WHERE l.table_name = 'public.account_move' AND s.record_id IS NULL",
    );
    let (ro_status, ro_unsealed, ro_problem): (String, i64, String) =
        (ro.get(0), ro.get(1), ro.get(2));
    assert_eq!(ro_status, "OK", "read-only verify_audit: {ro_problem}");
    assert!(
        ro_unsealed >= 1,
        "the last change is unsealed before verify seals (unsealed by direct count: {}, \
         sealer: {})",
        direct.trim(),
        env.sql("SELECT row(s.*)::text FROM medallion.audit_sealer s")
            .trim()
    );
    assert_eq!(ro_unsealed.to_string(), direct.trim(), "unsealed count");
    let verify = env
        .sql("SELECT status, records, unsealed FROM medallion.verify_audit('public.account_move')");
    // Two records (UPDATE + INSERT) per committed transaction and the last
    // UPDATE, none of the rolled-back ones, every one sealed exactly once in
    // one gapless chain.
    let expected = 2 * committed + 1;
    assert_eq!(verify.trim(), format!("OK|{expected}|0"), "verify_audit");
    assert_eq!(
        env.sql(
            "SELECT count(*), count(DISTINCT xid), min(s.seq), max(s.seq), count(DISTINCT s.seq) \
             FROM medallion.audit_log l JOIN medallion.audit_seal s ON s.record_id = l.id \
             WHERE l.table_name = 'public.account_move'"
        )
        .trim(),
        format!("{expected}|{}|1|{expected}|{expected}", committed + 1)
    );
    assert_eq!(
        env.sql(
            "SELECT count(*) FROM medallion.audit_log WHERE new ->> 'name' LIKE 'rolled-back/%'"
        )
        .trim(),
        "0",
        "records of rolled-back transactions vanish with them"
    );
    // The trail accounts for every committed change: replaying the amount
    // deltas gives today's amounts.
    assert_eq!(
        env.sql(
            "SELECT count(*) FROM public.account_move m WHERE m.id <= 200 AND m.amount_total <> m.id + \
               (SELECT count(*) FROM medallion.audit_log l WHERE l.table_name = 'public.account_move' \
                  AND l.op = 'UPDATE' AND l.pk = jsonb_build_object('id', m.id))"
        )
        .trim(),
        "0"
    );
    // The chain's head is the last seal: one chain, never a fork or a gap.
    assert_eq!(
        env.sql("SELECT seq FROM medallion.audit_chain WHERE table_name = 'public.account_move'")
            .trim(),
        expected.to_string()
    );
}

/// Split W1 at the start of transaction block `n` ("-- txn n ...").
/// A writer whose transaction stays open across two seal passes, with no
/// later transaction completing before the first pass: a snapshot's `xmax`
/// (latest completed xid + 1) is then not above the writer's xid, so a horizon
/// taken from snapshots let the low-water mark pass its record while it was
/// uncommitted, and the record was never sealed ("inserted behind the
/// sealer", status BROKEN). Deterministic: it needs no load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_open_across_seal_passes_is_sealed_after_it_commits() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE public.account_move (id int PRIMARY KEY, amount_total numeric); \
         INSERT INTO public.account_move VALUES (1, 10), (2, 20); \
         SELECT medallion.enable_audit('public.account_move'); \
         SELECT medallion.seal_audit();",
    );
    let writer = env.client().await;
    writer.batch_execute("BEGIN").await.unwrap();
    writer
        .execute(
            "UPDATE public.account_move SET amount_total = amount_total + 1 WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    // Two passes while the writer is open: the first takes the next low
    // water (the writer's id is below it), the second would move to it.
    for _ in 0..2 {
        assert_eq!(env.sql("SELECT medallion.seal_audit()").trim(), "0");
    }
    let open = env.sql(
        "SELECT s.low_water < (SELECT last_value FROM medallion.audit_log_id_seq), s.pending_high IS NOT NULL \
           FROM medallion.audit_sealer s",
    );
    writer.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        open.trim(),
        "t|t",
        "the low-water mark stays below an uncommitted record while its transaction runs"
    );
    let verify = env.sql(
        "SELECT status, records, unsealed, concat_ws(' ', broken_seq, record_id, problem) \
           FROM medallion.verify_audit('public.account_move')",
    );
    assert_eq!(
        verify.trim(),
        "OK|1|0|",
        "verify_audit seals the late commit"
    );
    assert_eq!(
        env.sql(
            "SELECT l.op, l.new ->> 'amount_total' FROM medallion.audit_log l \
               JOIN medallion.audit_seal s ON s.record_id = l.id"
        )
        .trim(),
        "UPDATE|11"
    );
}

fn split_w1(dir: &std::path::Path, n: usize) -> (String, String) {
    let out = Command::new("gunzip")
        .arg("-c")
        .arg(dir.join("w1.sql.gz"))
        .output()
        .expect("gunzip w1.sql.gz");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("w1 is UTF-8");
    let marker = format!("\n-- txn {n} ");
    let at = text.find(&marker).expect("transaction block marker in w1") + 1;
    let (a, b) = text.split_at(at);
    (a.to_string(), format!("\\set ON_ERROR_STOP on\n{b}"))
}

fn replay(env: &Env, dir: &std::path::Path, sql: &str, name: &str) {
    let path = dir.join(name);
    std::fs::write(&path, sql).unwrap();
    env.cluster
        .psql(&env.db, &["-o", "/dev/null", "-f", path.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("replay {name}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_odoo_18_audit_trail_matches_the_source() {
    let Some(dir) = medallion_tests::shared::odoo18_dir() else {
        return;
    };
    let env = Env::real_odoo(&dir);
    let tables = ["account_move", "account_move_line", "res_partner"];
    for t in tables {
        assert_eq!(
            env.sql(&format!("SELECT medallion.enable_audit('public.{t}')"))
                .trim(),
            "t"
        );
    }
    // First half of the business day, a snapshot of the three tables, then
    // the second half.
    let (first, second) = split_w1(&dir, 270);
    let work = env.lake.path();
    replay(&env, work, &first, "w1a.sql");
    for t in tables {
        env.sql(&format!(
            "CREATE TABLE public.snap_{t} AS SELECT * FROM public.{t}"
        ));
    }
    let t_mid = env.sql("SELECT clock_timestamp()").trim().to_string();
    replay(&env, work, &second, "w1b.sql");

    // Nothing sealed the trail yet: a read-only verification reports every
    // record unsealed; verify_audit then seals them all.
    let client = env.client().await;
    client.batch_execute("BEGIN READ ONLY").await.unwrap();
    let ro = client
        .query(
            "SELECT v.table_name, v.status, v.unsealed, \
                    (SELECT count(*) FROM medallion.audit_log l WHERE l.table_name = v.table_name) \
               FROM medallion.verify_audit() v ORDER BY 1",
            &[],
        )
        .await
        .expect("read-only verify_audit");
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(ro.len(), 3);
    for r in &ro {
        let (t, st, unsealed, records): (String, String, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        assert_eq!(st, "OK", "{t}");
        assert!(
            records > 0 && unsealed == records,
            "{t}: {unsealed} of {records} unsealed"
        );
    }
    let verify = env.sql(
        "SELECT table_name || ' ' || status || ' ' || unsealed FROM medallion.verify_audit() ORDER BY 1",
    );
    assert_eq!(
        verify.trim(),
        "public.account_move OK 0\npublic.account_move_line OK 0\npublic.res_partner OK 0"
    );

    let stats: HashMap<String, (i64, i64, i64)> = std::fs::read_to_string(dir.join("stats_w1.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Some((
                f[0].to_string(),
                (f[1].parse().ok()?, f[2].parse().ok()?, f[3].parse().ok()?),
            ))
        })
        .collect();
    for t in tables {
        let (ins, upd, del) = stats[t];
        let counts = env.sql(&format!(
            "SELECT count(*) FILTER (WHERE op = 'INSERT'), count(*) FILTER (WHERE op = 'UPDATE'), \
                    count(*) FILTER (WHERE op = 'DELETE'), count(*) FILTER (WHERE op = 'TRUNCATE') \
             FROM medallion.audit_log WHERE table_name = 'public.{t}'"
        ));
        let c: Vec<i64> = counts
            .trim()
            .split('|')
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(c[0], ins, "{t}: one INSERT record per inserted row");
        assert_eq!(c[2], del, "{t}: one DELETE record per deleted row");
        assert_eq!(c[3], 0, "{t}: Odoo never truncates");
        // Updates that change nothing audited leave no record.
        assert!(
            c[1] > 0 && c[1] <= upd,
            "{t}: {} UPDATE records for {upd} updated rows",
            c[1]
        );
        eprintln!(
            "real Odoo 18 audit: {t}: {} inserts, {} updates ({upd} row updates), {} deletes",
            c[0], c[1], c[2]
        );
        // Odoo's application user is the row's write_uid.
        assert_eq!(
            env.sql(&format!(
                "SELECT count(*) FROM medallion.audit_log WHERE table_name = 'public.{t}' \
                   AND op = 'INSERT' AND app_user IS DISTINCT FROM new ->> 'write_uid'"
            ))
            .trim(),
            "0",
            "{t}: app_user = write_uid"
        );
        // History replayed forward from each INSERT equals the live row.
        let forward = env.sql(&format!(
            "CREATE AGGREGATE pg_temp.merge_all(jsonb) (SFUNC = jsonb_concat, STYPE = jsonb); \
             SELECT count(*), count(*) FILTER (WHERE h.img IS DISTINCT FROM to_jsonb(x)) \
               FROM (SELECT pk, pg_temp.merge_all(new ORDER BY id) AS img FROM medallion.audit_log \
                      WHERE table_name = 'public.{t}' GROUP BY pk \
                     HAVING bool_or(op = 'INSERT')) h \
               LEFT JOIN public.{t} x ON x.id = (h.pk ->> 'id')::int"
        ));
        assert_eq!(
            forward.trim(),
            format!("{ins}|0"),
            "{t}: INSERT + UPDATE diffs rebuild every inserted row"
        );
        // Past states: every row as of mid-day equals the snapshot taken
        // then; rows created later did not exist then.
        let past = env.sql(&format!(
            "SELECT count(*), count(*) FILTER (WHERE medallion.row_as_of('public.{t}', \
                    jsonb_build_object('id', s.id), '{t_mid}') IS DISTINCT FROM to_jsonb(s)) \
             FROM public.snap_{t} s"
        ));
        let p: Vec<i64> = past.trim().split('|').map(|x| x.parse().unwrap()).collect();
        assert!(p[0] > 0, "{t}: snapshot has rows");
        assert_eq!(
            p[1], 0,
            "{t}: row_as_of(mid-day) equals the mid-day snapshot"
        );
        let later = env.sql(&format!(
            "SELECT count(*), count(*) FILTER (WHERE medallion.row_as_of('public.{t}', \
                    jsonb_build_object('id', x.id), '{t_mid}') IS NOT NULL) \
             FROM public.{t} x WHERE x.id NOT IN (SELECT id FROM public.snap_{t})"
        ));
        let l: Vec<i64> = later
            .trim()
            .split('|')
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(
            l[1], 0,
            "{t}: rows created after mid-day did not exist then"
        );
        eprintln!(
            "real Odoo 18 audit: {t}: {} rows as of mid-day and {} later rows checked",
            p[0], l[0]
        );
    }
    // A spot check a human can read: the partner e-mail edits are in the
    // history with old and new address.
    let edits = env.sql(
        "SELECT count(*) FROM medallion.audit_log WHERE table_name = 'public.res_partner' \
           AND op = 'UPDATE' AND old ? 'email' AND new ? 'email' AND old ->> 'email' <> new ->> 'email'",
    );
    assert!(
        edits.trim().parse::<i64>().unwrap() >= 10,
        "W1's 10 partner e-mail edits are in the trail ({edits})"
    );
}

/// The trail as a bronze source: long-term retention in the lake. Records
/// removed by audit_retention stay in bronze as their INSERT change rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_streams_to_bronze_and_outlives_retention() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE public.res_partner (id int PRIMARY KEY, name varchar, email varchar, write_uid int); \
         SELECT medallion.enable_audit('public.res_partner'); \
         SELECT medallion.add_source('medallion.audit_log', silver => 'none'); \
         SELECT medallion.add_source('medallion.audit_seal', silver => 'none');",
    );
    env.catch_up().await;
    env.sql(
        "INSERT INTO public.res_partner SELECT g, 'Partner ' || g, 'p' || g || '@example.com', 2 \
            FROM generate_series(1, 50) g; \
         UPDATE public.res_partner SET email = 'new' || id || '@example.com', write_uid = 6 WHERE id <= 10; \
         DELETE FROM public.res_partner WHERE id = 50;",
    );
    env.sql("SELECT count(*) FROM medallion.verify_audit()");
    env.catch_up().await;
    // Bronze equals Postgres row for row (jsonb, xid8, inet, bytea included).
    env.assert_bronze_matches("medallion", "audit_log").await;
    env.assert_bronze_matches("medallion", "audit_seal").await;
    // Retention (with the minimum window lowered by the superuser) removes
    // every record but the trail's newest from Postgres; bronze keeps them.
    env.sql("INSERT INTO medallion.audit_settings (min_retention) VALUES ('0')");
    assert_eq!(
        env.sql("SELECT sum(removed) FROM medallion.audit_retention(interval '0')")
            .trim(),
        "60"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM medallion.audit_log").trim(),
        "1"
    );
    env.catch_up().await;
    let batches = lake::read_table(&env.bronze("medallion", "audit_log"))
        .await
        .unwrap();
    let rows = lake::change_rows(&batches);
    let inserts = rows.iter().filter(|r| r.op == "insert").count();
    let deletes = rows.iter().filter(|r| r.op == "delete").count();
    assert_eq!(
        (inserts, deletes),
        (61, 60),
        "bronze keeps all 61 records and the retention deletes"
    );
}
