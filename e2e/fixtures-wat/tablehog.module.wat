;; Fixture `tablehog`: a command module that grows its table by 65,536
;; funcref slots (512 KiB of host memory) at a time until the host refuses,
;; then traps, as a guest's allocator does when memory runs out. It checks
;; that the container's memory limit covers tables as well as linear memory.
(module
  (table $slots 0 funcref)
  (func (export "_start")
    (loop $grow
      (if (i32.eq (table.grow $slots (ref.null func) (i32.const 65536)) (i32.const -1))
        (then unreachable))
      (br $grow))))
