;; Fixture `big-memory`: a command module that asks for 64 MiB of memory at
;; instantiation, before any of its code runs.
(module
  (memory 1024)
  (func (export "_start")))
