//! Is this file a Canopy function? A valid WebAssembly *component* that
//! exports `wasi:http/incoming-handler@0.2.x`.
//!
//! A structural check with wasmparser only: it does not compile or link the
//! component (the runtime does that at deploy time).

use wasmparser::{ComponentExternalKind, Parser, Payload, Validator, WasmFeatures};

/// The interface every function exports, without its version.
pub const HTTP_HANDLER_INTERFACE: &str = "wasi:http/incoming-handler";

/// Why bytes are not a Canopy function. The messages follow the file name
/// (`functions/hello.wasm is not a WebAssembly file`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComponentError {
    #[error("is not a WebAssembly file")]
    NotWasm,
    #[error(
        "is a core WebAssembly module, not a component: build it for wasm32-wasip2 or run `wasm-tools component new`"
    )]
    CoreModule,
    #[error("is not a valid WebAssembly component: {reason}")]
    Invalid { reason: String },
    #[error(
        "does not export wasi:http/incoming-handler@0.2; a Canopy function is a wasi:http proxy component"
    )]
    NoHttpHandler {
        /// The names the component does export, for the help text.
        exports: Vec<String>,
    },
}

impl ComponentError {
    /// What to do about it.
    pub fn help(&self) -> Option<String> {
        match self {
            ComponentError::NotWasm => Some(
                "point it at a compiled `.wasm` component (such a file starts with the bytes `\\0asm`)"
                    .to_string(),
            ),
            ComponentError::CoreModule => Some(
                "with Rust: `cargo build --target wasm32-wasip2`; for a module built another way: `wasm-tools component new MODULE.wasm --adapt wasi_snapshot_preview1.reactor.wasm -o COMPONENT.wasm`"
                    .to_string(),
            ),
            ComponentError::Invalid { .. } => Some(
                "rebuild it; `wasm-tools validate --features all FILE` shows the same problem"
                    .to_string(),
            ),
            ComponentError::NoHttpHandler { exports } => {
                let found = if exports.is_empty() {
                    "it exports nothing".to_string()
                } else {
                    format!("it exports: {}", exports.join(", "))
                };
                Some(format!(
                    "{found}; build it for the `wasi:http/proxy` world (Rust: the `wasi` crate's `wasi::http::proxy::export!`; Python: `componentize-py -w wasi:http/proxy`)"
                ))
            }
        }
    }
}

/// Check that `bytes` are a valid component exporting
/// `wasi:http/incoming-handler@0.2.x` (any patch version).
pub fn check_component(bytes: &[u8]) -> Result<(), ComponentError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(ComponentError::NotWasm);
    }
    // A core module is the common mistake (wasm32-wasip1, wasm32-unknown-unknown);
    // say so before any validation detail.
    if Parser::is_core_wasm(bytes) {
        return Err(ComponentError::CoreModule);
    }
    if !Parser::is_component(bytes) {
        return Err(ComponentError::Invalid {
            reason: "unknown WebAssembly version or layer in the header".to_string(),
        });
    }
    Validator::new_with_features(WasmFeatures::default())
        .validate_all(bytes)
        .map_err(|error| ComponentError::Invalid {
            reason: error.to_string(),
        })?;
    let exports = top_level_instance_exports(bytes)?;
    if exports.iter().any(|name| is_http_handler(name)) {
        Ok(())
    } else {
        Err(ComponentError::NoHttpHandler { exports })
    }
}

/// Names of the instances the outermost component exports (nested
/// components' and modules' exports are their own business).
fn top_level_instance_exports(bytes: &[u8]) -> Result<Vec<String>, ComponentError> {
    let mut exports = Vec::new();
    // Depth 1 is the outer component; nested modules and components open
    // deeper levels that `parse_all` flattens into one stream.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|error| ComponentError::Invalid {
            reason: error.to_string(),
        })?;
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|error| ComponentError::Invalid {
                        reason: error.to_string(),
                    })?;
                    if export.kind == ComponentExternalKind::Instance {
                        exports.push(export.name.name.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    debug_assert_eq!(depth, 0, "every opened module or component ends");
    Ok(exports)
}

/// `wasi:http/incoming-handler@0.2.N` for any patch `N` (with an optional
/// pre-release suffix, `0.2.0-rc-2023-12-05`).
fn is_http_handler(name: &str) -> bool {
    let Some(version) = name
        .strip_prefix(HTTP_HANDLER_INTERFACE)
        .and_then(|rest| rest.strip_prefix("@0.2."))
    else {
        return false;
    };
    let patch_digits = version.bytes().take_while(u8::is_ascii_digit).count();
    patch_digits > 0 && (patch_digits == version.len() || version[patch_digits..].starts_with('-'))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal component exporting an instance named `export_name` with a
    /// `handle` function: enough for the structural check.
    pub(crate) fn component_exporting(export_name: &str) -> Vec<u8> {
        let text = format!(
            r#"(component
                (core module $m (func (export "handle") (param i32 i32)))
                (core instance $i (instantiate $m))
                (func $handle (param "request" u32) (param "response-out" u32)
                    (canon lift (core func $i "handle")))
                (instance $h (export "handle" (func $handle)))
                (export "{export_name}" (instance $h))
            )"#
        );
        wat::parse_str(text).unwrap()
    }

    pub(crate) fn http_component() -> Vec<u8> {
        component_exporting("wasi:http/incoming-handler@0.2.0")
    }

    pub(crate) fn core_module() -> Vec<u8> {
        wat::parse_str(r#"(module (func (export "_start")))"#).unwrap()
    }

    #[test]
    fn accepts_http_components_of_any_patch_version() {
        assert_eq!(check_component(&http_component()), Ok(()));
        let patch9 = component_exporting("wasi:http/incoming-handler@0.2.9");
        assert_eq!(check_component(&patch9), Ok(()));
    }

    #[test]
    fn rejects_other_exports() {
        let other = component_exporting("wasi:cli/run@0.2.0");
        assert_eq!(
            check_component(&other),
            Err(ComponentError::NoHttpHandler {
                exports: vec!["wasi:cli/run@0.2.0".to_string()]
            })
        );
        let v3 = component_exporting("wasi:http/incoming-handler@0.3.0");
        assert!(matches!(
            check_component(&v3),
            Err(ComponentError::NoHttpHandler { .. })
        ));
    }

    #[test]
    fn rejects_modules_garbage_and_broken_components() {
        assert_eq!(
            check_component(&core_module()),
            Err(ComponentError::CoreModule)
        );
        assert_eq!(check_component(b"hello"), Err(ComponentError::NotWasm));
        assert_eq!(check_component(b""), Err(ComponentError::NotWasm));
        let mut truncated = http_component();
        truncated.truncate(truncated.len() - 3);
        assert!(matches!(
            check_component(&truncated),
            Err(ComponentError::Invalid { .. })
        ));
    }

    #[test]
    fn handler_names() {
        assert!(is_http_handler("wasi:http/incoming-handler@0.2.0"));
        assert!(is_http_handler("wasi:http/incoming-handler@0.2.10"));
        assert!(is_http_handler(
            "wasi:http/incoming-handler@0.2.0-rc-2023-12-05"
        ));
        assert!(!is_http_handler("wasi:http/incoming-handler"));
        assert!(!is_http_handler("wasi:http/incoming-handler@0.2."));
        assert!(!is_http_handler("wasi:http/incoming-handler@0.20.0"));
        assert!(!is_http_handler("wasi:http/incoming-handler@0.2.x"));
    }
}
