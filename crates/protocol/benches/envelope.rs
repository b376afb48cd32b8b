//! Envelope cost against the bare primitives it is made of (figures in BENCHMARKS.md).
//!
//! - `seal/*`: Kith [`seal`] (Padmé, header encoding, random nonce, XChaCha20-Poly1305,
//!   Ed25519 over the domain-separated encoding, envelope hash) vs one XChaCha20-Poly1305
//!   encryption of the payload and one Ed25519 signature over the ciphertext.
//! - `open/*`: Kith decode + strict signature verification + decryption and unpadding vs one
//!   strict verification and one decryption of the same bare ciphertext.
//! - `verify_64/*`: 64 envelopes' signatures, batch vs one by one.
//! - `os_rng_24_bytes`, `buffered_rng_24_bytes`: a nonce from the operating system, one call
//!   each vs through the per-thread buffer.
//! - `decode_batch_100/*`: a pulled batch of 100 contacts decoded in place vs by prost.
//!
//! Payloads are encoded `OperationBatch`es: one contact upsert (~600 B) and 100 of them.
//!
//! Run: `cargo bench -p kith-protocol --bench envelope -- --warm-up-time 1 --measurement-time 3`
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, Linux), not wall time:
//! the machine these run on is shared, and time spent preempted by other processes would
//! otherwise land in the figures. Other systems fall back to wall time.

use std::hint::black_box;
use std::time::Instant;

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use kith_protocol::AccountId;
use kith_protocol::envelope::{EnvelopeHash, ParsedEnvelope, PayloadKind, seal, verify_batch};
use kith_protocol::keys::{
    DeviceSigningKey, DeviceVerifyingKey, SymmetricKey, buffered_rng, system_rng,
};
use kith_protocol::proto::{
    Date, Email, FieldValue, FieldWrite, Hlc, LinkedInSource, Operation, OperationBatch, Phone,
    Upsert, field_value, operation,
};
use prost::Message;

/// One realistic imported contact (an upsert with nothing replaced): name, company, title,
/// birthday, two e-mails, a phone, a note and a LinkedIn source. About 600 bytes encoded.
fn contact(i: u32, device: &[u8; 16]) -> Operation {
    let clock = |n: u32| Hlc {
        wall_ms: 1_760_000_000_000 + u64::from(n),
        counter: n,
        device_id: device.to_vec(),
    };
    let text = |t: String| FieldValue {
        value: Some(field_value::Value::Text(t)),
    };
    let write = |key: &str, value: FieldValue| FieldWrite {
        key: key.to_owned(),
        value: Some(value.encode_to_vec()),
        replaces: None,
    };
    let email = format!("ada.lovelace{i}@analytical-engine.example.org");
    let writes = vec![
        write(
            "name",
            text(format!("Augusta Ada King, Countess of Lovelace {i}")),
        ),
        write("company", text("Analytical Engine Society".to_owned())),
        write(
            "title",
            text("Mathematician and first programmer".to_owned()),
        ),
        write(
            "birthday",
            FieldValue {
                value: Some(field_value::Value::Date(Date {
                    year: 1815,
                    month: 12,
                    day: 10,
                })),
            },
        ),
        write(
            &format!("email/{email}"),
            FieldValue {
                value: Some(field_value::Value::Email(Email {
                    address: email.clone(),
                    label: "work".to_owned(),
                })),
            },
        ),
        write(
            "email/ada@example.com",
            FieldValue {
                value: Some(field_value::Value::Email(Email {
                    address: "ada@example.com".to_owned(),
                    label: "home".to_owned(),
                })),
            },
        ),
        write(
            "phone/+442079460000",
            FieldValue {
                value: Some(field_value::Value::Phone(Phone {
                    e164: "+442079460000".to_owned(),
                    label: "mobile".to_owned(),
                })),
            },
        ),
        write(
            "note",
            text("Met at Babbage's soirée; ask about the Bernoulli numbers program.".to_owned()),
        ),
        write(
            "source/linkedin",
            FieldValue {
                value: Some(field_value::Value::Linkedin(LinkedInSource {
                    profile_url: format!("https://www.linkedin.com/in/ada-lovelace-{i}"),
                    connected_on: Some(Date {
                        year: 2024,
                        month: 3,
                        day: 14,
                    }),
                    company: "Analytical Engine Society".to_owned(),
                    position: "Mathematician".to_owned(),
                })),
            },
        ),
    ];
    let mut record_id = [0u8; 16];
    record_id[..4].copy_from_slice(&i.to_be_bytes());
    Operation {
        record_id: record_id.to_vec(),
        clock: Some(clock(i)),
        kind: Some(operation::Kind::Upsert(Upsert {
            writes,
            extension_writes: vec![],
        })),
    }
}

fn batch(n: u32, device: &[u8; 16]) -> Vec<u8> {
    OperationBatch {
        operations: (0..n).map(|i| contact(i, device)).collect(),
        written_at_ms: 0,
        relay_moved: None,
        writer_view: None,
    }
    .encode_to_vec()
}

struct Setup {
    key: DeviceSigningKey,
    dalek: SigningKey,
    account: AccountId,
    content_key: SymmetricKey,
}

fn setup() -> Setup {
    let mut rng = system_rng();
    let key = DeviceSigningKey::generate(&mut rng);
    let dalek = SigningKey::from_bytes(&key.to_secret_bytes());
    Setup {
        key,
        dalek,
        account: AccountId::from_bytes([7; 32]),
        content_key: SymmetricKey::generate(&mut rng),
    }
}

fn seal_one(s: &Setup, payload: &[u8], seq: u64) -> Vec<u8> {
    let prev = if seq == 1 {
        EnvelopeHash::ZERO
    } else {
        EnvelopeHash::from_bytes([1; 32])
    };
    seal(
        &s.key,
        &s.account,
        seq,
        1,
        &s.content_key,
        &prev,
        PayloadKind::Operations,
        payload,
        &mut system_rng(),
    )
    .map(|sealed| sealed.bytes)
    .unwrap_or_default()
}

fn seal_and_open(c: &mut Criterion<ThreadCpuTime>) {
    let s = setup();
    let device = *s.key.device_id().as_bytes();
    let nonce = [9u8; 24];
    let one = batch(1, &device);
    assert!(
        (550..=700).contains(&one.len()),
        "one contact is {} bytes",
        one.len()
    );
    for (name, payload) in [("one_contact", one), ("batch_100", batch(100, &device))] {
        let mut group = c.benchmark_group(format!("envelope/{name}"));
        group.throughput(Throughput::Bytes(payload.len() as u64));

        group.bench_function(BenchmarkId::new("seal", "kith"), |b| {
            b.iter(|| {
                seal(
                    &s.key,
                    &s.account,
                    black_box(7),
                    1,
                    &s.content_key,
                    &EnvelopeHash::from_bytes([1; 32]),
                    PayloadKind::Operations,
                    black_box(&payload),
                    &mut system_rng(),
                )
            })
        });
        group.bench_function(BenchmarkId::new("seal", "bare"), |b| {
            b.iter(|| {
                let cipher = XChaCha20Poly1305::new(s.content_key.expose().into());
                let ciphertext = cipher.encrypt((&nonce).into(), black_box(payload.as_slice()));
                let ciphertext = ciphertext.unwrap_or_default();
                let signature = s.dalek.sign(&ciphertext);
                (ciphertext, signature)
            })
        });

        let envelope = seal_one(&s, &payload, 7);
        let public = s.key.public();
        group.bench_function(BenchmarkId::new("open", "kith"), |b| {
            b.iter(|| {
                let parsed = ParsedEnvelope::decode(black_box(&envelope)).ok()?;
                parsed.verify_signature(&public).ok()?;
                parsed.decrypt(&s.content_key).ok()
            })
        });
        let cipher = XChaCha20Poly1305::new(s.content_key.expose().into());
        let bare_ciphertext = cipher
            .encrypt((&nonce).into(), payload.as_slice())
            .unwrap_or_default();
        let bare_signature = s.dalek.sign(&bare_ciphertext);
        let bare_public = s.dalek.verifying_key();
        group.bench_function(BenchmarkId::new("open", "bare"), |b| {
            b.iter(|| {
                bare_public
                    .verify_strict(black_box(&bare_ciphertext), &bare_signature)
                    .ok()?;
                let cipher = XChaCha20Poly1305::new(s.content_key.expose().into());
                cipher
                    .decrypt(
                        (&nonce).into(),
                        Payload {
                            msg: &bare_ciphertext,
                            aad: &[],
                        },
                    )
                    .ok()
            })
        });
        group.finish();
    }
}

fn verify_64(c: &mut Criterion<ThreadCpuTime>) {
    let writers: Vec<Setup> = (0..8).map(|_| setup()).collect();
    let mut parsed = Vec::new();
    let mut keys: Vec<DeviceVerifyingKey> = Vec::new();
    for (w, writer) in writers.iter().enumerate() {
        let payload = batch(1, writer.key.device_id().as_bytes());
        for seq in 1..=8 {
            let bytes = seal_one(writer, &payload, seq + w as u64);
            if let Ok(envelope) = ParsedEnvelope::decode(&bytes) {
                parsed.push(envelope);
                keys.push(writer.key.public());
            }
        }
    }
    assert_eq!(parsed.len(), 64);
    let items: Vec<(&ParsedEnvelope, &DeviceVerifyingKey)> = parsed.iter().zip(&keys).collect();
    let mut group = c.benchmark_group("envelope/verify_64");
    group.throughput(Throughput::Elements(64));
    group.bench_function("batch", |b| b.iter(|| verify_batch(black_box(&items))));
    group.bench_function("one_by_one", |b| {
        b.iter(|| {
            black_box(&items)
                .iter()
                .try_for_each(|(envelope, key)| envelope.verify_signature(key))
        })
    });
    group.finish();
}

/// What the random nonce costs: 24 bytes from the operating system.
fn os_randomness(c: &mut Criterion<ThreadCpuTime>) {
    use rand_core::Rng;
    c.bench_function("envelope/os_rng_24_bytes", |b| {
        b.iter(|| {
            let mut nonce = [0u8; 24];
            system_rng().fill_bytes(&mut nonce);
            nonce
        })
    });
    c.bench_function("envelope/buffered_rng_24_bytes", |b| {
        b.iter(|| {
            let mut nonce = [0u8; 24];
            buffered_rng().fill_bytes(&mut nonce);
            nonce
        })
    });
}

/// Decoding a pulled batch of 100 contacts as a device seals it (its view appended): the
/// in-place reader (`decode_batch_parts`) against prost's decoding and `from_proto`.
fn decode_batches(c: &mut Criterion<ThreadCpuTime>) {
    let device = [3; 16];
    let mut payload = batch(100, &device);
    kith_protocol::record::append_written_at(&mut payload, 1_760_000_000_000);
    let view = kith_protocol::proto::WriterView {
        roster_version: 2,
        roster_hash: vec![7; 32],
        heads: vec![],
    };
    prost::encoding::message::encode(4, &view, &mut payload);
    let mut group = c.benchmark_group("decode_batch_100");
    group.throughput(Throughput::Elements(100));
    group.bench_function("in_place", |b| {
        b.iter(|| kith_protocol::record::decode_batch_parts(black_box(&payload)).unwrap())
    });
    group.bench_function("prost", |b| {
        b.iter(|| {
            kith_protocol::record::decode_batch_parts_with_prost(black_box(&payload)).unwrap()
        })
    });
    group.finish();
}

/// On-CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`) on Linux; wall time elsewhere.
struct ThreadCpuTime;

#[cfg(target_os = "linux")]
fn thread_cpu_ns() -> Option<u64> {
    use rustix::time::{ClockId, clock_gettime};
    let now = clock_gettime(ClockId::ThreadCPUTime);
    let secs = u64::try_from(now.tv_sec).ok()?;
    let nanos = u64::try_from(now.tv_nsec).ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_ns() -> Option<u64> {
    None
}

impl Measurement for ThreadCpuTime {
    type Intermediate = (Option<u64>, Instant);
    type Value = u64;

    fn start(&self) -> Self::Intermediate {
        (thread_cpu_ns(), Instant::now())
    }

    fn end(&self, (cpu, wall): Self::Intermediate) -> u64 {
        match (cpu, thread_cpu_ns()) {
            (Some(start), Some(end)) => end.saturating_sub(start),
            _ => u64::try_from(wall.elapsed().as_nanos()).unwrap_or(u64::MAX),
        }
    }

    fn add(&self, v1: &u64, v2: &u64) -> u64 {
        v1 + v2
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        // Values are nanoseconds, as for wall time: reuse its formatting.
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = seal_and_open, verify_64, os_randomness, decode_batches
}
criterion_main!(benches);
