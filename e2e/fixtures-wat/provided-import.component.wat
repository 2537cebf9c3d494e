;; The twin of missing-import.component.wat: the same hand-written command
;; component, importing an interface wasmrun does provide
;; (`wasi:random/random@0.2.0`) instead of the missing one. It shows that the
;; hand-written shape is a runnable command, so that the refusal of its twin
;; is about the import alone. `run` returns ok: exit code 0.
;;
;; Compiled by the e2e tests with the `wat` crate (e2e/components.rs).
(component
  (import "wasi:random/random@0.2.0" (instance $random
    (export "get-random-u64" (func (result u64)))
  ))
  (core func $get-random-u64 (canon lower (func $random "get-random-u64")))
  (core module $main
    (import "wasi:random/random@0.2.0" "get-random-u64" (func $get-random-u64 (result i64)))
    ;; `run: func() -> result`: 0 is ok, 1 is err.
    (func (export "run") (result i32)
      (drop (call $get-random-u64))
      (i32.const 0))
  )
  (core instance $imports
    (export "get-random-u64" (func $get-random-u64)))
  (core instance $main (instantiate $main
    (with "wasi:random/random@0.2.0" (instance $imports))))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $cli-run (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli-run))
)
