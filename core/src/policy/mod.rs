//! The policy plane: what is allowed at all, at which risk tier, with which
//! approvals — derived from the blast radius of what a capsule is *granted*
//! in a model of the system, never from what it claims about itself.
//!
//! Evaluation ([`Policy::decide`]) is pure and deterministic: the same policy,
//! graph, capsule and grant always give the same [`Decision`], so an offline
//! verifier can replay it from exported evidence. Checklist, in order:
//! 1. the signer is trusted by the policy and may request this kind, these
//!    mounts (read or write), these endpoints, without/with a log entry;
//! 2. the derivation: touched nodes (from granted mounts), impacted nodes
//!    (everything that transitively depends on them), most critical impacted
//!    node, sensitive tags reached, score (writes count double);
//! 3. explicit denials;
//! 4. tier rules: the tier is the highest tier of every matching rule, or the
//!    default. Conditions are monotone (a larger blast radius can only match
//!    more rules), so adding an edge or a tag never lowers a tier;
//! 5. never-automate: touching a listed tag or node forces at least tier 1;
//! 6. Rego rules may deny or raise the tier, never lower it;
//! 7. the final tier's capability ceilings (writes, endpoints, limits).
//!
//! The policy document is TOML; its SHA-256 (of the exact bytes, Rego sources
//! included since they are inline) is the policy digest recorded in every
//! decision and, later, bound into every approval.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::admission::Grant;
use crate::digest::Sha256Digest;
use crate::graph::{Criticality, Graph, NodeSet};
use crate::manifest::Kind;
use crate::signature::{Transparency, TrustedSigner};

pub mod check;
mod rego;

/// The policy schema version this runner reads.
pub const POLICY_VERSION: u32 = 1;
/// Highest tier a policy may define.
pub const MAX_TIER: u8 = 9;
/// Impacted nodes listed by name in a decision (the count is always exact).
pub const MAX_LISTED_IMPACTED: usize = 50;
/// Tags reported as "sensitive" unless the policy says otherwise.
pub const DEFAULT_SENSITIVE_TAGS: &[&str] = &["auth", "payments", "regulated-data", "revenue-path", "irreversible"];

// ---------------------------------------------------------------- document

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    version: u32,
    #[serde(default)]
    name: String,
    #[serde(default)]
    signers: Vec<SignerSpec>,
    #[serde(default)]
    sensitive_tags: Option<Vec<String>>,
    #[serde(default)]
    never_automate: NeverAutomateSpec,
    #[serde(default)]
    default_tier: u8,
    #[serde(default)]
    rules: Vec<RuleSpec>,
    #[serde(default)]
    deny: Vec<DenySpec>,
    #[serde(default)]
    tiers: BTreeMap<String, TierSpec>,
    #[serde(default)]
    rego: Vec<RegoSpec>,
}

/// A trusted signer and what it may request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SignerSpec {
    pub name: String,
    /// Keyed: an SPKI PEM public key, inline so the policy digest covers it.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Keyless: exact certificate identity and OIDC issuer.
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    /// Capsule kinds it may submit (default: both).
    #[serde(default = "all_kinds")]
    pub kinds: Vec<Kind>,
    /// Mounts it may request at all (`"*"`: any).
    #[serde(default)]
    pub mounts: Vec<String>,
    /// Mounts it may request write access to (`"*"`: any).
    #[serde(default)]
    pub writable_mounts: Vec<String>,
    /// Endpoints it may request (`"*"`: any).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Require a verified transparency-log entry (refuses offline keyed signatures).
    #[serde(default)]
    pub require_tlog: bool,
}

fn all_kinds() -> Vec<Kind> {
    vec![Kind::Diagnostic, Kind::Remediation]
}

/// Surfaces whose touch always needs a human.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NeverAutomateSpec {
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub nodes: Vec<String>,
    /// `any` (default): any granted access counts as a touch; `write`: only write access.
    #[serde(default)]
    pub access: TouchAccess,
    /// The tier a touch forces at least (default 1; never 0).
    #[serde(default = "one")]
    pub min_tier: u8,
}

fn one() -> u8 {
    1
}

impl Default for NeverAutomateSpec {
    fn default() -> Self {
        Self { tags: Vec::new(), nodes: Vec::new(), access: TouchAccess::Any, min_tier: 1 }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TouchAccess {
    #[default]
    Any,
    Write,
}

/// Conditions over the derivation. All given conditions must hold; an empty
/// condition always holds. Every condition is monotone in the graph: more
/// edges or tags can only make it hold in more cases.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The grant includes (true) or excludes (false) write access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<bool>,
    /// The grant includes network endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// Signed by one of these signers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signer_any: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub touched_nodes_any: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub impacted_nodes_any: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub touched_tags_any: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub impacted_tags_any: Vec<String>,
    /// Tags reached through write access (what written nodes impact).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_impacted_tags_any: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_impacted: Option<usize>,
    /// The most critical impacted node is at least this critical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_criticality: Option<Criticality>,
    /// The most critical node reached through writes is at least this critical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_write_criticality: Option<Criticality>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default)]
    pub when: Condition,
    pub tier: u8,
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DenySpec {
    pub name: String,
    #[serde(default)]
    pub when: Condition,
    pub reason: String,
}

/// What a tier requires and allows.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    /// Approvals required (0 for automatic).
    #[serde(default)]
    pub approvals: u32,
    /// Roles an approver must hold (any of them); empty = any registered approver.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Approvals must come from distinct people and keys.
    #[serde(default = "yes")]
    pub distinct: bool,
    /// Oldest acceptable approval, e.g. `"4h"`, `"30m"`, `"2d"`.
    #[serde(default = "default_age")]
    pub max_age: String,
    /// How long a proposal may wait for its approvals before it expires
    /// (default: the runner's, 24h).
    #[serde(default)]
    pub expires_after: Option<String>,
    #[serde(default = "yes")]
    pub allow_writes: bool,
    #[serde(default)]
    pub allow_endpoints: bool,
    #[serde(default)]
    pub max_memory_mib: Option<u64>,
    #[serde(default)]
    pub max_cpu_ms: Option<u64>,
    #[serde(default)]
    pub max_wall_ms: Option<u64>,
}

fn yes() -> bool {
    true
}
fn default_age() -> String {
    "24h".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegoSpec {
    pub name: String,
    /// Rego source (package `edgerunner`); may define `deny` (a set of
    /// strings) and `raise` (a set of `{"tier": n, "reason": s}`).
    pub source: String,
}

// ---------------------------------------------------------------- errors

/// Why a policy was refused at load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("{0}")]
    Parse(String),
    #[error("policy version {0} is not supported (expected {POLICY_VERSION})")]
    Version(u32),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("rego module `{name}`: {reason}")]
    Rego { name: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError::Invalid { field: field.into(), reason: reason.into() }
}

// ---------------------------------------------------------------- compiled policy

/// A compiled, immutable policy.
pub struct Policy {
    spec: PolicySpec,
    digest: Sha256Digest,
    tiers: Vec<TierRequirement>,
    signers: Vec<TrustedSigner>,
    sensitive: BTreeSet<String>,
    rego: Option<regorus::Engine>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy").field("name", &self.spec.name).field("digest", &self.digest).finish_non_exhaustive()
    }
}

/// Approvals a tier requires (what approvers must satisfy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierRequirement {
    pub tier: u8,
    pub approvals: u32,
    pub roles: Vec<String>,
    pub distinct: bool,
    pub max_age_secs: u64,
    /// How long a proposal may wait for approvals (None: the runner default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_after_secs: Option<u64>,
    pub allow_writes: bool,
    pub allow_endpoints: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wall_ms: Option<u64>,
}

/// Parse `"90s"`, `"30m"`, `"4h"`, `"2d"` into seconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let (num, unit) = s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mul).filter(|v| *v > 0)
}

impl Policy {
    /// Parse and compile a policy document.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the field (and, for syntax errors, the line).
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let spec: PolicySpec = toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        if spec.version != POLICY_VERSION {
            return Err(PolicyError::Version(spec.version));
        }
        let mut tiers = Vec::new();
        for (key, t) in &spec.tiers {
            let tier: u8 = key.parse().map_err(|_| invalid(format!("tiers.{key}"), "tier names are numbers 0-9"))?;
            if tier > MAX_TIER {
                return Err(invalid(format!("tiers.{key}"), format!("tiers go up to {MAX_TIER}")));
            }
            let max_age_secs = parse_duration(&t.max_age).ok_or_else(|| {
                invalid(format!("tiers.{key}.max_age"), "use a duration like \"30m\", \"4h\", \"2d\"")
            })?;
            let expires_after_secs = match &t.expires_after {
                Some(s) => Some(parse_duration(s).filter(|n| *n > 0).ok_or_else(|| {
                    invalid(format!("tiers.{key}.expires_after"), "use a positive duration like \"24h\" or \"3d\"")
                })?),
                None => None,
            };
            if tier == 0 && t.approvals > 0 {
                return Err(invalid("tiers.0.approvals", "tier 0 is the automatic tier and cannot require approvals"));
            }
            if tier > 0 && t.approvals == 0 {
                return Err(invalid(format!("tiers.{key}.approvals"), "tiers above 0 need at least one approval"));
            }
            tiers.push(TierRequirement {
                tier,
                approvals: t.approvals,
                roles: t.roles.clone(),
                distinct: t.distinct,
                max_age_secs,
                expires_after_secs,
                allow_writes: t.allow_writes,
                allow_endpoints: t.allow_endpoints,
                max_memory_mib: t.max_memory_mib,
                max_cpu_ms: t.max_cpu_ms,
                max_wall_ms: t.max_wall_ms,
            });
        }
        tiers.sort_by_key(|t| t.tier);
        for (i, t) in tiers.iter().enumerate() {
            if t.tier as usize != i {
                return Err(invalid("tiers", format!("tiers must be numbered 0, 1, 2, … without gaps (missing {i})")));
            }
        }
        if tiers.is_empty() {
            return Err(invalid("tiers", "define at least tier 0 (`[tiers.0]`)"));
        }
        let top = tiers.len() as u8 - 1;
        let check_tier = |field: String, t: u8| {
            if t > top { Err(invalid(field, format!("tier {t} is not defined (highest is {top})"))) } else { Ok(()) }
        };
        check_tier("default_tier".into(), spec.default_tier)?;
        let na = &spec.never_automate;
        if !na.tags.is_empty() || !na.nodes.is_empty() {
            if na.min_tier == 0 {
                return Err(invalid("never_automate.min_tier", "never-automate surfaces need at least tier 1"));
            }
            check_tier("never_automate.min_tier".into(), na.min_tier)?;
        }
        let mut names = BTreeSet::new();
        for r in &spec.rules {
            if !names.insert(r.name.as_str()) {
                return Err(invalid(format!("rules.{}", r.name), "rule names must be unique"));
            }
            check_tier(format!("rules.{}.tier", r.name), r.tier)?;
            if r.reason.trim().is_empty() {
                return Err(invalid(format!("rules.{}.reason", r.name), "say why, for the approver"));
            }
        }
        for d in &spec.deny {
            if !names.insert(d.name.as_str()) {
                return Err(invalid(format!("deny.{}", d.name), "rule names must be unique"));
            }
        }
        let mut signers = Vec::new();
        let mut signer_names = BTreeSet::new();
        for s in &spec.signers {
            if !signer_names.insert(s.name.as_str()) {
                return Err(invalid(format!("signers.{}", s.name), "listed twice"));
            }
            let signer = match (&s.public_key, &s.identity, &s.issuer) {
                (Some(pem), None, None) => TrustedSigner::from_public_key_pem(&s.name, pem)
                    .map_err(|e| invalid(format!("signers.{}.public_key", s.name), e.to_string()))?,
                (None, Some(id), Some(iss)) => TrustedSigner::keyless(&s.name, id, iss),
                _ => {
                    return Err(invalid(
                        format!("signers.{}", s.name),
                        "give `public_key` (keyed) or both `identity` and `issuer` (keyless)",
                    ));
                }
            };
            signers.push(signer);
        }
        let rego = if spec.rego.is_empty() {
            None
        } else {
            let mut engine = regorus::Engine::new();
            for r in &spec.rego {
                engine
                    .add_policy(format!("{}.rego", r.name), r.source.clone())
                    .map_err(|e| PolicyError::Rego { name: r.name.clone(), reason: e.to_string() })?;
            }
            Some(engine)
        };
        let sensitive = match &spec.sensitive_tags {
            Some(v) => v.iter().cloned().collect(),
            None => DEFAULT_SENSITIVE_TAGS.iter().map(|s| (*s).to_owned()).collect(),
        };
        Ok(Self { digest: Sha256Digest::of(text.as_bytes()), spec, tiers, signers, sensitive, rego })
    }

    /// SHA-256 of the policy document (bound into decisions and approvals).
    pub fn digest(&self) -> Sha256Digest {
        self.digest
    }
    pub fn name(&self) -> &str {
        &self.spec.name
    }
    /// The trusted signers the policy defines.
    pub fn signers(&self) -> &[TrustedSigner] {
        &self.signers
    }
    pub fn signer_spec(&self, name: &str) -> Option<&SignerSpec> {
        self.spec.signers.iter().find(|s| s.name == name)
    }
    pub fn tiers(&self) -> &[TierRequirement] {
        &self.tiers
    }
    pub fn rules(&self) -> &[RuleSpec] {
        &self.spec.rules
    }
    pub fn denials(&self) -> &[DenySpec] {
        &self.spec.deny
    }
    pub fn never_automate(&self) -> &NeverAutomateSpec {
        &self.spec.never_automate
    }
    pub fn default_tier(&self) -> u8 {
        self.spec.default_tier
    }

    /// [`Policy::decide`], as the proof [`crate::authorize::decide`] takes:
    /// the only way for a runner to get a decision it can act on.
    pub fn evaluate(&self, graph: &Graph, input: &DecisionInput) -> crate::authorize::Evaluated {
        crate::authorize::Evaluated::new(self.decide(graph, input))
    }

    /// Decide. Pure and deterministic.
    pub fn decide(&self, graph: &Graph, input: &DecisionInput) -> Decision {
        let mut deny: Vec<Reason> = Vec::new();
        let mut reasons: Vec<Reason> = Vec::new();

        // 1. Signer permissions.
        match self.signer_spec(&input.signer) {
            None => {
                deny.push(Reason::new("signers", format!("signer `{}` is not trusted by this policy", input.signer)))
            }
            Some(s) => check_signer(s, input, &mut deny),
        }

        // 2. Derivation.
        let (derivation, sets) = derive(graph, &self.sensitive, input);

        // 3. Explicit denials.
        for d in &self.spec.deny {
            if matches(&d.when, graph, input, &derivation, &sets) {
                deny.push(Reason::new(format!("deny.{}", d.name), d.reason.clone()));
            }
        }

        // 4. Tier rules: the highest matching tier, or the default.
        let mut tier = self.spec.default_tier;
        let mut matched = false;
        for r in &self.spec.rules {
            if matches(&r.when, graph, input, &derivation, &sets) {
                matched = true;
                tier = tier.max(r.tier);
                reasons.push(Reason::new(format!("rules.{}", r.name), format!("tier {}: {}", r.tier, r.reason)));
            }
        }
        if !matched {
            reasons.push(Reason::new("default_tier", format!("tier {tier}: no tier rule matched")));
        }

        // 5. Never-automate.
        let na = &self.spec.never_automate;
        let touched_for_na: Vec<&TouchedNode> =
            derivation.touched.iter().filter(|t| na.access == TouchAccess::Any || t.access == Access::Write).collect();
        let mut hits: BTreeSet<String> = BTreeSet::new();
        for t in &touched_for_na {
            if na.nodes.contains(&t.node) {
                hits.insert(format!("node `{}`", t.node));
            }
            if let Some(i) = graph.index_of(&t.node) {
                for tag in graph.tags_in(graph.node(i).tag_mask) {
                    if na.tags.contains(&tag) {
                        hits.insert(format!("tag `{tag}` (node `{}`)", t.node));
                    }
                }
            }
        }
        if !hits.is_empty() {
            let forced = na.min_tier.max(1);
            tier = tier.max(forced);
            let list: Vec<String> = hits.into_iter().collect();
            reasons.push(Reason::new(
                "never_automate",
                format!("tier ≥ {forced}: touches never-automate {}; a human must authorize", list.join(", ")),
            ));
        }

        // 6. Rego: deny or raise, never lower.
        if let Some(engine) = &self.rego {
            let names: Vec<&str> = self.spec.rego.iter().map(|m| m.name.as_str()).collect();
            let doc = rego::input_document(graph, input, &derivation, tier);
            rego::apply(engine, &names.join(","), &doc, self.top_tier(), &mut tier, &mut deny, &mut reasons);
        }

        // 7. The final tier's ceilings.
        let req = self.tiers[tier as usize].clone();
        let writes = writes(input);
        if writes && !req.allow_writes {
            deny.push(Reason::new(format!("tiers.{tier}.allow_writes"), format!("tier {tier} allows no write access")));
        }
        if !input.endpoints.is_empty() && !req.allow_endpoints {
            deny.push(Reason::new(format!("tiers.{tier}.allow_endpoints"), format!("tier {tier} allows no endpoints")));
        }
        let l = &input.grant.limits;
        for (field, got, max) in [
            ("max_memory_mib", l.memory_mib, req.max_memory_mib),
            ("max_cpu_ms", l.cpu_ms, req.max_cpu_ms),
            ("max_wall_ms", l.wall_ms, req.max_wall_ms),
        ] {
            if let Some(max) = max
                && got > max
            {
                deny.push(Reason::new(
                    format!("tiers.{tier}.{field}"),
                    format!("{got} exceeds the tier {tier} ceiling of {max}"),
                ));
            }
        }

        let allowed = deny.is_empty();
        let mut all = deny;
        all.extend(reasons);
        Decision {
            allowed,
            tier,
            approvals_required: req.approvals,
            requirement: Some(req),
            reasons: all,
            policy: Some(self.digest),
            graph: Some(graph.digest()),
            derivation: Some(derivation),
        }
    }

    fn top_tier(&self) -> u8 {
        self.tiers.len() as u8 - 1
    }
}

fn permitted(list: &[String], name: &str) -> bool {
    list.iter().any(|x| x == "*" || x == name)
}

fn check_signer(s: &SignerSpec, input: &DecisionInput, deny: &mut Vec<Reason>) {
    let rule = format!("signers.{}", s.name);
    if !s.kinds.contains(&input.kind) {
        deny.push(Reason::new(&rule, format!("may not submit {:?} capsules", input.kind).to_lowercase()));
    }
    for m in &input.grant.mounts {
        if !permitted(&s.mounts, &m.name) && !permitted(&s.writable_mounts, &m.name) {
            deny.push(Reason::new(&rule, format!("may not request mount `{}`", m.name)));
        } else if m.writable && !permitted(&s.writable_mounts, &m.name) {
            deny.push(Reason::new(&rule, format!("may not request write access to mount `{}`", m.name)));
        }
    }
    for e in &input.endpoints {
        if !permitted(&s.endpoints, e) {
            deny.push(Reason::new(&rule, format!("may not request endpoint `{e}`")));
        }
    }
    if s.require_tlog && input.transparency != Transparency::Verified {
        deny.push(Reason::new(&rule, "requires a verified transparency-log entry; this signature has none"));
    }
}

// ---------------------------------------------------------------- input, derivation, decision

/// Everything a decision depends on: nothing else is consulted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionInput {
    pub capsule: Sha256Digest,
    pub name: String,
    pub kind: Kind,
    pub signer: String,
    pub transparency: Transparency,
    pub grant: Grant,
    /// Granted endpoints (logical names).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The granted endpoints whose configured methods only read (GET,
    /// HEAD): they touch their node for reading. Every other endpoint is a
    /// write to its node (the runner's config says, never the capsule).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_endpoints: Vec<String>,
    /// Mount (and endpoint) name → graph node, from the runner config.
    pub nodes: BTreeMap<String, String>,
    /// The ticket the capsule's provenance names (for governance rules; never used for risk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TouchedNode {
    pub node: String,
    /// The mount or endpoint that touches it.
    pub via: String,
    pub access: Access,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriticalNode {
    pub node: String,
    pub criticality: Criticality,
}

/// The blast radius, derived from the grant and the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Derivation {
    pub touched: Vec<TouchedNode>,
    /// Number of impacted nodes (touched nodes and all that transitively depend on them).
    pub impacted_count: usize,
    /// The first impacted nodes by name, most critical first (at most [`MAX_LISTED_IMPACTED`]).
    pub impacted: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub most_critical: Option<CriticalNode>,
    /// Every tag among impacted nodes.
    pub impacted_tags: Vec<String>,
    /// Tags reached through write access.
    pub write_impacted_tags: Vec<String>,
    /// Sensitive tags among impacted nodes.
    pub sensitive_tags: Vec<String>,
    /// Σ criticality weight over impacted nodes, counted twice when reached through writes.
    pub score: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_criticality: Option<Criticality>,
}

/// The node sets behind a derivation (kept for rule matching).
#[derive(Debug)]
pub struct Sets {
    touched: NodeSet,
    impacted: NodeSet,
    touched_tags: u64,
    impacted_tags: u64,
    write_tags: u64,
}

/// One reason, naming the rule that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub rule: String,
    pub text: String,
}

impl Reason {
    pub fn new(rule: impl Into<String>, text: impl Into<String>) -> Self {
        Self { rule: rule.into(), text: text.into() }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.rule, self.text)
    }
}

/// A policy decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    pub tier: u8,
    pub approvals_required: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirement: Option<TierRequirement>,
    /// Denials first, then the reasons for the tier.
    pub reasons: Vec<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Sha256Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<Sha256Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derivation: Option<Derivation>,
}

/// Whether the grant writes anything: a writable mount, or an endpoint
/// whose methods change things.
fn writes(input: &DecisionInput) -> bool {
    input.grant.mounts.iter().any(|m| m.writable) || input.endpoints.iter().any(|e| !input.read_endpoints.contains(e))
}

fn derive(graph: &Graph, sensitive: &BTreeSet<String>, input: &DecisionInput) -> (Derivation, Sets) {
    let n = graph.len();
    let mut touched_nodes = Vec::new();
    let mut touched = NodeSet::empty(n);
    let mut impacted = NodeSet::empty(n);
    let mut written = NodeSet::empty(n);
    let (mut touched_tags, mut impacted_tags, mut write_tags) = (0u64, 0u64, 0u64);
    let mut write_max: Option<Criticality> = None;
    let touches =
        input.grant.mounts.iter().map(|m| (&m.name, if m.writable { Access::Write } else { Access::Read })).chain(
            input
                .endpoints
                .iter()
                .map(|e| (e, if input.read_endpoints.contains(e) { Access::Read } else { Access::Write })),
        );
    for (via, access) in touches {
        let Some(node) = input.nodes.get(via.as_str()) else { continue };
        let Some(i) = graph.index_of(node) else { continue };
        touched_nodes.push(TouchedNode { node: node.clone(), via: via.clone(), access });
        touched.insert(i);
        touched_tags |= graph.node(i).tag_mask;
        impacted.union_with(graph.impact_of(i));
        impacted_tags |= graph.impact_tags_of(i);
        if access == Access::Write {
            written.union_with(graph.impact_of(i));
            write_tags |= graph.impact_tags_of(i);
            write_max = write_max.max(Some(graph.impact_max_of(i)));
        }
    }
    touched_nodes.sort_by(|a, b| (&a.node, &a.via, a.access).cmp(&(&b.node, &b.via, b.access)));
    // Written nodes are a subset of impacted ones, so counting them again
    // makes writes weigh double.
    let score = graph.weight_sum(&impacted) + graph.weight_sum(&written);
    let impacted_count = impacted.len();
    // Index order is most-critical-first (see `Graph`): the first set bits
    // are the nodes to list, and the first is the most critical.
    let listed: Vec<usize> = impacted.iter().take(MAX_LISTED_IMPACTED).collect();
    let best = listed.first().copied();
    let tags = graph.tags_in(impacted_tags);
    let d = Derivation {
        touched: touched_nodes,
        impacted_count,
        impacted: listed.iter().map(|&i| graph.node(i).spec.id.clone()).collect(),
        most_critical: best
            .map(|i| CriticalNode { node: graph.node(i).spec.id.clone(), criticality: graph.node(i).spec.criticality }),
        sensitive_tags: tags.iter().filter(|t| sensitive.contains(*t)).cloned().collect(),
        impacted_tags: tags,
        write_impacted_tags: graph.tags_in(write_tags),
        score,
        write_criticality: write_max,
    };
    (d, Sets { touched, impacted, touched_tags, impacted_tags, write_tags })
}

fn any_tag(graph: &Graph, tags: &[String], mask: u64) -> bool {
    tags.iter().any(|t| graph.tag_bit(t).is_some_and(|b| mask & b != 0))
}

fn any_node(graph: &Graph, ids: &[String], set: &NodeSet) -> bool {
    ids.iter().any(|id| graph.index_of(id).is_some_and(|i| set.contains(i)))
}

fn matches(c: &Condition, graph: &Graph, input: &DecisionInput, d: &Derivation, s: &Sets) -> bool {
    c.writes.is_none_or(|w| w == writes(input))
        && c.endpoints.is_none_or(|e| e != input.endpoints.is_empty())
        && c.kind.is_none_or(|k| k == input.kind)
        && (c.signer_any.is_empty() || c.signer_any.contains(&input.signer))
        && (c.touched_nodes_any.is_empty() || any_node(graph, &c.touched_nodes_any, &s.touched))
        && (c.impacted_nodes_any.is_empty() || any_node(graph, &c.impacted_nodes_any, &s.impacted))
        && (c.touched_tags_any.is_empty() || any_tag(graph, &c.touched_tags_any, s.touched_tags))
        && (c.impacted_tags_any.is_empty() || any_tag(graph, &c.impacted_tags_any, s.impacted_tags))
        && (c.write_impacted_tags_any.is_empty() || any_tag(graph, &c.write_impacted_tags_any, s.write_tags))
        && c.min_score.is_none_or(|m| d.score >= m)
        && c.min_impacted.is_none_or(|m| d.impacted_count >= m)
        && c.min_criticality.is_none_or(|m| d.most_critical.as_ref().is_some_and(|x| x.criticality >= m))
        && c.min_write_criticality.is_none_or(|m| d.write_criticality.is_some_and(|x| x >= m))
}

#[cfg(test)]
mod tests;
