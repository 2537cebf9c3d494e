;; Fixture `bad-segment`: a valid command module whose data segment lies past
;; the end of its one-page memory. It compiles, but instantiating it traps,
;; so the guest never runs: the container must end with StartError.
(module
  (memory 1)
  (data (i32.const 70000) "past the end")
  (func (export "_start")))
