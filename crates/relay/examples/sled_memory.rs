//! What sled 0.34 keeps in memory as a relay's stream index grows (issue 22): 1,000 accounts,
//! 100,000 pushes spread over them, one sled write per push, the resident memory printed every
//! 10,000 pushes. The relay's allocator (mimalloc) and cache size (8 MiB). Modes:
//!
//! - `distinct`: one new 57-byte key with a 61-byte value per push (schema 2's pointers);
//! - `update`: one key per account, its 61-byte value rewritten (a stream head);
//! - `blockN`: one key per account per N pushes, its value growing by 28 bytes per push
//!   (schema 3's pointer blocks hold 36); with `FIXED=1` in the environment, every value at
//!   its full size.
//!
//! `cargo run --release -p kith-relay --example sled_memory -- block64`

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "distinct".into());
    let block: Option<u64> = mode.strip_prefix("block").map(str::parse).transpose()?;
    let fixed = std::env::var_os("FIXED").is_some();
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(8 << 20)
        .mode(sled::Mode::HighThroughput)
        .open()?;
    let tree = db.open_tree("x")?;
    for account in 0..1000u32 {
        let mut key = vec![0u8; 33];
        key[..4].copy_from_slice(&account.to_be_bytes());
        tree.insert(key, vec![9u8; 61])?;
    }
    db.flush()?;
    print!("setup {:.1}", rss_mb());
    for push in 0..100_000u64 {
        let account = (push % 1000) as u32;
        let mut key = vec![0u8; 57];
        key[..4].copy_from_slice(&account.to_be_bytes());
        key[32] = b'E';
        let mut value = vec![7u8; 61];
        value[..8].copy_from_slice(&push.to_be_bytes());
        match (mode.as_str(), block) {
            ("distinct", _) => key[49..57].copy_from_slice(&push.to_be_bytes()),
            (_, Some(n)) => {
                let pushed = push / 1000;
                key[49..57].copy_from_slice(&(pushed / n).to_be_bytes());
                let entries = if fixed { n } else { pushed % n + 1 };
                value = vec![5u8; 28 * entries as usize + 32];
                value[..8].copy_from_slice(&push.to_be_bytes());
            }
            _ => {}
        }
        tree.insert(key, value)?;
        // About a group commit's worth of pushes per flush.
        if push % 64 == 0 {
            db.flush()?;
        }
        if (push + 1) % 10_000 == 0 {
            print!("  {} {:.1}", push + 1, rss_mb());
        }
    }
    println!(" (MB of VmRSS after so many pushes)");
    Ok(())
}
