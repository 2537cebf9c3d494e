;; A WASI preview 1 command module, written by hand, that imports a function
;; no host provides: `env.missing_host_function`. Apart from that import it
;; is an ordinary command: it exports its memory and `_start`, which calls
;; the missing function and exits through `proc_exit`. wasmrun must refuse it
;; at pull (or create) time with a message naming the import, and never
;; start it.
;;
;; Compiled by the e2e tests with the `wat` crate (e2e/components.rs).
(module
  (import "env" "missing_host_function" (func $missing (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (call $proc_exit (call $missing (i32.const 0))))
)
