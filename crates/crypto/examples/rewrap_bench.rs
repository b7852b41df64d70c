//! Micro benchmark of master-key rotation: 1,000 tenant data keys wrapped under KEK v1,
//! rotate, rewrap all 1,000 under v2 (what the key-rotation job does).
//!
//! ```text
//! cargo run --release -p agentplane-crypto --example rewrap_bench
//! # and against Vault / OpenBao Transit too:
//! AGENTPLANE_BAO_ADDR=http://127.0.0.1:8200 AGENTPLANE_BAO_TOKEN=root \
//!   cargo run --release -p agentplane-crypto --example rewrap_bench
//! ```
//! Optional: `AGENTPLANE_BAO_MOUNT` (default `transit`), `AGENTPLANE_BAO_KEY` (default
//! `agentplane-rewrap-bench`; the benchmark rotates it).

#![allow(clippy::print_stdout)]

use agentplane_core::TenantId;
use agentplane_crypto::{DataKey, Kms, LocalKms, TransitKms, WrappedKey};
use futures::future::try_join_all;
use secrecy::SecretString;
use std::error::Error;
use std::time::{Duration, Instant};

const KEYS: usize = 1_000;

type BoxError = Box<dyn Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    println!("{KEYS} tenant data keys; wrap under the current KEK, rotate, rewrap all, unwrap all");
    let local = LocalKms::from_keyring(&LocalKms::new_keyring_spec())?;
    bench("local", &local, 1).await?;

    match (
        std::env::var("AGENTPLANE_BAO_ADDR"),
        std::env::var("AGENTPLANE_BAO_TOKEN"),
    ) {
        (Ok(addr), Ok(token)) => {
            let mount = std::env::var("AGENTPLANE_BAO_MOUNT").unwrap_or_else(|_| "transit".into());
            let key = std::env::var("AGENTPLANE_BAO_KEY")
                .unwrap_or_else(|_| "agentplane-rewrap-bench".into());
            let transit = TransitKms::new(&addr, SecretString::from(token), &mount, &key)?;
            transit.ensure_key().await?;
            for concurrency in [1, 16] {
                bench(&format!("transit ({addr})"), &transit, concurrency).await?;
            }
        }
        _ => println!("transit: skipped (set AGENTPLANE_BAO_ADDR and AGENTPLANE_BAO_TOKEN)"),
    }
    Ok(())
}

async fn bench(label: &str, kms: &dyn Kms, concurrency: usize) -> Result<(), BoxError> {
    let tenants: Vec<TenantId> = (0..KEYS).map(|_| TenantId::new()).collect();
    let keys: Vec<DataKey> = (0..KEYS).map(|_| DataKey::generate()).collect();

    let started = Instant::now();
    let wrapped = run(concurrency, KEYS, |i| kms.wrap(tenants[i], &keys[i])).await?;
    let wrap_time = started.elapsed();

    let before = kms.current_version().await?;
    let started = Instant::now();
    let version = kms.rotate().await?;
    let rotate_time = started.elapsed();

    let started = Instant::now();
    let rewrapped: Vec<WrappedKey> =
        run(concurrency, KEYS, |i| kms.rewrap(tenants[i], &wrapped[i])).await?;
    let rewrap_time = started.elapsed();

    let started = Instant::now();
    let unwrapped = run(concurrency, KEYS, |i| kms.unwrap(tenants[i], &rewrapped[i])).await?;
    let unwrap_time = started.elapsed();

    // The benchmark is only worth something if the work was right.
    for (i, w) in rewrapped.iter().enumerate() {
        if w.kek_version != version || unwrapped[i].expose_secret() != keys[i].expose_secret() {
            return Err(format!("key {i} did not survive the rewrap").into());
        }
    }

    println!("{label}, concurrency {concurrency}, KEK v{before} -> v{version}:");
    println!("  wrap   {}", figures(wrap_time));
    println!("  rotate {:.3} ms", ms(rotate_time));
    println!("  rewrap {}", figures(rewrap_time));
    println!("  unwrap {}", figures(unwrap_time));
    Ok(())
}

/// Runs `op(0..n)` with at most `concurrency` calls in flight, in order.
async fn run<'a, T, F, Fut>(concurrency: usize, n: usize, op: F) -> Result<Vec<T>, BoxError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, agentplane_crypto::CryptoError>> + 'a,
{
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    // Batches of `concurrency` requests: simple, and close enough to a pool for a benchmark.
    while start < n {
        let end = (start + concurrency).min(n);
        out.extend(try_join_all((start..end).map(&op)).await?);
        start = end;
    }
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn figures(total: Duration) -> String {
    format!(
        "{KEYS} keys in {:>9.3} ms = {:>8.2} µs/key",
        ms(total),
        total.as_secs_f64() * 1e6 / KEYS as f64
    )
}
