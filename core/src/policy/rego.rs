//! Custom rules in Rego, evaluated with `regorus` over the decision's input
//! document. Only deterministic builtins are compiled in (no time, no
//! network), so replaying a decision gives the same answer. A rule can deny or
//! raise the tier; an attempt to lower it is ignored and says so; a rule that
//! cannot be evaluated denies (fail closed).

use super::{DecisionInput, Derivation, Reason};
use crate::graph::Graph;

/// The document Rego rules see as `input`.
pub(super) fn input_document(graph: &Graph, input: &DecisionInput, d: &Derivation, tier: u8) -> serde_json::Value {
    let mut capsule = serde_json::json!({"digest": input.capsule, "name": input.name, "kind": input.kind});
    // Absent, not null, when there is no ticket: `not input.capsule.ticket` must hold.
    if let Some(ticket) = &input.ticket {
        capsule["ticket"] = ticket.as_str().into();
    }
    serde_json::json!({
        "capsule": capsule,
        "signer": {"name": input.signer, "transparency": input.transparency},
        "grant": input.grant,
        "endpoints": input.endpoints,
        "derivation": d,
        "tier": tier,
        "graph": {"digest": graph.digest()},
    })
}

/// Evaluate `data.edgerunner.deny` and `data.edgerunner.raise`.
pub(super) fn apply(
    engine: &regorus::Engine,
    rule_name: &str,
    doc: &serde_json::Value,
    top: u8,
    tier: &mut u8,
    deny: &mut Vec<Reason>,
    reasons: &mut Vec<Reason>,
) {
    let mut engine = engine.clone();
    let fail = |deny: &mut Vec<Reason>, what: String| {
        deny.push(Reason::new(format!("rego.{rule_name}"), format!("could not evaluate: {what}")));
    };
    let value = match regorus::Value::from_json_str(&doc.to_string()) {
        Ok(v) => v,
        Err(e) => return fail(deny, format!("input document: {e}")),
    };
    engine.set_input(value);
    for (rule, is_deny) in [("data.edgerunner.deny", true), ("data.edgerunner.raise", false)] {
        // A query (not eval_rule) so that a module defining only one of the
        // two rules leaves the other undefined instead of failing.
        let results = match engine.eval_query(rule.to_owned(), false) {
            Ok(r) => r,
            Err(e) => return fail(deny, format!("{rule}: {e}")),
        };
        let Some(v) = results.result.into_iter().next().and_then(|r| r.expressions.into_iter().next()).map(|e| e.value)
        else {
            continue;
        };
        if v == regorus::Value::Undefined {
            continue;
        }
        let json: serde_json::Value = match v.to_json_str().ok().and_then(|s| serde_json::from_str(&s).ok()) {
            Some(j) => j,
            None => return fail(deny, format!("{rule}: unreadable result")),
        };
        let items = match json {
            serde_json::Value::Array(a) => a,
            other => vec![other],
        };
        for item in items {
            if is_deny {
                let text = item.as_str().map(str::to_owned).unwrap_or_else(|| item.to_string());
                deny.push(Reason::new(format!("rego.{rule_name}.deny"), text));
                continue;
            }
            let t = item.get("tier").and_then(serde_json::Value::as_u64);
            let why = item.get("reason").and_then(serde_json::Value::as_str).unwrap_or("(no reason given)").to_owned();
            match t {
                Some(t) if t > u64::from(top) => {
                    deny.push(Reason::new(
                        format!("rego.{rule_name}.raise"),
                        format!("raises to undefined tier {t}: {why}"),
                    ));
                }
                Some(t) if t as u8 > *tier => {
                    *tier = t as u8;
                    reasons.push(Reason::new(format!("rego.{rule_name}.raise"), format!("tier {t}: {why}")));
                }
                Some(t) => reasons.push(Reason::new(
                    format!("rego.{rule_name}.raise"),
                    format!(
                        "ignored: tier {t} would not raise tier {} ({why}); Rego can only make decisions stricter",
                        *tier
                    ),
                )),
                None => fail(deny, format!("raise entry without a numeric tier: {item}")),
            }
        }
    }
}
