//! Which side serves a pod: wasmrun's own wasm runtime, or the backing
//! runtime. One table of rules; calls by id go to whoever owns the id.
//!
//! A pod is wasm when any of these holds:
//! - its `runtime_handler` is one of `wasm_handlers` (default `wasmrun`);
//! - its annotation `module.wasm.image/variant` is `compat` or `compat-smart`;
//! - its annotation `run.oci.handler` is `wasm` or `wasm-smart`.
//!
//! Otherwise it goes to the backing runtime (an empty handler is the backing
//! runtime's default). Without a backing runtime, a pod that names no handler
//! runs as wasm (crictl `runp` names none), and a pod that names another
//! handler is refused.

use std::collections::HashMap;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Wasm,
    Backing,
}

#[derive(Debug, Clone)]
pub struct Router {
    pub wasm_handlers: Vec<String>,
    pub has_backing: bool,
}

impl Router {
    pub fn pod(&self, runtime_handler: &str, annotations: &HashMap<String, String>) -> Result<Side> {
        let annotated =
            |key: &str, values: [&str; 2]| annotations.get(key).is_some_and(|v| values.contains(&v.as_str()));
        let wasm = self.wasm_handlers.iter().any(|h| h == runtime_handler)
            || annotated("module.wasm.image/variant", ["compat", "compat-smart"])
            || annotated("run.oci.handler", ["wasm", "wasm-smart"]);
        match (wasm, self.has_backing) {
            (true, _) => Ok(Side::Wasm),
            (false, true) => Ok(Side::Backing),
            (false, false) if runtime_handler.is_empty() => Ok(Side::Wasm),
            (false, false) => Err(Error::FailedPrecondition(format!(
                "RunPodSandbox: runtime handler {runtime_handler:?} is not a wasm handler ({}), and no backing \
                 runtime is configured (backing_endpoint) to run other pods",
                self.wasm_handlers.join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(has_backing: bool) -> Router {
        Router { wasm_handlers: vec!["wasmrun".into()], has_backing }
    }

    #[test]
    fn the_rule_table() {
        let none = HashMap::new();
        let compat = HashMap::from([("module.wasm.image/variant".to_owned(), "compat".to_owned())]);
        let crun = HashMap::from([("run.oci.handler".to_owned(), "wasm-smart".to_owned())]);
        let with = router(true);
        assert_eq!(with.pod("wasmrun", &none).unwrap(), Side::Wasm);
        assert_eq!(with.pod("", &compat).unwrap(), Side::Wasm);
        assert_eq!(with.pod("runc", &crun).unwrap(), Side::Wasm);
        assert_eq!(with.pod("", &none).unwrap(), Side::Backing);
        assert_eq!(with.pod("runc", &none).unwrap(), Side::Backing);

        let without = router(false);
        assert_eq!(without.pod("", &none).unwrap(), Side::Wasm);
        assert_eq!(without.pod("wasmrun", &none).unwrap(), Side::Wasm);
        let refused = without.pod("runc", &none).unwrap_err();
        assert!(matches!(&refused, Error::FailedPrecondition(m) if m.contains("runc")), "{refused}");
    }
}
