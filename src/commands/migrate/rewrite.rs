//! The rewriting itself: batches of rows in key order, each value
//! encrypted (or re-encrypted under the active key version) unless it is
//! already current, with progress on stderr.

use super::*;

/// Rewrites every row that needs it, batch by batch, in key order; then
/// repeats for rows that changed concurrently. Returns the rows left.
pub(super) async fn convert(
    client: &Client,
    job: &Job<'_>,
    opts: &Options,
    total: i64,
) -> anyhow::Result<i64> {
    let started = Instant::now();
    let progress = Progress::new(job.name(), total);
    let mut done = 0i64;
    let mut remaining = total;
    for _pass in 0..5 {
        if remaining == 0 {
            break;
        }
        let mut after: Option<Vec<String>> = None;
        loop {
            let (rows, last) = batch(client, job, after.as_deref(), opts.batch_size).await?;
            if rows == 0 && last.is_none() {
                break;
            }
            done += rows;
            progress.show(done, started);
            after = last;
            if !opts.pause.is_zero() {
                tokio::time::sleep(opts.pause).await;
            }
        }
        remaining = count(client, job).await?;
    }
    progress.finish(done, started);
    Ok(remaining)
}

/// One batch: read up to `size` rows needing work after `after`, reseal
/// their values, write them back in one UPDATE guarded by the values read.
/// Returns rows written and the last key seen (`None` at the end).
async fn batch(
    client: &Client,
    job: &Job<'_>,
    after: Option<&[String]>,
    size: usize,
) -> anyhow::Result<(i64, Option<Vec<String>>)> {
    let keys = job.key_exprs();
    let types = job.key_types();
    let key_list = keys.join(", ");
    let key_text: Vec<String> = keys.iter().map(|k| format!("{k}::text")).collect();
    let cols: Vec<String> = job
        .columns
        .iter()
        .map(|c| format!("t.{}", quote(&c.id.column)))
        .collect();
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let bound = match after {
        Some(last) => {
            let placeholders: Vec<String> = last
                .iter()
                .zip(&types)
                .enumerate()
                .map(|(i, (_, t))| format!("${}::text::{t}", i + 1))
                .collect();
            for v in last {
                params.push(Box::new(v.clone()));
            }
            format!("AND ({key_list}) > ({})", placeholders.join(", "))
        }
        None => String::new(),
    };
    // xmin: the row version, the UPDATE's guard (see below).
    let sql = format!(
        "SELECT {}, t.xmin::text, {} FROM {} t WHERE {} {bound} ORDER BY {key_list} LIMIT {size}",
        key_text.join(", "),
        cols.join(", "),
        job.relation(),
        job.any_needs_work(),
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client
        .query(sql.as_str(), &refs)
        .await
        .context("reading a batch")?;
    let Some(last_row) = rows.last() else {
        return Ok((0, None));
    };
    let nkeys = keys.len();
    let last: Vec<String> = (0..nkeys).map(|i| last_row.get::<_, String>(i)).collect();

    // Column-major arrays for unnest: key columns and the row version
    // (text), then per column the new stored value. The old values are
    // never sent back: in `encrypt` they are plaintext, and statement logs
    // of the database would show them.
    let mut key_arrays: Vec<Vec<String>> = vec![Vec::with_capacity(rows.len()); nkeys + 1];
    let mut news: Vec<Vec<Option<Vec<u8>>>> =
        vec![Vec::with_capacity(rows.len()); job.columns.len()];
    for row in &rows {
        for (i, k) in key_arrays.iter_mut().enumerate() {
            k.push(row.get::<_, String>(i));
        }
        for (j, col) in job.columns.iter().enumerate() {
            let old = stored_bytes(row, nkeys + 1 + j, col.storage);
            let new = match &old {
                None => None,
                Some(v) if is_current(col, v) => Some(v.clone()),
                Some(v) => Some(col.cipher.reseal(col.storage, v).map_err(|e| {
                    anyhow::anyhow!("{}: a stored value cannot be re-encrypted: {e}; nothing of this batch was written", col.id)
                })?),
            };
            news[j].push(new);
        }
    }
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut unnest = Vec::new();
    let mut names = Vec::new();
    for (i, k) in key_arrays.into_iter().enumerate() {
        params.push(Box::new(k));
        unnest.push(format!("${}::text[]", params.len()));
        names.push(if i == nkeys {
            "x".to_string()
        } else {
            format!("k{i}")
        });
    }
    for (j, col) in job.columns.iter().enumerate() {
        let values = &news[j];
        match col.storage {
            Storage::Bytea => params.push(Box::new(values.clone())),
            Storage::Text => params.push(Box::new(
                values
                    .iter()
                    .map(|v| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
                    .collect::<Vec<_>>(),
            )),
        }
        let ty = if col.storage == Storage::Bytea {
            "bytea[]"
        } else {
            "text[]"
        };
        unnest.push(format!("${}::{ty}", params.len()));
        names.push(format!("n{j}"));
    }
    let sets: Vec<String> = job
        .columns
        .iter()
        .enumerate()
        .map(|(j, c)| format!("{} = v.n{j}", quote(&c.id.column)))
        .collect();
    let key_match: Vec<String> = keys
        .iter()
        .zip(&types)
        .enumerate()
        .map(|(i, (k, t))| format!("{k} = v.k{i}::{t}"))
        .collect();
    // The row is written only if it is the version the batch read: any
    // write since (the application's, through pgveil) changed xmin and
    // wins; the row is picked up again by the next pass if it still needs it.
    let guards = ["t.xmin = v.x::xid".to_string()];
    let update = format!(
        "UPDATE {} t SET {} FROM unnest({}) AS v({}) WHERE {} AND {}",
        job.relation(),
        sets.join(", "),
        unnest.join(", "),
        names.join(", "),
        key_match.join(" AND "),
        guards.join(" AND "),
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let first = rows
        .first()
        .map(|r| {
            (0..nkeys)
                .map(|i| r.get::<_, String>(i))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let written = client
        .execute(update.as_str(), &refs)
        .await
        .with_context(|| {
            format!(
                "writing the batch of {} with {} from ({first}) to ({}); nothing of it was written",
                job.name(),
                if job.key.is_empty() {
                    "ctid".to_string()
                } else {
                    job.key
                        .iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                last.join(",")
            )
        })?;
    Ok((written as i64, Some(last)))
}

fn is_current(col: &Target<'_>, stored: &[u8]) -> bool {
    col.cipher.stored_version(col.storage, stored) == col.cipher.active_version()
}

/// Progress on stderr: a redrawn line on a terminal, log lines otherwise.
struct Progress {
    name: String,
    total: i64,
    tty: bool,
    last: std::cell::Cell<Option<Instant>>,
}

impl Progress {
    fn new(name: String, total: i64) -> Progress {
        Progress {
            name,
            total,
            tty: std::io::stderr().is_terminal(),
            last: std::cell::Cell::new(None),
        }
    }

    fn line(&self, done: i64, started: Instant) -> String {
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let left = (self.total - done).max(0);
        let eta = if rate > 0.0 { left as f64 / rate } else { 0.0 };
        format!(
            "{}: {done}/{} rows ({:.0} rows/s, ETA {:.0} s)",
            self.name, self.total, rate, eta
        )
    }

    fn show(&self, done: i64, started: Instant) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(2)
        };
        if self.last.get().is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last.set(Some(Instant::now()));
        let line = self.line(done, started);
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    fn finish(&self, done: i64, started: Instant) {
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let end = if self.tty { "\n" } else { "" };
        eprintln!(
            "{end}{}: {done} rows rewritten in {:.1} s ({:.0} rows/s)",
            self.name,
            secs,
            done as f64 / secs
        );
    }
}
