use std::collections::BTreeSet;

use edge_core::Sha256Digest;
use edge_core::admission::{Grant, GrantedMount, Limits};
use edge_core::graph::Graph;
use edge_core::manifest::Kind;
use edge_core::policy::{DecisionInput, Policy};
use edge_core::signature::{CapsuleSigningKey, Transparency};

use super::*;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/backstage").join(rel)
}

fn compile(import: &Import) -> Graph {
    Graph::from_toml(&to_toml(&import.graph, Path::new("test")).unwrap()).unwrap()
}

/// Ids of everything a touch of `id` impacts, per the compiled graph.
fn radius(g: &Graph, id: &str) -> BTreeSet<String> {
    let i = g.index_of(id).unwrap_or_else(|| panic!("{id} is not a node"));
    g.impact_of(i).iter().map(|j| g.node(j).spec.id.clone()).collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

fn err(paths: &[PathBuf]) -> String {
    format!("{:#}", import(paths, None).unwrap_err())
}

#[test]
fn imports_a_realistic_multi_file_catalog() {
    // The root Location reaches the four other files.
    let import = import(&[data("catalog-info.yaml")], None).unwrap();
    assert_eq!(import.files, 5);
    let ids: Vec<&str> = import.graph.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "api:default/payments-api",
            "component:default/nightly-reporting",
            "component:default/payments-api",
            "component:default/storefront",
            "component:identity/auth-service",
            "resource:default/ledger-db",
            "resource:default/log-volume",
            "resource:default/payments-queue",
            "resource:identity/user-directory",
            "system:default/payments",
        ]
    );
    for kind in ["Domain", "Group", "Location", "User"] {
        assert_eq!(import.unmapped.get(kind), Some(&1), "{kind}");
    }
    assert!(import.skipped.is_empty(), "{:?}", import.skipped);
    let node = |id: &str| import.graph.nodes.iter().find(|n| n.id == id).unwrap();
    let api = node("component:default/payments-api");
    assert_eq!(api.criticality, Criticality::High);
    assert_eq!(api.kind, NodeKind::Service);
    assert_eq!(api.owner, "group:default/team-payments");
    assert!(api.depends_on.contains("component:identity/auth-service"));
    assert_eq!(node("api:default/payments-api").kind, NodeKind::Api);
    assert_eq!(node("resource:default/ledger-db").kind, NodeKind::Datastore);
    assert_eq!(node("resource:default/payments-queue").kind, NodeKind::Queue);
    assert_eq!(node("resource:default/log-volume").kind, NodeKind::Host);
    assert!(node("component:default/storefront").tags.contains("website"), "tags are lowercased");
    // System membership: the system depends on its members.
    let sys = node("system:default/payments");
    assert_eq!(sys.kind, NodeKind::System);
    assert_eq!(sys.depends_on.len(), 3);

    // The blast radius follows the catalog.
    let g = compile(&import);
    let impacted = radius(&g, "resource:identity/user-directory");
    assert!(impacted.contains("component:default/storefront"), "{impacted:?}");
    assert!(impacted.contains("system:default/payments"), "{impacted:?}");
}

/// The example catalog, in the shape of Backstage's own examples.
mod example {
    use super::*;

    pub(super) fn by_location() -> Import {
        import(&[data("example-catalog/all.yaml")], None).unwrap()
    }

    #[test]
    fn a_directory_and_its_root_location_import_the_same_graph() {
        let by_dir = import(&[data("example-catalog")], None).unwrap();
        let by_location = by_location();
        assert_eq!(by_dir.graph, by_location.graph);
        let ids: Vec<&str> = by_location.graph.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "api:default/artist-api",
                "api:default/playback-events",
                "api:default/playback-order",
                "component:billing/royalties",
                "component:default/artist-lookup",
                "component:default/artist-web",
                "component:default/playback-cli",
                "component:default/playback-lib",
                "component:default/playback-order",
                "component:default/podcast-player",
                "component:default/www-artist",
                "resource:billing/ledger",
                "resource:default/artists-db",
                "resource:default/playback-topic",
                "system:default/artist-engagement-portal",
                "system:default/audio-playback",
            ]
        );
        // Twelve files through Locations; the walk also reads the two
        // non-entity files beside them, and skips them.
        assert_eq!(by_location.files, 12);
        assert_eq!(by_dir.files, 14);
        for i in [&by_dir, &by_location] {
            let counts: Vec<(&str, usize)> = i.unmapped.iter().map(|(k, n)| (k.as_str(), *n)).collect();
            assert_eq!(counts, [("Domain", 2), ("Group", 3), ("Location", 5), ("User", 2)]);
        }
        let skipped: Vec<String> = by_dir.skipped.iter().map(|s| s.to_string()).collect();
        let has = |file: &str, text: &str| {
            skipped.iter().any(|s| s.contains(file) && s.contains(text)) || panic!("{file}: {text} in {skipped:#?}")
        };
        has("artist-api.oas.yaml", "not a Backstage entity (no apiVersion and kind)");
        has("royalties.schema.yaml", "not a Backstage entity");
        has("playback.yaml", "document 5: not a Backstage entity (apiVersion `apps/v1`, kind `Deployment`)");
        has("all.yaml", "Location `example-remote` target `https://github.com/");
        assert_eq!(skipped.len(), 4, "{skipped:#?}");
        assert_eq!(by_location.skipped.len(), 2, "{:#?}", by_location.skipped);
    }

    #[test]
    fn references_take_backstage_defaults() {
        let import = by_location();
        let node = |id: &str| import.graph.nodes.iter().find(|n| n.id == id).unwrap();
        let deps = |id: &str| node(id).depends_on.iter().map(String::as_str).collect::<Vec<_>>();
        // consumesApis defaults to kind `api`; case is ignored.
        assert!(deps("component:default/artist-web").contains(&"api:default/artist-api"));
        // The namespace defaults to the referring entity's; the second API is
        // consumed through a relation on the API entity.
        assert_eq!(
            deps("component:billing/royalties"),
            ["api:default/artist-api", "api:default/playback-events", "resource:billing/ledger"]
        );
        assert_eq!(node("component:billing/royalties").owner, "group:billing/team-finance");
        // A provided API depends on its provider, whichever way it is written.
        assert_eq!(deps("api:default/artist-api"), ["component:default/artist-lookup"]);
        assert_eq!(deps("api:default/playback-events"), ["component:default/playback-order"]);
        // The whole depends on its part; a user of the part also on the whole.
        assert_eq!(
            deps("component:default/playback-order"),
            ["component:default/playback-lib", "resource:default/playback-topic"]
        );
        assert_eq!(
            deps("component:default/playback-cli"),
            ["component:default/playback-lib", "component:default/playback-order"]
        );
        assert_eq!(node("api:default/playback-order").kind, NodeKind::Api);
        assert!(compile(&import).cycles().is_empty());
    }

    #[test]
    fn a_write_to_an_api_provider_reaches_every_consumer() {
        let g = compile(&by_location());
        assert_eq!(
            radius(&g, "component:default/artist-lookup"),
            set(&[
                "component:default/artist-lookup",
                "api:default/artist-api",
                // consumers, in two namespaces
                "component:default/artist-web",
                "component:billing/royalties",
                // and what depends on them
                "component:default/www-artist",
                "system:default/artist-engagement-portal",
            ])
        );
        // Provider and consumers written only as relations on the API entity.
        let r = radius(&g, "component:default/playback-order");
        for id in ["api:default/playback-events", "component:billing/royalties", "component:default/artist-web"] {
            assert!(r.contains(id), "{id} in {r:?}");
        }
    }

    #[test]
    fn a_write_to_a_subcomponent_reaches_the_parent_and_its_consumers() {
        let g = compile(&by_location());
        let parent = radius(&g, "component:default/playback-order");
        let sub = radius(&g, "component:default/playback-lib");
        for id in [
            "component:default/playback-order",
            "api:default/playback-order",
            "component:default/podcast-player",
            "system:default/audio-playback",
            "component:default/playback-cli",
        ] {
            assert!(sub.contains(id), "{id} in {sub:?}");
        }
        // The part's radius is the whole's and the part itself.
        let mut expected = parent.clone();
        expected.insert("component:default/playback-lib".into());
        assert_eq!(sub, expected);
        // Touching the whole reaches users of its part (playback-cli uses playback-lib).
        assert!(parent.contains("component:default/playback-cli"), "{parent:?}");
    }

    #[test]
    fn the_policy_sees_consumers_of_a_written_api_provider() {
        let g = compile(&by_location());
        // `www-artist` is the only revenue-path node, two hops past the API.
        let key = CapsuleSigningKey::generate();
        let policy = Policy::from_toml(&format!(
            "version = 1\nname = \"t\"\ndefault_tier = 0\n\
             [[rules]]\nname = \"revenue-path-writes\"\nwhen = {{ writes = true, write_impacted_tags_any = [\"revenue-path\"] }}\ntier = 2\nreason = \"r\"\n\
             [tiers.0]\napprovals = 0\n[tiers.1]\napprovals = 1\n[tiers.2]\napprovals = 2\n\
             [[signers]]\nname = \"agent\"\npublic_key = \"\"\"{}\"\"\"\nmounts = [\"*\"]\nwritable_mounts = [\"*\"]\n",
            key.public_key_pem()
        ))
        .unwrap();
        let input = DecisionInput {
            read_endpoints: vec![],
            capsule: Sha256Digest::of(b"capsule"),
            name: "c".into(),
            kind: Kind::Remediation,
            signer: "agent".into(),
            transparency: Transparency::None,
            grant: Grant {
                endpoints: vec![],
                mounts: vec![GrantedMount { name: "lookup-config".into(), writable: true }],
                env: vec![],
                imports: Default::default(),
                limits: Limits::DEFAULT,
            },
            endpoints: vec![],
            nodes: [("lookup-config".to_owned(), "component:default/artist-lookup".to_owned())].into(),
            ticket: None,
        };
        let d = policy.decide(&g, &input);
        assert_eq!(d.tier, 2, "{:#?}", d.reasons);
        assert!(d.reasons.iter().any(|r| r.rule == "rules.revenue-path-writes"), "{:#?}", d.reasons);
        let impacted = &d.derivation.as_ref().unwrap().impacted;
        assert!(impacted.contains(&"component:default/www-artist".to_owned()), "{impacted:?}");
    }
}

mod hostile {
    use super::*;

    #[test]
    fn locations_never_leave_the_catalog_root() {
        let import = import(&[data("hostile/escape/catalog-info.yaml")], None).unwrap();
        let ids: Vec<&str> = import.graph.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["component:default/inside"]);
        assert_eq!(import.files, 1);
        let skipped: Vec<String> = import.skipped.iter().map(|s| s.detail.clone()).collect();
        assert_eq!(skipped.len(), 5, "{skipped:#?}");
        for (target, why) in [
            ("../outside.yaml", "outside the catalog root"),
            ("./nested/../../outside.yaml", "outside the catalog root"),
            ("/etc/passwd", "outside the catalog root"),
            ("https://example.com/catalog-info.yaml", "a URL (nothing is fetched)"),
            ("./*.yaml", "a glob pattern"),
        ] {
            assert!(
                skipped.iter().any(|s| s.contains(&format!("target `{target}`")) && s.contains(why)),
                "{target}: {skipped:#?}"
            );
        }
    }

    #[test]
    fn a_wider_root_lets_locations_reach_siblings() {
        let import = import(&[data("hostile/escape/catalog-info.yaml")], Some(&data("hostile"))).unwrap();
        let ids: Vec<&str> = import.graph.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["component:default/inside", "component:default/outside"]);
        assert_eq!(import.files, 2, "outside.yaml is read once");
        // Still never outside the root, never fetched, never a glob.
        assert_eq!(import.skipped.len(), 3, "{:?}", import.skipped);
        // Every path named must be inside the root.
        let e = format!("{:#}", super::import(&[data("catalog-info.yaml")], Some(&data("hostile"))).unwrap_err());
        assert!(e.contains("is outside the root"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_out_of_the_root_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("catalog");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(
            t.path().join("secret.yaml"),
            "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata: {name: secret}\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(t.path().join("secret.yaml"), root.join("link.yaml")).unwrap();
        std::os::unix::fs::symlink(t.path(), root.join("up")).unwrap();
        // A FIFO would block a reader forever: it is not a regular file.
        let fifo = std::process::Command::new("mkfifo").arg(root.join("pipe.yaml")).status().is_ok_and(|s| s.success());
        std::fs::write(
            root.join("catalog-info.yaml"),
            "apiVersion: backstage.io/v1alpha1\nkind: Location\nmetadata: {name: l}\nspec: {target: ./link.yaml}\n\
             ---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata: {name: a}\n",
        )
        .unwrap();
        for paths in [vec![root.clone()], vec![root.join("catalog-info.yaml")]] {
            let import = import(&paths, None).unwrap();
            let ids: Vec<&str> = import.graph.nodes.iter().map(|n| n.id.as_str()).collect();
            assert_eq!(ids, ["component:default/a"]);
            assert!(
                import.skipped.iter().all(|s| s.detail.contains("outside the catalog root")
                    || (fifo && s.detail == "not a regular file; not read")),
                "{:?}",
                import.skipped
            );
            assert!(!import.skipped.is_empty());
            let walked = paths[0] == root;
            assert_eq!(import.skipped.iter().any(|s| s.detail == "not a regular file; not read"), fifo && walked);
        }
    }

    #[test]
    fn location_cycles_end() {
        let import = import(&[data("hostile/cycle/a.yaml")], None).unwrap();
        assert_eq!(import.files, 2);
        let ids: Vec<&str> = import.graph.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["component:default/a", "component:default/b"]);
        assert_eq!(import.unmapped.get("Location"), Some(&2));
        assert!(import.skipped.is_empty(), "{:?}", import.skipped);
    }

    #[test]
    fn an_unknown_api_is_an_error_naming_it() {
        let e = err(&[data("hostile/unknown-api")]);
        for part in [
            "unknown-api/catalog-info.yaml",
            "component:default/consumer",
            "consumesApis `ghost-api`",
            "api:default/ghost-api",
            "not in the catalog",
        ] {
            assert!(e.contains(part), "{part} in {e}");
        }
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const HEAD: &str = "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: a\n";

    #[test]
    fn bad_catalogs_are_errors_naming_file_entity_and_reference() {
        let t = tempfile::tempdir().unwrap();
        let dir = || vec![t.path().to_path_buf()];
        let cases = [
            (
                "spec:\n  dependsOn: [resource:ghost]\n",
                &["a.yaml", "component:default/a", "resource:default/ghost"][..],
            ),
            ("spec:\n  providesApis: [ghost]\n", &["providesApis `ghost`", "api:default/ghost"]),
            ("spec:\n  subcomponentOf: ghost\n", &["subcomponentOf `ghost`", "component:default/ghost"]),
            ("spec:\n  system: ghost\n", &["system `ghost`", "system:default/ghost"]),
            ("spec:\n  dependsOn: [ghost]\n", &["component:default/ghost or resource:default/ghost"]),
            ("spec:\n  dependsOn: [group:team-a]\n", &["names a group, which is not a graph node"]),
            ("spec:\n  dependsOn: 'x y'\n", &["a.yaml", "Component `a`: malformed spec"]),
            ("relations:\n  - type: apiConsumedBy\n    targetRef: component:default/ghost\n", &["relation", "ghost"]),
        ];
        for (spec, parts) in cases {
            write(t.path(), "a.yaml", &format!("{HEAD}{spec}"));
            let e = err(&dir());
            for part in parts {
                assert!(e.contains(part), "{spec}: {part} in {e}");
            }
        }

        // Ambiguous kindless dependsOn.
        write(t.path(), "a.yaml", &format!("{HEAD}spec:\n  dependsOn: [x]\n"));
        write(
            t.path(),
            "b.yaml",
            "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata: {name: x}\n---\napiVersion: backstage.io/v1alpha1\nkind: Resource\nmetadata: {name: X}\n",
        );
        assert!(err(&dir()).contains("is ambiguous"), "{}", err(&dir()));

        // Duplicates (names are case-insensitive).
        write(t.path(), "a.yaml", HEAD);
        write(t.path(), "b.yaml", "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata: {name: A}\n");
        assert!(err(&dir()).contains("defined in both"), "{}", err(&dir()));

        // Invalid YAML names the file, even beside valid ones.
        write(t.path(), "b.yaml", "kind: [unclosed\n");
        assert!(err(&dir()).contains("b.yaml is not valid YAML"), "{}", err(&dir()));

        // Entity-shaped without an apiVersion: an error, not a skip.
        write(t.path(), "b.yaml", "kind: Component\nmetadata: {name: b}\n");
        let e = err(&dir());
        assert!(e.contains("b.yaml") && e.contains("no `apiVersion`"), "{e}");

        // A required Location target that does not exist; optional ones are skipped.
        write(
            t.path(),
            "b.yaml",
            "apiVersion: backstage.io/v1alpha1\nkind: Location\nmetadata: {name: l}\nspec: {target: ./gone.yaml}\n",
        );
        let e = err(&dir());
        assert!(e.contains("Location `l` target `./gone.yaml`") && e.contains("presence: optional"), "{e}");
        write(
            t.path(),
            "b.yaml",
            "apiVersion: backstage.io/v1alpha1\nkind: Location\nmetadata: {name: l}\nspec: {target: ./gone.yaml, presence: optional}\n",
        );
        let i = import(&dir(), None).unwrap();
        assert!(i.skipped[0].detail.contains("does not exist (presence: optional)"), "{:?}", i.skipped);

        // A bad criticality names the entity.
        write(
            t.path(),
            "a.yaml",
            "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: a\n  annotations: {edge-runner.dev/criticality: extreme}\n",
        );
        let e = err(&dir());
        assert!(e.contains("component:default/a") && e.contains("extreme"), "{e}");
    }
}
