//! The proxy-wasm layer (with its host calls, [`crate::host::hostabi`], the only code that makes
//! host calls): the exported callbacks, the registry of root contexts, and [`HostAbi`], the
//! [`Host`] that [`crate::host::flow`] runs against in Envoy. What each callback does with a
//! request, the key caches and the paused requests is decided in `flow.rs`, natively tested;
//! this file only reads the configuration buffer and the clock, picks the root a callback is
//! for, and turns each [`Host`] method into one ABI call.
//!
//! Host calls go through [`crate::host::hostabi`], not the SDK's `hostcalls`: a host call that
//! fails or answers a status nobody expected is an error the flow handles (the request, the
//! config or the callout fails closed), never a panic inside the VM.
//!
//! Re-entrancy: a local reply or a resume issued from the root context can make Envoy call
//! back into this VM synchronously. No `RefCell` borrow is held here across a call into the
//! flow that can reach such a host call (`flow.rs` keeps its own borrows short for the same
//! reason).

use crate::host::flow::{self, Host, Vm};
use crate::host::hostabi::{self, HostError};
use crate::host::roots::Roots;
use crate::keys::remote::{SharedStore, StoreError};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType, MetricType, Status};
use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;

// `_initialize` (WASI reactor start: runs static constructors). The SDK's dispatcher is not
// used: see the exports below.
proxy_wasm::main! {{}}

// The proxy-wasm callbacks, dispatched here instead of by the SDK (src/host/roots.rs says why).
// The SDK defines every `proxy_on_*` symbol itself, so these are linked under a
// `claimguard_on_*` name; `make build` keeps only them (src/host/exports.json, wasm-metadce)
// and renames them to `proxy_on_*`. The SDK still provides `proxy_abi_version_0_2_1` and
// `proxy_on_memory_allocate`; the host calls are src/host/hostabi.rs's.

thread_local! {
    static ROOTS: RefCell<Roots<Rc<Root>>> = RefCell::new(Roots::default());
}

/// The root context `id`, created on first sight (`proxy_on_vm_start` or `_configure`).
fn root(id: u32) -> Rc<Root> {
    let now = HostAbi.now_ms().unwrap_or(0);
    ROOTS.with(|r| {
        r.borrow_mut().get_or_add(id, now, || {
            Rc::new(Root {
                context_id: id,
                vm: RefCell::new(None),
            })
        })
    })
}

fn known_root(id: u32) -> Option<Rc<Root>> {
    ROOTS.with(|r| r.borrow().get(id))
}

#[export_name = "claimguard_on_context_create"]
pub extern "C" fn on_context_create(context_id: u32, root_context_id: u32) {
    if root_context_id == 0 {
        root(context_id);
    } else {
        ROOTS.with(|r| r.borrow_mut().created(context_id, root_context_id));
    }
}

#[export_name = "claimguard_on_vm_start"]
pub extern "C" fn on_vm_start(root_context_id: u32, _vm_configuration_size: usize) -> bool {
    root(root_context_id);
    true
}

#[export_name = "claimguard_on_configure"]
pub extern "C" fn on_configure(root_context_id: u32, _plugin_configuration_size: usize) -> bool {
    let ok = root(root_context_id).on_configure();
    if !ok && known_root(root_context_id).is_some_and(|r| r.vm.borrow().is_none()) {
        // Refused at its first configuration: the host discards this root.
        ROOTS.with(|r| r.borrow_mut().remove(root_context_id));
    }
    ok
}

#[export_name = "claimguard_on_tick"]
pub extern "C" fn on_tick(root_context_id: u32) {
    let Some(root) = known_root(root_context_id) else {
        return;
    };
    let now = HostAbi.now_ms();
    if let Some(now) = now {
        // Roots the host deleted (they stopped ticking) go, with their caches; dropped here,
        // outside the registry's borrow (a Vm flushes its counters when it goes).
        let gone = ROOTS.with(|r| r.borrow_mut().tick(root_context_id, now));
        for g in &gone {
            HostAbi.log(
                LogLevel::Info,
                &format!("root context {} stopped ticking: dropped its state", g.context_id),
            );
        }
        drop(gone);
    }
    let Some(vm) = root.vm.borrow().clone() else { return };
    let Some(now) = now else { return };
    flow::on_tick(&vm, root.context_id, now);
}

#[export_name = "claimguard_on_http_call_response"]
pub extern "C" fn on_http_call_response(
    root_context_id: u32,
    token_id: u32,
    _num_headers: usize,
    body_size: usize,
    _num_trailers: usize,
) {
    let Some(root) = known_root(root_context_id) else {
        return;
    };
    let Some(vm) = root.vm.borrow().clone() else { return };
    let now = HostAbi.now_ms().unwrap_or(0);
    flow::on_http_call_response(&vm, token_id, body_size, now);
}

#[export_name = "claimguard_on_request_headers"]
pub extern "C" fn on_request_headers(context_id: u32, _num_headers: usize, _end_of_stream: bool) -> Action {
    let Some(root) = ROOTS.with(|r| r.borrow().root_of_stream(context_id)) else {
        // Fail closed: with several plugins in this VM, a stream the host did not announce
        // could be any of theirs.
        return flow::refuse(&HostAbi, "the host did not say which plugin this stream is for");
    };
    let Some(vm) = root.vm.borrow().clone() else {
        return flow::refuse(&HostAbi, "no configuration");
    };
    flow::on_request_headers(&vm, context_id)
}

/// How often each VM looks at the shared JWKS state and wakes waiting requests.
const TICK_MS: u32 = 200;

/// The proxy, through [`hostabi`]: each method one host call (the request's are about the
/// current context). Envoy's shared data (one map per vm_id, shared by every worker's VM) is
/// its [`SharedStore`].
#[derive(Clone, Copy)]
pub struct HostAbi;

impl SharedStore for HostAbi {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostabi::get_shared_data(key) {
            Ok((Some(v), Some(cas))) => Some((v, cas)),
            _ => None,
        }
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        hostabi::set_shared_data(key, value, cas).map_err(|e| {
            if e.is(Status::CasMismatch) {
                StoreError::CasMismatch
            } else {
                StoreError::Other
            }
        })
    }
}

impl Host for HostAbi {
    type Error = HostError;

    fn now_ms(&self) -> Option<u64> {
        Some(hostabi::get_current_time_nanos().ok()? / 1_000_000)
    }
    fn log(&self, level: LogLevel, msg: &str) {
        // Nothing sensible is left to do when the host cannot log.
        let _ = hostabi::log(level, msg);
    }
    fn log_level(&self) -> Result<Option<LogLevel>, HostError> {
        hostabi::get_log_level()
    }
    fn request_headers(&self) -> Result<Vec<u8>, HostError> {
        hostabi::get_header_map_pairs(MapType::HttpRequestHeaders)
    }
    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        hostabi::remove_header_map_value(MapType::HttpRequestHeaders, name)
    }
    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        hostabi::replace_header_map_value(MapType::HttpRequestHeaders, name, value)
    }
    fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
        hostabi::get_property(path).ok().flatten()
    }
    fn set_property(&self, path: &[u8], value: &[u8]) -> Result<(), HostError> {
        hostabi::set_property(path, value)
    }
    fn send_reply(&self, status: u32, headers: &[(String, String)], body: &str) -> Result<(), HostError> {
        hostabi::send_http_response(status, headers, body.as_bytes())
    }
    fn resume(&self) -> Result<(), HostError> {
        hostabi::resume_http_request()
    }
    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        hostabi::set_effective_context(context_id)
    }
    fn define_metric(&self, kind: MetricType, name: &str) -> Option<u32> {
        hostabi::define_metric(kind, name).ok()
    }
    fn increment_metric(&self, id: u32, by: i64) {
        let _ = hostabi::increment_metric(id, by);
    }
    fn record_metric(&self, id: u32, value: u64) {
        let _ = hostabi::record_metric(id, value);
    }
    fn memory_pages(&self) -> usize {
        core::arch::wasm32::memory_size(0)
    }
    fn dispatch(&self, cluster: &str, headers: &[(&str, &str)], timeout_ms: u64) -> Result<u32, HostError> {
        hostabi::dispatch_http_call(cluster, headers, timeout_ms)
    }
    fn callout_headers(&self) -> Vec<u8> {
        hostabi::get_header_map_pairs(MapType::HttpCallResponseHeaders).unwrap_or_default()
    }
    fn callout_body(&self, size: usize) -> Vec<u8> {
        hostabi::get_buffer(BufferType::HttpCallResponseBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default()
    }
}

struct Root {
    context_id: u32,
    /// Set by a configuration the filter accepted. Behind a RefCell, not `&mut self`: a
    /// root's callback can re-enter the VM (waking a paused request continues its filter
    /// chain), and the streams of this root must still find its Vm then.
    vm: RefCell<Option<Rc<RefCell<Vm<HostAbi>>>>>,
}

impl Root {
    fn on_configure(&self) -> bool {
        let bytes = match hostabi::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                HostAbi.log(LogLevel::Error, &format!("cannot read plugin configuration: {e:?}"));
                return false;
            }
        };
        // Lease holder identity and the caches' hash seed: random per VM (std seeds
        // RandomState from WASI random_get).
        let holder = std::collections::hash_map::RandomState::new().build_hasher().finish() | 1;
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let old = self.vm.borrow().clone();
        let Some(vm) = Vm::configure(HostAbi, &bytes, old.as_deref(), holder, seed) else {
            return false;
        };
        drop(old);
        *self.vm.borrow_mut() = Some(Rc::new(RefCell::new(vm)));
        // The tick drives the JWKS cache, and also the clock and the batched counters.
        if let Err(e) = hostabi::set_tick_period_ms(TICK_MS) {
            HostAbi.log(LogLevel::Error, &format!("cannot set tick period: {e:?}"));
            return false;
        }
        true
    }
}
