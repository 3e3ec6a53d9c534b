//! Tests of the whole module through its public API: every kind of error as
//! the user sees it (insta snapshots), a full valid example, and properties.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::component::tests::{core_module, http_component};
use super::*;

/// The rendered errors of `text`, which must be rejected.
fn errors(text: &str) -> String {
    match parse("canopy.yaml", text) {
        Ok(file) => panic!("expected errors, parsed {:?}", file.project),
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty());
            diagnostics.to_string()
        }
    }
}

/// A repository in a temporary directory with `canopy.yaml` and `files`.
fn repo(yaml: &str, files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("canopy.yaml"), yaml).unwrap();
    for (path, bytes) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, bytes).unwrap();
    }
    dir
}

/// The rendered errors of `load_dir`, which must fail; the temporary path
/// is replaced by `ROOT` so snapshots are stable.
fn dir_errors(root: &Path) -> String {
    match load_dir(root) {
        Ok(file) => panic!("expected errors, loaded {:?}", file.project),
        Err(diagnostics) => diagnostics
            .to_string()
            .replace(&root.display().to_string(), "ROOT"),
    }
}

const HELLO: &str = "project: shop
functions:
  hello:
    wasm: functions/hello.wasm
    http: { path: /hello }
";

#[test]
fn full_example_parses_into_the_expected_structs() {
    let text = r#"# The shop.
project: shop
domains: [shop.example.com, "*.Shop.example.com"]
functions:
  hello:
    wasm: ./functions//hello.wasm
    http: { path: /hello/, methods: [get, POST] }
    limits: { timeout: 2s, memory: 64MiB, fuel: 1_000_000, body: 1MiB }
  api:
    build:
      dir: functions/api
      command: "cargo build --release --target wasm32-wasip2"
      output: ../../target/wasm32-wasip2/release/api.wasm
      timeout: 1m30s
    http:
      path: /api
  quiet:
    wasm: functions/quiet.wasm
    limits: { memory: 1048576, fuel: 0 }
websites:
  www: { dir: public, path: / }
"#;
    let file = parse("canopy.yaml", text).unwrap();
    let expected = Project {
        name: "shop".to_string(),
        domains: vec![
            "shop.example.com".to_string(),
            "*.shop.example.com".to_string(),
        ],
        functions: BTreeMap::from([
            (
                "hello".to_string(),
                Function {
                    source: Source::Wasm {
                        path: "functions/hello.wasm".to_string(),
                    },
                    http: Some(HttpTrigger {
                        path: "/hello".to_string(),
                        methods: Some(vec![http::Method::GET, http::Method::POST]),
                    }),
                    limits: Limits {
                        timeout: Duration::from_secs(2),
                        memory_bytes: 64 << 20,
                        fuel: std::num::NonZeroU64::new(1_000_000),
                        body_bytes: Some(1 << 20),
                    },
                },
            ),
            (
                "api".to_string(),
                Function {
                    source: Source::Build {
                        dir: "functions/api".to_string(),
                        command: "cargo build --release --target wasm32-wasip2".to_string(),
                        output: "../../target/wasm32-wasip2/release/api.wasm".to_string(),
                        timeout: Duration::from_secs(90),
                        env: vec![],
                    },
                    http: Some(HttpTrigger {
                        path: "/api".to_string(),
                        methods: None,
                    }),
                    limits: Limits::default(),
                },
            ),
            (
                "quiet".to_string(),
                Function {
                    source: Source::Wasm {
                        path: "functions/quiet.wasm".to_string(),
                    },
                    http: None,
                    // `fuel: 0` is no limit, like no `fuel`.
                    limits: Limits {
                        timeout: DEFAULT_TIMEOUT,
                        memory_bytes: 1 << 20,
                        fuel: None,
                        body_bytes: None,
                    },
                },
            ),
        ]),
        websites: BTreeMap::from([(
            "www".to_string(),
            Website {
                dir: "public".to_string(),
                path: "/".to_string(),
            },
        )]),
    };
    assert_eq!(file.project, expected);
    assert_eq!(
        file.project.functions["api"].source.component_path(),
        "target/wasm32-wasip2/release/api.wasm"
    );
    assert_eq!(Limits::default().timeout, Duration::from_secs(30));
    assert_eq!(Limits::default().memory_bytes, 128 << 20);
    // The manifest form round-trips through JSON.
    let json = serde_json::to_string(&file.project).unwrap();
    let back: Project = serde_json::from_str(&json).unwrap();
    assert_eq!(back, expected);
}

#[test]
fn minimal_and_empty_sections_are_fine() {
    let file = parse("canopy.yaml", "project: shop\nfunctions:\nwebsites: {}\n").unwrap();
    assert!(file.project.functions.is_empty() && file.project.websites.is_empty());
    assert_eq!(
        file.summary(),
        "canopy.yaml: project `shop` is valid (0 functions, 0 websites)"
    );
}

#[test]
fn disjoint_methods_may_share_a_path() {
    let text = "project: shop
functions:
  read: { wasm: r.wasm, http: { path: /items, methods: [GET] } }
  write: { wasm: w.wasm, http: { path: /items/, methods: [POST, PUT] } }
  upload: { wasm: u.wasm, http: { path: /, methods: [POST] } }
websites:
  www: { dir: public, path: / }
";
    let file = parse("canopy.yaml", text).unwrap();
    assert_eq!(file.project.functions.len(), 3);
}

#[test]
fn unknown_key_at_top_level() {
    insta::assert_snapshot!(errors(
        "project: shop\nfunctoins:\n  hello: { wasm: a.wasm }\n"
    ));
}

#[test]
fn unknown_key_nested() {
    insta::assert_snapshot!(errors(
        "project: shop\nfunctions:\n  hello:\n    wasm: a.wasm\n    http: { pat: /hello }\n"
    ));
}

#[test]
fn planned_key_not_supported_yet() {
    insta::assert_snapshot!(errors(
        "project: shop\nfunctions:\n  on-order: { wasm: w.wasm, pubsub: orders }\n"
    ));
}

#[test]
fn wrong_type() {
    insta::assert_snapshot!(errors("project: shop\nfunctions: [hello, world]\n"));
}

#[test]
fn missing_project() {
    insta::assert_snapshot!(errors("functions:\n  hello: { wasm: a.wasm }\n"));
}

#[test]
fn bad_project_name() {
    insta::assert_snapshot!(errors("project: My_Shop\n"));
}

#[test]
fn bad_function_name_and_domain() {
    insta::assert_snapshot!(errors(
        "project: shop\ndomains: [shop.example.com, shop, SHOP.example.com]\nfunctions:\n  Hello: { wasm: a.wasm }\n"
    ));
}

#[test]
fn bad_duration() {
    insta::assert_snapshot!(errors(
        "project: shop\nfunctions:\n  hello:\n    wasm: a.wasm\n    limits: { timeout: 2 seconds }\n  other:\n    wasm: b.wasm\n    limits: { timeout: 30 }\n"
    ));
}

#[test]
fn bad_size() {
    insta::assert_snapshot!(errors(
        "project: shop\nfunctions:\n  hello:\n    wasm: a.wasm\n    limits: { memory: 64 megabytes }\n"
    ));
}

#[test]
fn out_of_bounds_limits() {
    insta::assert_snapshot!(errors(
        "project: shop
functions:
  hello:
    wasm: a.wasm
    limits: { timeout: 1h, memory: 8GiB }
  api:
    build: { dir: api, command: make, output: api.wasm, timeout: 500ms }
"
    ));
}

#[test]
fn bad_fuel_and_body() {
    insta::assert_snapshot!(errors(
        "project: shop
functions:
  hello:
    wasm: a.wasm
    limits: { fuel: 1.5, body: 0 }
  api:
    wasm: b.wasm
    limits:
      fuel: lots
      body: 1 megabyte
  big:
    wasm: c.wasm
    limits: { fuel: 99999999999999999999, body: 99999999999TiB }
"
    ));
}

#[test]
fn limits_without_fuel_or_body_serialize_as_before() {
    // Manifests and stored projects written before `fuel` and `body`
    // existed read back with both unset, and a project that sets neither
    // writes the same JSON as then.
    let old = r#"{"timeout":{"secs":2,"nanos":0},"memory_bytes":67108864}"#;
    let limits: Limits = serde_json::from_str(old).unwrap();
    assert_eq!(
        limits,
        Limits {
            timeout: Duration::from_secs(2),
            memory_bytes: 64 << 20,
            fuel: None,
            body_bytes: None,
        }
    );
    assert_eq!(serde_json::to_string(&limits).unwrap(), old);
}

#[test]
fn bad_build_env() {
    let long = "x".repeat(MAX_BUILD_ENV_VALUE + 1);
    insta::assert_snapshot!(errors(&format!(
        "project: shop
functions:
  api:
    build: {{ command: make, output: api.wasm, env: {{ 1ST: a, GOOD_ONE: b, WITH-DASH: c, BIG: {long} }} }}
"
    )));
}

#[test]
fn build_env_is_kept_sorted() {
    let file = parse(
        "canopy.yaml",
        "project: shop\nfunctions:\n  api:\n    build: { command: make, output: a.wasm, env: { Z: '1', A: '2' } }\n",
    )
    .unwrap();
    let Source::Build { env, .. } = &file.project.functions["api"].source else {
        panic!("a build");
    };
    assert_eq!(env, &[("A".into(), "2".into()), ("Z".into(), "1".into())]);
}

#[test]
fn both_wasm_and_build() {
    insta::assert_snapshot!(errors(
        "project: shop\nfunctions:\n  hello:\n    wasm: a.wasm\n    build: { command: make, output: a.wasm }\n"
    ));
}

#[test]
fn neither_wasm_nor_build() {
    insta::assert_snapshot!(errors(
        "project: shop\nfunctions:\n  hello:\n    http: { path: /hello }\n"
    ));
}

#[test]
fn absolute_and_escaping_paths() {
    insta::assert_snapshot!(errors(
        "project: shop
functions:
  hello: { wasm: /srv/hello.wasm }
  api: { build: { dir: api, command: make, output: ../../../api.wasm } }
websites:
  www: { dir: ../public, path: / }
"
    ));
}

#[test]
fn bad_http_paths() {
    insta::assert_snapshot!(errors(
        "project: shop
functions:
  a: { wasm: a.wasm, http: { path: hello } }
  b: { wasm: b.wasm, http: { path: '/search?q=1' } }
  c: { wasm: c.wasm, http: { path: /x/../y } }
"
    ));
}

#[test]
fn bad_method() {
    insta::assert_snapshot!(errors(
        "project: shop\nfunctions:\n  hello: { wasm: a.wasm, http: { path: /, methods: [GET, 'GE T'] } }\n  other: { wasm: b.wasm, http: { path: /o, methods: [] } }\n"
    ));
}

#[test]
fn duplicate_route() {
    insta::assert_snapshot!(errors(
        "project: shop
functions:
  hello:
    wasm: functions/hello.wasm
    http: { path: /hello }
  zebra:
    wasm: functions/zebra.wasm
    http: { path: /hello/, methods: [GET] }
websites:
  www: { dir: public, path: /hello }
"
    ));
}

#[test]
fn duplicate_yaml_key() {
    insta::assert_snapshot!(errors(
        "project: shop\nfunctions:\n  hello: { wasm: a.wasm }\n  hello: { wasm: b.wasm }\n"
    ));
}

#[test]
fn empty_file() {
    insta::assert_snapshot!(errors(""));
}

#[test]
fn not_a_mapping() {
    insta::assert_snapshot!(errors("- project: shop\n"));
}

#[test]
fn yaml_syntax_error() {
    insta::assert_snapshot!(errors(
        "project: shop\nfunctions:\n  hello: { wasm: a.wasm\n"
    ));
}

#[test]
fn missing_wasm_file() {
    let dir = repo(HELLO, &[]);
    insta::assert_snapshot!(dir_errors(dir.path()));
}

#[test]
fn not_a_component() {
    let dir = repo(
        HELLO,
        &[("functions/hello.wasm", b"#!/bin/sh\necho hello\n")],
    );
    insta::assert_snapshot!(dir_errors(dir.path()));
}

#[test]
fn core_module_instead_of_component() {
    let dir = repo(HELLO, &[("functions/hello.wasm", &core_module())]);
    insta::assert_snapshot!(dir_errors(dir.path()));
}

#[test]
fn component_without_http_handler() {
    let bytes = component::tests::component_exporting("wasi:cli/run@0.2.0");
    let dir = repo(HELLO, &[("functions/hello.wasm", &bytes)]);
    insta::assert_snapshot!(dir_errors(dir.path()));
}

#[test]
fn directory_instead_of_file() {
    let dir = repo(HELLO, &[("functions/hello.wasm/readme.txt", b"hi")]);
    insta::assert_snapshot!(dir_errors(dir.path()));
}

#[test]
fn missing_website_and_build_dirs() {
    let yaml = "project: shop
functions:
  api: { build: { dir: functions/api, command: make, output: api.wasm } }
websites:
  www: { dir: public, path: / }
  docs: { dir: docs.txt, path: /docs }
";
    let dir = repo(yaml, &[("docs.txt", b"not a dir")]);
    insta::assert_snapshot!(dir_errors(dir.path()));
}

#[test]
fn missing_canopy_yaml() {
    let dir = tempfile::tempdir().unwrap();
    insta::assert_snapshot!(dir_errors(dir.path()));
}

#[test]
fn valid_directory_loads() {
    let yaml = format!("{HELLO}websites:\n  www: {{ dir: public, path: / }}\n");
    let dir = repo(
        &yaml,
        &[
            ("functions/hello.wasm", &http_component()),
            ("public/index.html", b"hi"),
        ],
    );
    let file = load_dir(dir.path()).unwrap();
    assert_eq!(file.project.name, "shop");
    assert_eq!(
        file.summary(),
        "canopy.yaml: project `shop` is valid (1 function, 1 website)"
    );
}

#[cfg(unix)]
#[test]
fn symlink_out_of_the_repository_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("hello.wasm"), http_component()).unwrap();
    let dir = repo(HELLO, &[]);
    std::fs::create_dir_all(dir.path().join("functions")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("hello.wasm"),
        dir.path().join("functions/hello.wasm"),
    )
    .unwrap();
    let errors = dir_errors(dir.path());
    assert!(errors.contains("leads outside the repository"), "{errors}");
}

#[test]
fn built_components_and_later_errors_point_at_their_fields() {
    let text = "project: shop
functions:
  api:
    build: { dir: functions/api, command: make, output: out/api.wasm }
  hello: { wasm: hello.wasm }
";
    let file = parse("canopy.yaml", text).unwrap();
    assert_eq!(file.check_built_component("api", &http_component()), Ok(()));
    let error = file
        .check_built_component("api", &core_module())
        .unwrap_err();
    assert_eq!((error.line, error.column), (4, 57));
    insta::assert_snapshot!(error.to_string());
    assert!(
        file.check_built_component("hello", &http_component())
            .is_err()
    );
    assert!(
        file.check_built_component("nope", &http_component())
            .is_err()
    );

    let failed = file.diagnostic(
        &["functions", "api", "build", "command"],
        "exited with status 1: error[E0425]",
        Some("run the command locally".to_string()),
    );
    assert_eq!(
        failed.to_string(),
        "canopy.yaml:4:43: functions.api.build.command: exited with status 1: error[E0425]\n  help: run the command locally"
    );
    // A field not in the file: its nearest ancestor.
    let limits = file.diagnostic(
        &["functions", "hello", "limits"],
        "functions.hello.limits: x",
        None,
    );
    assert_eq!(
        limits.to_string(),
        "canopy.yaml:5:3: functions.hello.limits: x"
    );
}

/// Plausible pieces of a project file, to assemble at random.
fn yaml_piece() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "project",
        "domains",
        "functions",
        "websites",
        "hello",
        "wasm",
        "build",
        "dir",
        "command",
        "output",
        "timeout",
        "http",
        "path",
        "methods",
        "limits",
        "memory",
        "www",
        "x",
    ]);
    let values = prop::sample::select(vec![
        "shop",
        "/hello",
        "/",
        "a.wasm",
        "../x",
        "/abs",
        "2s",
        "1m30s",
        "64MiB",
        "0",
        "-1",
        "[GET, POST]",
        "[]",
        "{}",
        "~",
        "''",
        "'*.a.b'",
        "[a.b, a.b]",
        "99999999999999999999h",
        "{ path: / }",
        "[GET, 'G T']",
    ]);
    (0usize..4, keys, values, any::<bool>()).prop_map(|(indent, key, value, nested)| {
        let pad = "  ".repeat(indent);
        if nested {
            format!("{pad}{key}:\n")
        } else {
            format!("{pad}{key}: {value}\n")
        }
    })
}

proptest! {
    #[test]
    fn parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        let _ = parse("canopy.yaml", &text);
    }

    #[test]
    fn parse_never_panics_on_plausible_yaml(pieces in prop::collection::vec(yaml_piece(), 0..24)) {
        let text = pieces.concat();
        match parse("canopy.yaml", &text) {
            Ok(file) => prop_assert!(names::check_label(&file.project.name).is_ok()),
            Err(diagnostics) => {
                // Every error is located inside the file.
                let lines = text.lines().count().max(1);
                for d in &diagnostics.0 {
                    prop_assert!(d.line >= 1 && d.line <= lines + 1, "{d} in\n{text}");
                    prop_assert!(d.column >= 1);
                    prop_assert!(d.to_string().starts_with("canopy.yaml:"));
                }
            }
        }
    }
}
