//! The blast radius of a decision, and a small picture of it: the touched
//! nodes and what depends on them, from the graph the decision recorded.
//!
//! The picture is an inline SVG (no scripts, no external resources): touched
//! nodes in the first column, then each further column the nodes that
//! depend on the column before, at most [`MAX_DRAWN`] nodes (most critical
//! first within a column); the rest are counted under it. Node ids come from
//! the operator's graph, but are escaped like any other text.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use edge_core::graph::{Criticality, Graph};
use edge_core::policy::{Access, Derivation};

use super::html::esc;

/// Most nodes drawn in one picture.
pub(crate) const MAX_DRAWN: usize = 30;
/// Rows per column before a layer wraps into another column.
const ROWS: usize = 8;
const BOX_W: usize = 168;
const BOX_H: usize = 30;
const COL_W: usize = 212;
const ROW_H: usize = 44;
const PAD: usize = 12;
/// Characters of a node id shown in its box (the full id is its tooltip).
const LABEL_CHARS: usize = 22;

/// A compiled graph and who depends on whom (computed once per graph).
#[derive(Debug)]
pub(crate) struct Model {
    graph: Graph,
    /// `dependents[i]`: the nodes whose `depends_on` names node `i`.
    dependents: Vec<Vec<usize>>,
}

impl Model {
    pub(crate) fn new(graph: Graph) -> Self {
        let mut dependents = vec![Vec::new(); graph.len()];
        for (i, n) in graph.nodes().iter().enumerate() {
            for d in &n.spec.depends_on {
                if let Some(j) = graph.index_of(d) {
                    dependents[j].push(i);
                }
            }
        }
        for d in &mut dependents {
            // Index order is most critical first.
            d.sort_unstable();
            d.dedup();
        }
        Self { graph, dependents }
    }
}

/// One drawn node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Drawn {
    pub id: String,
    pub criticality: Criticality,
    /// How the capsule touches it (None: impacted, not touched).
    pub touched: Option<Access>,
    pub sensitive: bool,
    /// Steps from a touched node.
    pub depth: usize,
}

/// The impacted part of the graph, as drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Picture {
    pub nodes: Vec<Drawn>,
    /// (dependency, dependent) pairs among drawn nodes: impact flows along them.
    pub edges: Vec<(usize, usize)>,
    /// Impacted nodes not drawn.
    pub omitted: usize,
}

/// Lay out the touched nodes and their dependents, breadth first.
pub(crate) fn picture(m: &Model, d: &Derivation) -> Picture {
    let g = &m.graph;
    let sensitive: BTreeSet<&str> = d.sensitive_tags.iter().map(String::as_str).collect();
    let mut access: HashMap<usize, Access> = HashMap::new();
    for t in &d.touched {
        if let Some(i) = g.index_of(&t.node) {
            let a = access.entry(i).or_insert(t.access);
            *a = (*a).max(t.access);
        }
    }
    let mut layer: Vec<usize> = access.keys().copied().collect();
    layer.sort_unstable();
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let mut order: Vec<(usize, usize)> = Vec::new();
    let mut depth = 0;
    let mut reached = 0usize;
    while !layer.is_empty() {
        let mut next = Vec::new();
        for &i in &layer {
            if seen.contains_key(&i) {
                continue;
            }
            seen.insert(i, order.len());
            reached += 1;
            if order.len() < MAX_DRAWN {
                order.push((i, depth));
            }
            next.extend(m.dependents[i].iter().copied().filter(|j| !seen.contains_key(j)));
        }
        next.sort_unstable();
        next.dedup();
        layer = next;
        depth += 1;
    }
    let drawn: HashMap<usize, usize> = order.iter().enumerate().map(|(k, (i, _))| (*i, k)).collect();
    let nodes = order
        .iter()
        .map(|&(i, depth)| {
            let n = g.node(i);
            Drawn {
                id: n.spec.id.clone(),
                criticality: n.spec.criticality,
                touched: access.get(&i).copied(),
                sensitive: n.spec.tags.iter().any(|t| sensitive.contains(t.as_str())),
                depth,
            }
        })
        .collect();
    let mut edges = Vec::new();
    for &(i, _) in &order {
        for &j in &m.dependents[i] {
            if let Some(&to) = drawn.get(&j) {
                edges.push((drawn[&i], to));
            }
        }
    }
    Picture { nodes, edges, omitted: d.impacted_count.max(reached).saturating_sub(order.len()) }
}

fn colour(c: Criticality) -> (&'static str, &'static str) {
    // (fill, stroke)
    match c {
        Criticality::Critical => ("#fde2e1", "#b42318"),
        Criticality::High => ("#feeadb", "#c4320a"),
        Criticality::Medium => ("#fff4d6", "#9a6700"),
        Criticality::Low => ("#eef1f4", "#57606a"),
    }
}

fn label(id: &str) -> String {
    if id.chars().count() <= LABEL_CHARS {
        id.to_owned()
    } else {
        let mut s: String = id.chars().take(LABEL_CHARS - 1).collect();
        s.push('…');
        s
    }
}

/// The picture as inline SVG.
pub(crate) fn svg(p: &Picture) -> String {
    // Place nodes: one column per layer, wrapped every ROWS rows.
    let mut col_of_layer: Vec<(usize, usize)> = Vec::new(); // (first column, nodes so far)
    let mut pos = Vec::with_capacity(p.nodes.len());
    let mut columns = 0;
    let mut rows_used = 0;
    for n in &p.nodes {
        while col_of_layer.len() <= n.depth {
            col_of_layer.push((columns, 0));
        }
        let (first, k) = col_of_layer[n.depth];
        let (col, row) = (first + k / ROWS, k % ROWS);
        col_of_layer[n.depth].1 += 1;
        columns = columns.max(col + 1);
        rows_used = rows_used.max(row + 1);
        pos.push((PAD + col * COL_W, PAD + 16 + row * ROW_H));
    }
    let width = PAD * 2 + columns.saturating_sub(1) * COL_W + BOX_W;
    let height = PAD * 2 + 16 + rows_used * ROW_H + 24;
    let mut s = String::with_capacity(600 + p.nodes.len() * 400);
    let _ = write!(
        s,
        "<svg class=\"blast\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"Impacted part of the system graph\">\
<text x=\"{PAD}\" y=\"{}\" font-size=\"11\" fill=\"#57606a\">touched → depends on it → …</text>",
        PAD + 4
    );
    for &(from, to) in &p.edges {
        let ((x1, y1), (x2, y2)) = (pos[from], pos[to]);
        let (x1, y1) = (x1 + BOX_W, y1 + BOX_H / 2);
        let y2 = y2 + BOX_H / 2;
        let _ = write!(
            s,
            "<line x1=\"{x1}\" y1=\"{y1}\" x2=\"{x2}\" y2=\"{y2}\" stroke=\"#8c959f\" stroke-width=\"1.2\"/>\
<polygon points=\"{x2},{y2} {},{} {},{}\" fill=\"#8c959f\"/>",
            x2 - 7,
            y2 - 4,
            x2 - 7,
            y2 + 4
        );
    }
    for (n, &(x, y)) in p.nodes.iter().zip(&pos) {
        let (fill, stroke) = colour(n.criticality);
        let (fill, width) = match n.touched {
            Some(Access::Write) => ("#dbeafe", 3),
            Some(Access::Read) => ("#eff6ff", 2),
            None => (fill, 1),
        };
        let dash = if n.sensitive { " stroke-dasharray=\"5 3\"" } else { "" };
        let what = match n.touched {
            Some(Access::Write) => "touched (write)",
            Some(Access::Read) => "touched (read)",
            None => "impacted",
        };
        let _ = write!(
            s,
            "<g class=\"node\"><title>{} — {what}, {} criticality{}</title>\
<rect x=\"{x}\" y=\"{y}\" width=\"{BOX_W}\" height=\"{BOX_H}\" rx=\"4\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{width}\"{dash}/>\
<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"#1b1f24\">{}{}</text></g>",
            esc(&n.id),
            n.criticality,
            if n.sensitive { ", sensitive" } else { "" },
            x + 8,
            y + 19,
            match n.touched {
                Some(Access::Write) => "<tspan font-weight=\"700\">W</tspan> ",
                Some(Access::Read) => "<tspan font-weight=\"700\">R</tspan> ",
                None => "",
            },
            esc(&label(&n.id))
        );
    }
    let legend_y = height - 10;
    let _ = write!(
        s,
        "<text x=\"{PAD}\" y=\"{legend_y}\" font-size=\"11\" fill=\"#57606a\">W: written · R: read · border colour: criticality · dashed: sensitive tag{}</text></svg>",
        if p.omitted > 0 { format!(" · {} more impacted node(s) not drawn", p.omitted) } else { String::new() }
    );
    s
}

#[cfg(test)]
mod tests {
    use edge_core::policy::TouchedNode;

    use super::*;

    const GRAPH: &str = include_str!("../../../examples/policy/graph.toml");

    fn derivation(touched: &[(&str, Access)], impacted: usize) -> Derivation {
        Derivation {
            touched: touched
                .iter()
                .map(|(n, a)| TouchedNode { node: (*n).into(), via: "config".into(), access: *a })
                .collect(),
            impacted_count: impacted,
            impacted: Vec::new(),
            most_critical: None,
            impacted_tags: Vec::new(),
            write_impacted_tags: Vec::new(),
            sensitive_tags: vec!["payments".into()],
            score: 0,
            write_criticality: None,
        }
    }

    #[test]
    fn the_picture_follows_dependents_from_the_touched_node() {
        let m = Model::new(Graph::from_toml(GRAPH).unwrap());
        let p = picture(&m, &derivation(&[("payments-config", Access::Write)], 3));
        let ids: Vec<(&str, usize)> = p.nodes.iter().map(|n| (n.id.as_str(), n.depth)).collect();
        assert_eq!(ids, [("payments-config", 0), ("payments-api", 1), ("storefront", 2)], "{ids:?}");
        assert_eq!(p.nodes[0].touched, Some(Access::Write));
        assert!(p.nodes[1].sensitive && !p.nodes[0].sensitive);
        assert_eq!(p.edges, [(0, 1), (1, 2)]);
        assert_eq!(p.omitted, 0);
        let svg = svg(&p);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("W</tspan> payments-config</text>") && svg.contains(">storefront</text>"), "{svg}");
        assert_eq!(svg.matches("<line ").count(), 2);
    }

    #[test]
    fn large_graphs_draw_at_most_thirty_nodes_and_count_the_rest() {
        let mut toml = String::from("version = 1\n[[nodes]]\nid = \"root\"\n");
        for i in 0..200 {
            toml.push_str(&format!("[[nodes]]\nid = \"svc-{i:03}\"\ndepends_on = [\"root\"]\n"));
        }
        let m = Model::new(Graph::from_toml(&toml).unwrap());
        let p = picture(&m, &derivation(&[("root", Access::Write)], 201));
        assert_eq!(p.nodes.len(), MAX_DRAWN);
        assert_eq!(p.omitted, 201 - MAX_DRAWN);
        let svg = svg(&p);
        assert!(svg.contains("171 more impacted node(s) not drawn"), "{svg}");
        // Wrapped into columns: still small.
        let width: usize = svg.split("width=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
        assert!(width < 1200, "{width}");
    }

    #[test]
    fn hostile_node_ids_are_escaped() {
        let toml = "version = 1\n[[nodes]]\nid = \"<script>alert(1)</script>\"\n";
        let m = Model::new(Graph::from_toml(toml).unwrap());
        let svg = svg(&picture(&m, &derivation(&[("<script>alert(1)</script>", Access::Read)], 1)));
        assert!(!svg.contains("<script"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"));
    }
}
