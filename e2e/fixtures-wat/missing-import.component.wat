;; A WASI 0.2 command component, written by hand, that imports an interface
;; no host provides: `example:missing/greeter@1.0.0`. Apart from that import
;; it is an ordinary command: it exports `wasi:cli/run@0.2.0`, whose `run`
;; calls `greet` and returns ok. wasmrun must refuse it at pull (or create)
;; time with a message naming the import, and never start it.
;;
;; Compiled by the e2e tests with the `wat` crate (e2e/components.rs).
(component
  (import "example:missing/greeter@1.0.0" (instance $greeter
    (export "greet" (func (param "times" u32) (result u32)))
  ))
  (core func $greet (canon lower (func $greeter "greet")))
  (core module $main
    (import "example:missing/greeter@1.0.0" "greet" (func $greet (param i32) (result i32)))
    ;; `run: func() -> result`: 0 is ok, 1 is err.
    (func (export "run") (result i32)
      (drop (call $greet (i32.const 1)))
      (i32.const 0))
  )
  (core instance $imports
    (export "greet" (func $greet)))
  (core instance $main (instantiate $main
    (with "example:missing/greeter@1.0.0" (instance $imports))))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $cli-run (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli-run))
)
