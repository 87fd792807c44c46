;; The floor, reading the request header map once per request (proxy_get_header_map_pairs).
;;
;; The proxy-wasm floor, measured (BENCHMARKS.md, "What any proxy-wasm filter pays"): the
;; least a filter can be in Envoy. It exports only what the host needs to load it and to
;; create a stream context (two VM entries per stream, as claimguard), and a bump allocator
;; for what the host hands in. `make floor-modules` assembles it into target/floor/.
(module
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 32) "authorization")
  ;; Bump allocation in the second page, reset on every request.
  (global $heap (mut i32) (i32.const 65536))
  (func (export "_initialize"))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap
      (i32.add (global.get $heap) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (if (i32.gt_u (global.get $heap) (i32.const 131072))
      (then (global.set $heap (i32.const 65536)) (local.set $p (i32.const 65536))))
    (local.get $p))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  ;; proxy_on_request_headers(context, headers, end_of_stream) -> Continue (0)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (global.set $heap (i32.const 65536))
    ;; Envoy serializes the map and calls proxy_on_memory_allocate to place it.
    (drop (call $pairs (i32.const 0) (i32.const 16) (i32.const 20)))
    (i32.const 0))
)
