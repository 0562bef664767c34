//! Engine micro-benchmarks (criterion): an actor message round trip, step payload
//! validation/encoding and decoding, and the Snowflake SQL literal encoder.
//!
//! ```sh
//! cargo bench --bench engine
//! ```

use actix::prelude::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleet_q::storage::snowflake::sql;
use fleet_q_actors::{NewStep, Payload, StepSpec};
use serde_json::json;

struct Echo;
impl Actor for Echo {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "u64")]
struct Ping(u64);

impl Handler<Ping> for Echo {
    type Result = u64;
    fn handle(&mut self, msg: Ping, _: &mut Context<Self>) -> u64 {
        msg.0 + 1
    }
}

fn actor_round_trip(c: &mut Criterion) {
    let sys = actix_rt::System::new();
    let addr = sys.block_on(async { Echo.start() });
    c.bench_function("actor/send_round_trip", |b| {
        b.iter(|| sys.block_on(addr.send(Ping(1))).unwrap())
    });
}

fn payload(c: &mut Criterion) {
    let args =
        json!({"to": "user@example.com", "template": "welcome", "vars": {"name": "Ada", "n": 42}});
    let mut g = c.benchmark_group("payload");
    g.throughput(Throughput::Elements(1));
    g.bench_function("validate_and_encode", |b| {
        b.iter(|| {
            NewStep::new(StepSpec {
                step_type: "email".into(),
                args: Some(args.clone()),
                metadata: Some(json!({"tenant": "t1"})),
                priority: Some(5),
                ..Default::default()
            })
            .unwrap()
        })
    });
    let text = NewStep::new(StepSpec {
        step_type: "email".into(),
        args: Some(args.clone()),
        ..Default::default()
    })
    .unwrap()
    .payload_json()
    .to_string();
    g.bench_function("decode", |b| {
        b.iter(|| serde_json::from_str::<Payload>(&text).unwrap())
    });
    g.finish();
}

fn literals(c: &mut Criterion) {
    let mut g = c.benchmark_group("sql_literal");
    for size in [64usize, 1024, 65536] {
        let s = "it's \"quoted\" \\ $$ ".repeat(size / 20 + 1);
        g.throughput(Throughput::Bytes(s.len() as u64));
        g.bench_function(format!("text_{size}"), |b| b.iter(|| sql::text(&s)));
    }
    g.finish();
}

criterion_group!(benches, actor_round_trip, payload, literals);
criterion_main!(benches);
