use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::admission::{GrantedMount, Limits};
use crate::signature::CapsuleSigningKey;

const GRAPH: &str = include_str!("../../../examples/policy/graph.toml");
const POLICY: &str = include_str!("../../../examples/policy/policy.toml");

fn signer_block(name: &str, writable: &str) -> String {
    let key = CapsuleSigningKey::generate();
    format!(
        "\n[[signers]]\nname = \"{name}\"\npublic_key = \"\"\"{}\"\"\"\nmounts = [\"*\"]\nwritable_mounts = [{writable}]\n",
        key.public_key_pem()
    )
}

fn example() -> (Policy, Graph) {
    let text = format!("{POLICY}{}", signer_block("agent", "\"config\", \"logs\", \"ledger\""));
    (Policy::from_toml(&text).unwrap(), Graph::from_toml(GRAPH).unwrap())
}

fn nodes() -> BTreeMap<String, String> {
    [("config", "payments-config"), ("logs", "log-volume"), ("certs", "tls-certs"), ("ledger", "ledger-db")]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect()
}

fn input(mounts: &[(&str, bool)], kind: Kind) -> DecisionInput {
    DecisionInput {
        read_endpoints: vec![],
        capsule: Sha256Digest::of(b"capsule"),
        name: "c".into(),
        kind,
        signer: "agent".into(),
        transparency: Transparency::None,
        grant: Grant {
            endpoints: vec![],
            mounts: mounts.iter().map(|(n, w)| GrantedMount { name: (*n).into(), writable: *w }).collect(),
            env: vec![],
            imports: Default::default(),
            limits: Limits::DEFAULT,
        },
        endpoints: vec![],
        nodes: nodes(),
        ticket: Some("INC-1".into()),
    }
}

fn rules_fired(d: &Decision) -> Vec<&str> {
    d.reasons.iter().map(|r| r.rule.as_str()).collect()
}

#[test]
fn the_example_policy_decides_as_documented() {
    let (p, g) = example();
    // Writing payments config reaches the revenue path: tier 2, two approvals.
    let d = p.decide(&g, &input(&[("config", true)], Kind::Remediation));
    assert!(d.allowed, "{:?}", d.reasons);
    assert_eq!((d.tier, d.approvals_required), (2, 2));
    assert!(rules_fired(&d).contains(&"rules.revenue-path-writes"));
    let der = d.derivation.as_ref().unwrap();
    assert_eq!(der.most_critical.as_ref().unwrap().criticality, Criticality::High);
    assert!(der.sensitive_tags.contains(&"revenue-path".to_owned()));
    assert_eq!(der.impacted_count, 3, "payments-config, payments-api, storefront");

    // Cleaning the log volume: tier 0, automatic.
    let d = p.decide(&g, &input(&[("logs", true)], Kind::Remediation));
    assert!(d.allowed);
    assert_eq!(d.tier, 0);
    assert_eq!(rules_fired(&d), ["default_tier"]);

    // Reading certificates (tagged auth): never-automate counts writes only here.
    let d = p.decide(&g, &input(&[("certs", false)], Kind::Diagnostic));
    assert_eq!(d.tier, 0, "{:?}", d.reasons);

    // Writing the ledger: explicitly denied, and the denial names its rule.
    let d = p.decide(&g, &input(&[("ledger", true)], Kind::Remediation));
    assert!(!d.allowed);
    assert_eq!(d.reasons[0].rule, "deny.no-irreversible-writes");
    assert_eq!(d.policy, Some(p.digest()));
    assert_eq!(d.graph, Some(g.digest()));
}

#[test]
fn decisions_are_deterministic() {
    let text = format!("{POLICY}{}", signer_block("agent", "\"config\", \"logs\""));
    let i = input(&[("config", true), ("certs", false)], Kind::Remediation);
    // Two independent loads of the same documents decide byte-for-byte alike.
    let (p1, g1) = (Policy::from_toml(&text).unwrap(), Graph::from_toml(GRAPH).unwrap());
    let (p2, g2) = (Policy::from_toml(&text).unwrap(), Graph::from_toml(GRAPH).unwrap());
    let a = serde_json::to_vec(&p1.decide(&g1, &i)).unwrap();
    for _ in 0..3 {
        assert_eq!(serde_json::to_vec(&p2.decide(&g2, &i)).unwrap(), a);
    }
    assert_eq!(p1.digest(), p2.digest());
}

/// Truth table of the never-automate override: a low-score change touching a
/// never-automate surface is never tier 0, whatever the rules say.
#[test]
fn never_automate_truth_table() {
    let graph = Graph::from_toml(
        "version = 1\n[[nodes]]\nid = \"vault\"\ncriticality = \"low\"\ntags = [\"auth\"]\n\
         [[nodes]]\nid = \"scratch\"\ncriticality = \"low\"\n",
    )
    .unwrap();
    let base = "version = 1\ndefault_tier = 0\n[tiers.0]\napprovals = 0\n[tiers.1]\napprovals = 1\n";
    let cases = [
        // (never_automate section, mount, writable, expected tier)
        ("[never_automate]\ntags = [\"auth\"]\n", "vault", false, 1),
        ("[never_automate]\ntags = [\"auth\"]\n", "vault", true, 1),
        ("[never_automate]\ntags = [\"auth\"]\naccess = \"write\"\n", "vault", false, 0),
        ("[never_automate]\ntags = [\"auth\"]\naccess = \"write\"\n", "vault", true, 1),
        ("[never_automate]\nnodes = [\"vault\"]\n", "vault", false, 1),
        ("[never_automate]\ntags = [\"auth\"]\n", "scratch", true, 0),
        ("", "vault", true, 0),
    ];
    for (na, mount, writable, want) in cases {
        let text = format!("{base}{na}{}", signer_block("agent", "\"*\""));
        let p = Policy::from_toml(&text).unwrap();
        let mut i = input(&[(mount, writable)], Kind::Remediation);
        i.nodes = [(mount.to_owned(), mount.to_owned())].into();
        let d = p.decide(&graph, &i);
        assert!(d.allowed);
        assert_eq!(d.tier, want, "{na:?} {mount} writable={writable}: {:?}", d.reasons);
        assert!(d.derivation.unwrap().score < 5, "a low-score change");
    }
}

/// Truth table of rule conditions, one condition at a time.
#[test]
fn rule_conditions_truth_table() {
    let (_, g) = example();
    type Case<'a> = (&'a str, &'a [(&'a str, bool)], bool);
    let cases: [Case; 14] = [
        ("writes = true", &[("logs", true)], true),
        ("writes = true", &[("logs", false)], false),
        ("writes = false", &[("logs", false)], true),
        ("kind = \"diagnostic\"", &[("logs", false)], false),
        ("touched_nodes_any = [\"log-volume\"]", &[("logs", false)], true),
        ("touched_nodes_any = [\"reporting\"]", &[("logs", false)], false),
        ("impacted_nodes_any = [\"reporting\"]", &[("logs", false)], true),
        ("touched_tags_any = [\"auth\"]", &[("certs", false)], true),
        ("impacted_tags_any = [\"payments\"]", &[("certs", false)], true),
        ("write_impacted_tags_any = [\"payments\"]", &[("certs", false)], false),
        ("min_score = 10", &[("logs", true)], false),
        ("min_impacted = 2", &[("logs", true)], true),
        ("min_criticality = \"critical\"", &[("certs", false)], true),
        ("min_write_criticality = \"low\"", &[("certs", false)], false),
    ];
    for (cond, mounts, fires) in cases {
        let text = format!(
            "version = 1\n[[rules]]\nname = \"r\"\nwhen = {{ {cond} }}\ntier = 1\nreason = \"x\"\n\
             [tiers.0]\napprovals = 0\n[tiers.1]\napprovals = 1\n{}",
            signer_block("agent", "\"*\"")
        );
        let p = Policy::from_toml(&text).unwrap();
        let d = p.decide(&g, &input(mounts, Kind::Remediation));
        assert_eq!(d.tier == 1, fires, "{cond} on {mounts:?}: {:?}", d.reasons);
    }
}

#[test]
fn an_endpoint_is_a_write_unless_the_config_says_it_only_reads() {
    let text = format!(
        "{POLICY}{}endpoints = [\"*\"]\n",
        signer_block("agent", "\"config\", \"logs\", \"ledger\"").trim_end().to_owned() + "\n"
    );
    let (p, g) = (Policy::from_toml(&text).unwrap(), Graph::from_toml(GRAPH).unwrap());
    let mut i = input(&[], Kind::Remediation);
    i.endpoints = vec!["etcd".into()];
    i.nodes.insert("etcd".into(), "payments-config".into());
    // Writing through the API reaches the revenue path, like writing its files.
    let d = p.decide(&g, &i);
    assert!(d.allowed, "{:?}", d.reasons);
    assert_eq!(d.tier, 2, "{:?}", d.reasons);
    let touched = &d.derivation.as_ref().unwrap().touched;
    assert_eq!(touched[0].access, Access::Write);
    // The same endpoint configured with reads only: a read of its node, and
    // the example policy still wants a human for any call (tier 1).
    i.read_endpoints = vec!["etcd".into()];
    let d = p.decide(&g, &i);
    assert_eq!(d.derivation.as_ref().unwrap().touched[0].access, Access::Read);
    assert_eq!(d.tier, 1, "{:?}", d.reasons);
    assert!(rules_fired(&d).contains(&"rules.endpoint-calls"), "{:?}", d.reasons);
    // A tier that allows no endpoints refuses them, whatever the rest says.
    let strict = Policy::from_toml(&text.replace("allow_endpoints = true", "allow_endpoints = false")).unwrap();
    let d = strict.decide(&g, &i);
    assert!(!d.allowed);
    assert!(d.reasons.iter().any(|r| r.rule.ends_with("allow_endpoints")), "{:?}", d.reasons);
}

#[test]
fn signer_permissions_are_enforced() {
    let g = Graph::from_toml(GRAPH).unwrap();
    let key = CapsuleSigningKey::generate();
    let text = format!(
        "version = 1\n[tiers.0]\napprovals = 0\n[[signers]]\nname = \"agent\"\npublic_key = \"\"\"{}\"\"\"\n\
         kinds = [\"diagnostic\"]\nmounts = [\"certs\"]\nrequire_tlog = true\n",
        key.public_key_pem()
    );
    let p = Policy::from_toml(&text).unwrap();
    let d = p.decide(&g, &input(&[("certs", false)], Kind::Diagnostic));
    assert!(!d.allowed);
    assert!(d.reasons[0].text.contains("transparency-log"), "{:?}", d.reasons);
    let d = p.decide(&g, &input(&[("logs", true)], Kind::Remediation));
    let texts: Vec<&str> = d.reasons.iter().filter(|r| r.rule == "signers.agent").map(|r| r.text.as_str()).collect();
    assert!(texts.iter().any(|t| t.contains("remediation")), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("mount `logs`")), "{texts:?}");
    let mut other = input(&[("certs", false)], Kind::Diagnostic);
    other.signer = "stranger".into();
    assert_eq!(p.decide(&g, &other).reasons[0].rule, "signers");
}

fn rego_policy(source: &str) -> Policy {
    let text = format!(
        "version = 1\n[tiers.0]\napprovals = 0\n[tiers.1]\napprovals = 1\n[tiers.2]\napprovals = 2\n\
         [[rego]]\nname = \"custom\"\nsource = '''\n{source}\n'''\n{}",
        signer_block("agent", "\"*\"")
    );
    Policy::from_toml(&text).unwrap()
}

#[test]
fn rego_can_deny_and_raise_but_never_lower() {
    let (_, g) = example();
    let i = input(&[("logs", true)], Kind::Remediation);

    let raise = rego_policy(
        "package edgerunner\nraise contains {\"tier\": 2, \"reason\": \"freeze\"} if { input.capsule.kind == \"remediation\" }",
    );
    let d = raise.decide(&g, &i);
    assert_eq!(d.tier, 2);
    assert!(d.reasons.iter().any(|r| r.rule == "rego.custom.raise" && r.text.contains("freeze")));

    let lower = rego_policy("package edgerunner\nraise contains {\"tier\": 0, \"reason\": \"be nice\"} if { true }");
    let (base, _) = example();
    let strict = base.decide(&g, &input(&[("config", true)], Kind::Remediation));
    assert_eq!(strict.tier, 2);
    // A Rego rule offering tier 0 on a tier-2 change is ignored.
    let text = format!(
        "{POLICY}[[rego]]\nname = \"lower\"\nsource = '''\npackage edgerunner\nraise contains {{\"tier\": 0, \"reason\": \"be nice\"}} if {{ true }}\n'''\n{}",
        signer_block("agent", "\"config\"")
    );
    let with_lower = Policy::from_toml(&text).unwrap();
    let d = with_lower.decide(&g, &input(&[("config", true)], Kind::Remediation));
    assert_eq!(d.tier, 2, "{:?}", d.reasons);
    assert!(d.reasons.iter().any(|r| r.text.starts_with("ignored")));
    assert_eq!(lower.decide(&g, &i).tier, 0);

    let deny = rego_policy("package edgerunner\ndeny contains \"no fridays\" if { true }");
    let d = deny.decide(&g, &i);
    assert!(!d.allowed);
    assert_eq!(d.reasons[0].text, "no fridays");

    let broken = rego_policy("package edgerunner\nraise contains {\"tier\": \"high\", \"reason\": \"x\"} if { true }");
    assert!(!broken.decide(&g, &i).allowed, "a malformed result denies (fail closed)");
    let undefined_tier = rego_policy("package edgerunner\nraise contains {\"tier\": 7, \"reason\": \"x\"} if { true }");
    assert!(!undefined_tier.decide(&g, &i).allowed);
}

#[test]
fn the_example_rego_rule_requires_a_ticket_for_sensitive_writes() {
    let (p, g) = example();
    let mut i = input(&[("config", true)], Kind::Remediation);
    i.ticket = None;
    let d = p.decide(&g, &i);
    assert!(!d.allowed);
    assert!(d.reasons.iter().any(|r| r.rule == "rego.tickets.deny"), "{:?}", d.reasons);
}

#[test]
fn bad_policies_are_refused_with_field_and_line() {
    let cases = [
        ("version = 1\n", "tiers"),
        ("version = 1\n[tiers.0]\napprovals = 0\n[tiers.2]\napprovals = 1\n", "missing 1"),
        ("version = 1\ndefault_tier = 3\n[tiers.0]\napprovals = 0\n", "default_tier"),
        ("version = 1\n[tiers.0]\napprovals = 1\n", "tiers.0.approvals"),
        ("version = 1\n[tiers.0]\napprovals = 0\n[tiers.1]\napprovals = 1\nmax_age = \"soon\"\n", "max_age"),
        (
            "version = 1\n[tiers.0]\napprovals = 0\n[[rego]]\nname = \"x\"\nsource = \"package edgerunner\\ndeny contains if {\"\n",
            "rego module `x`",
        ),
        ("version = 1\n[tiers.0]\napprovals = 0\n[[rules]]\nname = \"r\"\ntier = 4\nreason = \"x\"\n", "rules.r.tier"),
        ("version = 1\n[tiers.0]\napprovals = 0\nsurprise = true\n", "line 4"),
        ("version = 2\n", "version 2"),
    ];
    for (text, want) in cases {
        let e = Policy::from_toml(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
    }
}

fn random_graph(n: usize, edges: &[(usize, usize)], tags: &[(usize, usize)]) -> String {
    const TAGS: [&str; 4] = ["auth", "payments", "revenue-path", "irreversible"];
    let mut s = String::from("version = 1\n");
    for i in 0..n {
        let deps: Vec<String> = edges.iter().filter(|(a, _)| *a == i).map(|(_, b)| format!("\"n{b}\"")).collect();
        let t: Vec<String> = tags.iter().filter(|(a, _)| *a == i).map(|(_, k)| format!("\"{}\"", TAGS[*k])).collect();
        let crit = ["low", "medium", "high", "critical"][i % 4];
        s.push_str(&format!(
            "[[nodes]]\nid = \"n{i}\"\ncriticality = \"{crit}\"\ntags = [{}]\ndepends_on = [{}]\n",
            t.join(","),
            deps.join(",")
        ));
    }
    s
}

proptest! {
    /// Adding an edge or a tag never lowers a tier (nor turns a denial into an allow).
    #[test]
    fn more_edges_or_tags_never_lower_the_tier(
        edges in proptest::collection::vec((0usize..12, 0usize..12), 0..30),
        tags in proptest::collection::vec((0usize..12, 0usize..4), 0..10),
        extra_edge in (0usize..12, 0usize..12),
        extra_tag in (0usize..12, 0usize..4),
        touched in proptest::collection::vec((0usize..12, any::<bool>()), 1..4),
    ) {
        let text = format!("{POLICY}{}", signer_block("agent", "\"*\""));
        let p = Policy::from_toml(&text).unwrap();
        let mut i = input(&[], Kind::Remediation);
        i.nodes = BTreeMap::new();
        let mut mounts = Vec::new();
        for (k, (node, w)) in touched.iter().enumerate() {
            i.nodes.insert(format!("m{k}"), format!("n{node}"));
            mounts.push(GrantedMount { name: format!("m{k}"), writable: *w });
        }
        i.grant.mounts = mounts;
        let before = p.decide(&Graph::from_toml(&random_graph(12, &edges, &tags)).unwrap(), &i);
        let mut more_edges = edges.clone();
        more_edges.push(extra_edge);
        let mut more_tags = tags.clone();
        more_tags.push(extra_tag);
        for g in [random_graph(12, &more_edges, &tags), random_graph(12, &edges, &more_tags)] {
            let after = p.decide(&Graph::from_toml(&g).unwrap(), &i);
            prop_assert!(after.tier >= before.tier, "{:?} -> {:?}", before.reasons, after.reasons);
            prop_assert!(before.allowed || !after.allowed);
        }
    }
}
