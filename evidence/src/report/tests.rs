//! Reports of synthetic bundles with tier-0 and approved tier-2 proposals:
//! what a reviewer must see, filters, JSON, and hostile text.

use std::sync::OnceLock;

use super::*;
use crate::synth::{self, Spec};
use crate::{Level, Verified, parse_keys, verify};

const ORIGIN: &str = "synthetic.example/runner-1";

/// 12 runs, 9 proposals: 1, 2, 4, 5, 7 and 8 are tier-0 cleanups, 3, 6 and
/// 9 tier-2 config changes (two runs each).
fn bundle() -> &'static synth::Synthetic {
    static B: OnceLock<synth::Synthetic> = OnceLock::new();
    B.get_or_init(|| synth::bundle(ORIGIN, &Spec { runs: 12, tier2_every: Some(3), ..Spec::default() }))
}

fn verified() -> Verified {
    let s = bundle();
    verify(&s.bundle, &parse_keys(&s.vkey).unwrap(), Level::Full).unwrap()
}

fn opts() -> Options {
    Options { generated_at: "2026-12-03T10:00:00Z".parse().unwrap(), filter: Filter::default() }
}

/// The text between `<section … id="{id}"` and its end.
fn section<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page.find(&format!("<section class=\"proposal\" id=\"{id}\"")).expect("the proposal's section");
    let len = page[start..].find("</section>").unwrap();
    &page[start..start + len]
}

fn tier2_id(v: &Verified) -> String {
    edge_core::lifecycle::index(&v.records).into_iter().find(|p| p.tier == Some(2)).unwrap().id
}

#[test]
fn a_synthetic_tier_2_bundle_verifies_with_its_quorum_replayed() {
    let v = verified();
    assert_eq!(v.runs.len(), 12);
    let approved: Vec<_> = v.runs.iter().filter(|r| r.quorum.is_some()).collect();
    assert_eq!(approved.len(), 3);
    let q = approved[0].quorum.as_ref().unwrap();
    assert!(q.outcome.is_met());
    let alice = &q.approvers[0];
    assert_eq!((alice.principal.as_str(), alice.roles.as_slice()), ("alice@bank.example", &["sre".to_owned()][..]));
    assert!(alice.counted && alice.key.starts_with("SHA256:"));
    assert!(alice.comment.as_deref().unwrap().contains("512 is the baseline"));
    assert!(alice.issued_at.ends_with('Z'), "{}", alice.issued_at);
    assert_eq!(approved[0].provenance.as_ref().unwrap().ticket.as_deref(), Some("SYN-2"));
    assert_eq!(approved[0].verify_summary.as_deref(), Some("max_connections is 512"));
}

#[test]
fn the_html_report_tells_a_tier_2_proposal_from_submission_to_commit() {
    let v = verified();
    let page = html_with(&v, &opts());
    let id = tier2_id(&v);
    let s = section(&page, &id);
    // The state of the proposal, not of its first run.
    assert!(s.contains("<span class=\"state s-committed\">committed</span>"), "{s}");
    assert!(!s.contains("s-awaiting-approval"), "{s}");
    // Both runs, each with its outcome.
    assert!(s.contains(": awaiting-approval —") && s.contains(": committed —"), "{s}");
    // The diff, from the preview: exact bytes, the changed line.
    assert!(s.contains("<div class=\"dl add\">+max_connections = 512</div>"), "{s}");
    assert!(s.contains("<div class=\"dl del\">-max_connections = 100</div>"), "{s}");
    assert!(s.contains("data-shown=\"exact\""));
    assert!(s.contains("Change — committed"));
    // The tier and the rule behind it.
    assert!(s.contains("Allowed at tier 2") && s.contains("2 approval(s) from sre, payments-owner"), "{s}");
    assert!(
        s.contains("<code>rules.revenue-path-writes</code>") && s.contains("a write reaches the revenue path"),
        "{s}"
    );
    // The blast radius, with its picture.
    assert!(s.contains("payments-config (write via <code>config</code>)"), "{s}");
    assert!(s.contains("<th>Most critical</th>") && s.contains("<th>Sensitive tags</th>"));
    assert!(s.contains("<svg class=\"blast\"") && s.contains(">storefront</text>"), "{s}");
    // The quorum: who, role, key, time, comment, counted.
    assert!(s.contains("met: 2 of 2 approval(s)"), "{s}");
    for (who, role) in [("alice@bank.example", "sre"), ("carol@bank.example", "payments-owner")] {
        let row = s.split("<tr class=\"approver ").find(|r| r.contains(&format!("data-principal=\"{who}\""))).unwrap();
        assert!(row.starts_with("counted\""), "{row}");
        assert!(row.contains(&format!("<td>{role}</td>")) && row.contains("<code>SHA256:"), "{row}");
        assert!(row.contains(&format!("{who}: checked the diff, 512 is the baseline")), "{row}");
    }
    // Provenance, verify.
    assert!(s.contains("<th>Ticket</th><td>SYN-2</td>") && s.contains("<th>Model</th><td>synthetic-model-1</td>"));
    assert!(s.contains("Connection pool exhaustion"));
    assert!(s.contains("<span class=\"pass\">passed</span>") && s.contains("max_connections is 512"));
    // Authorized by the two approvers.
    assert!(s.contains("<th>Authorized by</th><td>alice@bank.example, carol@bank.example</td>"), "{s}");
}

#[test]
fn every_page_has_the_summary_the_generation_time_the_version_and_loads_nothing() {
    let v = verified();
    let page = html_with(&v, &opts());
    assert!(page.contains("<table id=\"by-state\">") && page.contains("<table id=\"by-tier\">"));
    assert!(page.contains(
        "<tr data-state=\"committed\"><td><span class=\"state s-committed\">committed</span></td><td>9</td></tr>"
    ));
    assert!(page.contains("<tr data-tier=\"2\"><td>tier 2</td><td>3</td><td>3 committed</td></tr>"), "{page}");
    assert!(page.contains("<td>alice@bank.example</td><td>3</td><td>0</td><td>0</td><td>0</td>"));
    assert!(page.contains("2026-12-03T10:00:00Z") && page.contains(&format!("edge-verify {VERIFIER_VERSION}")));
    assert!(page.contains("@media print{"));
    assert!(page.contains("default-src 'none'"));
    for external in ["<script", "src=", "href=\"http", "<link", "url(", "@import", "<iframe", "<object"] {
        assert!(!page.contains(external), "the page must load nothing: found {external}");
    }
    assert_eq!(page.matches("<tr class=\"run\"").count(), 12, "every run listed");
    assert_eq!(page.matches("<section class=\"proposal\"").count(), 9, "one section per proposal");
    // Tier-0 proposals are authorized by policy, with their diff too.
    assert!(page.contains("<td>policy (tier 0, no human)</td>"));
    assert!(page.contains("<div class=\"dl del\">-old log</div>"));
    let failed = html_failed_with(&crate::Failure::bundle("tree.root", "<b>x</b>"), &opts());
    assert!(failed.contains("class=\"failed\">FAILED") && failed.contains("&lt;b&gt;x&lt;/b&gt;"));
    assert!(failed.contains("2026-12-03T10:00:00Z") && !failed.contains("<section"));
}

#[test]
fn filters_restrict_what_is_listed_and_say_so() {
    let v = verified();
    let with = |f: Filter| html_with(&v, &Options { filter: f, ..opts() });
    let mut f = Filter::default();
    f.add_tiers("2").unwrap();
    let page = with(f.clone());
    assert_eq!(page.matches("<section class=\"proposal\"").count(), 3);
    assert!(page.contains("3 of 9 (filter: tier 2)"), "the page says what it left out");
    assert!(page.contains("of the 3 proposal(s) listed"), "and what its summary counts");
    assert_eq!(page.matches("<tr class=\"run\"").count(), 6, "the runs of listed proposals");

    let mut f = Filter::default();
    f.add_states("awaiting-approval,refused").unwrap();
    assert_eq!(with(f).matches("<section class=\"proposal\"").count(), 0);

    // Time: the first proposal is submitted at record 2 (second 1_795_000_002).
    let at = |s: i64| jiff::Timestamp::from_second(1_795_000_000 + s).unwrap();
    let f = Filter { until: Some(at(3)), ..Filter::default() };
    assert_eq!(with(f).matches("<section class=\"proposal\"").count(), 1);
    let f = Filter { since: Some(at(3)), ..Filter::default() };
    assert_eq!(with(f).matches("<section class=\"proposal\"").count(), 8);
    let text = text_with(&v, &Options { filter: Filter { since: Some(at(3)), ..Filter::default() }, ..opts() });
    assert!(text.contains("8 of 9 listed (filter: submitted from"), "{text}");

    assert!(Filter::default().describe().is_empty());
    assert!(Filter::default().add_tiers("10").is_err());
    assert!(Filter::parse_time("2026-03-01").is_ok() && Filter::parse_time("March").is_err());
}

#[test]
fn the_text_report_is_by_proposal_with_the_diff_and_quorum() {
    let v = verified();
    let t = text_with(&v, &opts());
    assert!(t.starts_with("EVIDENCE REPORT: VERIFIED (Full verification)\ngenerated   2026-12-03T10:00:00Z"));
    assert_eq!(t.matches("\nproposal p-").count(), 9);
    let id = tier2_id(&v);
    let start = t.find(&format!("proposal {id}  [committed]")).expect("committed, by proposal");
    let s = &t[start..t[start + 1..].find("\nproposal ").map_or(t.len(), |e| start + 1 + e)];
    assert!(s.contains("      +max_connections = 512"), "{s}");
    assert!(s.contains("rule      [rules.revenue-path-writes]"), "{s}");
    assert!(s.contains("quorum      met: 2 of 2 approval(s)"), "{s}");
    assert!(s.contains("approve carol@bank.example [payments-owner] key SHA256:"), "{s}");
    assert!(s.contains("comment \"carol@bank.example: checked the diff"), "{s}");
    assert!(s.contains("touched     payments-config (write via config)"), "{s}");
    assert!(s.contains("ticket      SYN-2"), "{s}");
    assert!(t.contains("  tier 2       3 (3 committed)"), "{t}");
}

#[test]
fn json_has_the_result_and_a_summary_of_each_proposal() {
    let v = verified();
    let j = json(&v, &opts());
    assert_eq!(j["verified"], true);
    assert_eq!(j["verifier_version"], VERIFIER_VERSION);
    assert_eq!(j["generated_at"], "2026-12-03T10:00:00Z");
    assert_eq!((j["runs"].as_u64(), j["proposals_total"].as_u64()), (Some(12), Some(9)));
    assert_eq!(j["summary"]["by_state"]["committed"], 9);
    let id = tier2_id(&v);
    let p = j["proposals"].as_array().unwrap().iter().find(|p| p["id"] == id.as_str()).unwrap();
    assert_eq!(p["state"], "committed");
    assert_eq!(p["tier"], 2);
    assert_eq!(p["reasons"][0]["rule"], "rules.revenue-path-writes");
    assert_eq!(p["changes"][0]["added"], 1);
    assert_eq!(p["quorum"][0]["outcome"]["result"], "met");
    assert_eq!(p["quorum"][0]["approvers"][1]["roles"][0], "payments-owner");
    assert_eq!(p["blast_radius"]["touched"][0]["node"], "payments-config");
    assert_eq!(p["provenance"]["ticket"], "SYN-2");
    assert_eq!(p["runs"].as_array().unwrap().len(), 2);
    let failed = json_failed(&crate::Failure::bundle("tree.root", "x"), &opts());
    assert_eq!((failed["verified"].as_bool(), failed["failure"]["check"].as_str()), (Some(false), Some("tree.root")));
}

/// Text a capsule, client or approver wrote: markup, an escape sequence that
/// clears the screen, a bidi override, a newline that starts a fake line.
const HOSTILE: &str = "<img src=x onerror=alert(1)>\u{1b}[2J\u{202e}gpj.exe\nproposal p-fake  [committed]";

#[test]
fn hostile_text_is_neutralised_in_every_report() {
    let mut v = verified();
    let id = tier2_id(&v);
    for r in &mut v.runs {
        r.plan_summary = Some(HOSTILE.into());
        r.verify_summary = Some(HOSTILE.into());
        r.refusals.push(("apply".into(), HOSTILE.into(), HOSTILE.into()));
        if let Some(p) = &mut r.provenance {
            p.rationale = Some(HOSTILE.into());
        }
        if let Some(q) = &mut r.quorum {
            q.approvers[0].comment = Some(HOSTILE.into());
            q.approvers[1].principal = HOSTILE.into();
        }
    }
    let page = html_with(&v, &opts());
    let s = section(&page, &id);
    assert!(!page.contains("<img"), "markup is escaped");
    assert!(s.contains("&lt;img src=x onerror=alert(1)&gt;\\u{001b}[2J\\u{202e}gpj.exe\\nproposal p-fake"), "{s}");
    for raw in ['\u{1b}', '\u{202e}'] {
        assert!(!page.contains(raw), "{raw:?} reached the page");
    }
    let text = text_with(&v, &opts());
    assert!(!text.contains('\u{1b}') && !text.contains('\u{202e}'));
    assert!(!text.contains("\nproposal p-fake"), "a field cannot start a line of its own");
    assert!(text.contains("\\u{001b}[2J\\u{202e}gpj.exe\\nproposal p-fake"));
    let json = serde_json::to_string(&json(&v, &opts())).unwrap();
    let mut out = Vec::new();
    std::io::Write::write_all(&mut edge_core::text::Terminal::new(&mut out), json.as_bytes()).unwrap();
    let shown = String::from_utf8(out).unwrap();
    assert!(!shown.contains('\u{202e}') && !shown.contains('\u{1b}'));
    let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(back["verified"], true, "still valid JSON meaning the same");
}

#[test]
fn esc_neutralises_controls_bidi_and_markup() {
    assert_eq!(esc("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
    assert_eq!(esc("x\u{202e}y\u{200b}z\u{7}\r"), "x\\u{202e}y\\u{200b}z\\u{0007}\\r");
    assert_eq!(esc("\u{2066}\u{feff}\u{9b}"), "\\u{2066}\\u{feff}\\u{009b}");
}

#[test]
fn a_wide_blast_radius_draws_thirty_nodes_and_a_long_diff_is_shown_whole() {
    let s = synth::bundle(
        ORIGIN,
        &Spec { runs: 2, tier2_every: Some(1), extra_graph_nodes: 2000, config_lines: 300, ..Spec::default() },
    );
    let v = verify(&s.bundle, &parse_keys(&s.vkey).unwrap(), Level::Full).unwrap();
    let page = html_with(&v, &opts());
    let sec = section(&page, &tier2_id(&v));
    assert!(sec.contains("2003 node(s): "), "{}", &sec[..sec.len().min(4000)]);
    assert_eq!(sec.matches("<g class=\"node\">").count(), blast::MAX_DRAWN);
    assert!(sec.contains(&format!("{} more impacted node(s) not drawn", 2003 - blast::MAX_DRAWN)));
    assert_eq!(sec.matches("<div class=\"dl add\">").count(), 300);
    assert_eq!(sec.matches("<div class=\"dl del\">").count(), 300);
    assert!(sec.contains("(+300 −300)"));
}

#[test]
fn every_report_names_the_runner_build_that_executed_each_run() {
    let s = synth::bundle(ORIGIN, &Spec { runs: 4, tier2_every: Some(3), runner_started: true, ..Spec::default() });
    let v = verify(&s.bundle, &parse_keys(&s.vkey).unwrap(), Level::Full).unwrap();
    let (binary, version, revision) = synth::SYNTHETIC_BUILD;
    // Every run started after the one `runner-started` record (record 2).
    assert!(v.runs.iter().all(|r| r.build.as_ref().is_some_and(|b| b.record == 2 && b.binary.to_string() == binary)));
    // It names the config as shown, which the bundle carries.
    let shown = edge_core::Sha256Digest::of(synth::SYNTHETIC_CONFIG_SHOWN.as_bytes());
    assert!(v.runs.iter().all(|r| r.build.as_ref().is_some_and(|b| b.config_shown == Some(shown))));
    assert!(v.artifacts.contains_key(&shown));
    // `edge-verify`'s own summary names it too.
    let line = format!(
        "runner build edge-runner {version} (rev 0123456789ab, binary {binary}): 4 run(s), started at record 2"
    );
    assert_eq!(v.build_notes(), [line]);
    let page = html_with(&v, &opts());
    let builds = &page[page.find("<ul id=\"runner-builds\">").expect("the builds")..];
    let builds = &builds[..builds.find("</ul>").unwrap()];
    assert!(builds.contains(&format!("<span class=\"version\">{version}</span>")), "{builds}");
    assert!(builds.contains(&format!("<code>{revision}</code>")) && builds.contains(binary), "{builds}");
    assert!(builds.contains(": 4 run(s), started"), "{builds}");
    // Each run's row names it, and so does each proposal's list of runs.
    let rows: Vec<&str> = page.split("<tr class=\"run\"").skip(1).collect();
    assert_eq!(rows.len(), 4);
    for row in rows {
        let cell = &row[row.find("<td class=\"build\">").unwrap()..];
        assert!(
            cell.starts_with(&format!("<td class=\"build\">{version} (rev 0123456789ab, binary {binary})")),
            "{cell}"
        );
    }
    assert!(section(&page, &tier2_id(&v)).contains(&format!("by edge-runner {version} (rev 0123456789ab")));
    let text = text_with(&v, &opts());
    assert!(text.contains(&format!("build       edge-runner {version} (rev 0123456789ab, binary {binary}): 4 run(s)")));
    let json = json(&v, &opts());
    assert_eq!(json["runner_builds"][0]["build"]["binary"], binary);
    assert_eq!(json["proposals"][0]["runs"][0]["runner_build"]["version"], version);

    // A log without the record says so rather than guessing.
    let v = verified();
    assert!(v.runs.iter().all(|r| r.build.is_none()) && v.build_notes().is_empty());
    let page = html_with(&v, &opts());
    assert!(page.contains("12 run(s) with no runner-started record before them in this bundle"), "unknown builds");
    assert!(page.contains("<td class=\"build\">unknown</td>"));
}
