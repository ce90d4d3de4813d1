//! Policy benchmark: `cargo bench -p edge-core --bench policy`.
//!
//! A generated system graph of 10,000 nodes and 50,000 `depends-on` edges,
//! the example policy's built-in rules, and a capsule touching 3 nodes (one
//! write, two reads). Reports the load time (parse + precompute closures), the
//! median decision latency with the built-in rules (target ≤ 50 µs), and the
//! added cost of one Rego rule, measured side by side.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edge_core::Sha256Digest;
use edge_core::admission::{Grant, GrantedMount, Limits};
use edge_core::graph::Graph;
use edge_core::manifest::Kind;
use edge_core::policy::{DecisionInput, Policy};
use edge_core::signature::{CapsuleSigningKey, Transparency};

const NODES: usize = 10_000;
const EDGES: usize = 50_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn graph_text() -> String {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); NODES];
    let mut edges = 0;
    while edges < EDGES {
        // Mostly "downward" dependencies (layered services), some cycles.
        let a = rng.below(NODES);
        let b = if rng.below(10) == 0 { rng.below(NODES) } else { a + 1 + rng.below((NODES - a).max(2) - 1) };
        if b < NODES && b != a && !deps[a].contains(&b) {
            deps[a].push(b);
            edges += 1;
        }
    }
    const TAGS: [&str; 8] =
        ["auth", "payments", "regulated-data", "revenue-path", "irreversible", "edge", "batch", "internal"];
    let mut s = String::with_capacity(NODES * 200);
    s.push_str("version = 1\n");
    for (i, d) in deps.iter().enumerate() {
        let crit = ["low", "medium", "high", "critical"][rng.below(4)];
        let tags: Vec<String> = (0..rng.below(3)).map(|_| format!("\"{}\"", TAGS[rng.below(TAGS.len())])).collect();
        let mut tags = tags;
        tags.sort();
        tags.dedup();
        let deps: Vec<String> = d.iter().map(|j| format!("\"n{j}\"")).collect();
        s.push_str(&format!(
            "[[nodes]]\nid = \"n{i}\"\ncriticality = \"{crit}\"\ntags = [{}]\ndepends_on = [{}]\n",
            tags.join(","),
            deps.join(",")
        ));
    }
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let iters: usize = std::env::var("BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let example = include_str!("../../examples/policy/policy.toml");
    // Built-in rules only: the example policy without its Rego module.
    let builtin = &example[..example.find("[[rego]]").expect("example has a rego module")];
    let key = CapsuleSigningKey::generate();
    let signer = format!(
        "\n[[signers]]\nname = \"agent\"\npublic_key = \"\"\"{}\"\"\"\nmounts = [\"*\"]\nwritable_mounts = [\"*\"]\n",
        key.public_key_pem()
    );
    let rego = "\n[[rego]]\nname = \"one\"\nsource = '''\npackage edgerunner\nraise contains {\"tier\": 1, \"reason\": \"busy\"} if {\n    input.derivation.impacted_count > 5000\n}\n'''\n";

    let text = graph_text();
    let t = Instant::now();
    let graph = Graph::from_toml(&text).unwrap();
    let graph_load = t.elapsed();
    let t = Instant::now();
    let plain = Policy::from_toml(&format!("{builtin}{signer}")).unwrap();
    let policy_load = t.elapsed();
    let with_rego = Policy::from_toml(&format!("{builtin}{signer}{rego}")).unwrap();

    let nodes: BTreeMap<String, String> =
        [("a", "n17"), ("b", "n4242"), ("c", "n9001")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    let input = DecisionInput {
        read_endpoints: vec![],
        capsule: Sha256Digest::of(b"bench"),
        name: "bench".into(),
        kind: Kind::Remediation,
        signer: "agent".into(),
        transparency: Transparency::None,
        grant: Grant {
            endpoints: vec![],
            mounts: vec![
                GrantedMount { name: "a".into(), writable: true },
                GrantedMount { name: "b".into(), writable: false },
                GrantedMount { name: "c".into(), writable: false },
            ],
            env: vec![],
            imports: Default::default(),
            limits: Limits::DEFAULT,
        },
        endpoints: vec![],
        nodes,
        ticket: Some("BENCH-1".into()),
    };
    let sample = plain.decide(&graph, &input);
    let der = sample.derivation.as_ref().unwrap();

    let mut builtin_t = Vec::with_capacity(iters);
    let mut rego_t = Vec::with_capacity(iters / 10);
    for i in 0..iters {
        let t = Instant::now();
        std::hint::black_box(plain.decide(&graph, &input));
        builtin_t.push(t.elapsed());
        if i % 10 == 0 {
            let t = Instant::now();
            std::hint::black_box(with_rego.decide(&graph, &input));
            rego_t.push(t.elapsed());
        }
    }
    let (b, r) = (median(builtin_t), median(rego_t));
    let edges: usize = graph.nodes().iter().map(|n| n.spec.depends_on.len()).sum();
    println!("edge-core policy benchmark ({iters} decisions, medians)");
    println!("  graph: {} nodes, {edges} edges, {} cycles", graph.len(), graph.cycles().len());
    println!(
        "  capsule touches 3 nodes; blast radius {} nodes, score {}, tier {}",
        der.impacted_count, der.score, sample.tier
    );
    println!("  load: graph parse + closures           {:>10.1} ms", graph_load.as_secs_f64() * 1e3);
    println!("  load: policy compile                   {:>10.2} ms", policy_load.as_secs_f64() * 1e3);
    println!(
        "  decision, built-in rules               {:>13}   (target <= 50 µs: {})",
        us(b),
        if b <= Duration::from_micros(50) { "met" } else { "MISSED" }
    );
    println!("  decision, built-in + one Rego rule     {:>13}", us(r));
    println!(
        "  added cost of one Rego rule            {:>13}   ({:.1}x)",
        us(r.saturating_sub(b)),
        r.as_secs_f64() / b.as_secs_f64()
    );
}
