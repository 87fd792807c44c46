//! An HTTP filter that lets every request through: what any proxy-wasm Rust filter costs
//! Envoy before it does any work (`examples/ab.rs` compares it with claimguard).
//!
//! Features make it do one thing on each request instead, to price that thing in Envoy:
//! `headers` reads the request header map once, as claimguard does first; each `x20-*` feature
//! repeats one host call 20 times per request, so that (CPU per request − the empty filter's)
//! / 20 is the cost of one call, above the noise of a shared machine. `clock-and-counters`
//! makes, once per request, the three calls claimguard used to make (the clock, two counters).
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
#[allow(unused_imports)]
use proxy_wasm::{hostcalls, types::MapType, types::MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { metric: 0 }) });
}}

struct Root {
    metric: u32,
}

impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.metric = hostcalls::define_metric(MetricType::Counter, "empty_filter_calls").unwrap_or(0);
        true
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Pass { metric: self.metric }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Pass {
    #[allow(dead_code)]
    metric: u32,
}

impl Context for Pass {}
impl HttpContext for Pass {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        #[cfg(feature = "headers")]
        {
            // Read (and drop) the header map, as claimguard does first.
            let headers = hostcalls::get_map(MapType::HttpRequestHeaders);
            if headers.is_err() {
                return Action::Pause;
            }
        }
        #[allow(unused_mut)]
        let mut ok = 0usize;
        #[cfg(feature = "raw-header-map")]
        {
            // The header map as claimguard reads it: the host's buffer, taken back and dropped
            // (no decoding), so only what Envoy does for the call is priced.
            ok += raw_header_map_len().min(1);
        }
        #[cfg(feature = "clock-and-counters")]
        {
            // Once per request, what claimguard did before the tick took them over.
            ok += hostcalls::get_current_time().map_or(0, |_| 1);
            ok += hostcalls::increment_metric(self.metric, 1).map_or(0, |_| 1);
            ok += hostcalls::increment_metric(self.metric, 1).map_or(0, |_| 1);
        }
        #[allow(unused_variables)]
        for _ in 0..20 {
            #[cfg(feature = "x20-raw-header-map")]
            {
                ok += raw_header_map_len().min(1);
            }
            #[cfg(feature = "x20-header-map")]
            {
                ok += hostcalls::get_map(MapType::HttpRequestHeaders).map_or(0, |h| h.len().min(1));
            }
            #[cfg(feature = "x20-get-header")]
            {
                ok += hostcalls::get_map_value(MapType::HttpRequestHeaders, "authorization").map_or(0, |_| 1);
            }
            #[cfg(feature = "x20-get-absent-header")]
            {
                ok += hostcalls::get_map_value(MapType::HttpRequestHeaders, "x-absent").map_or(0, |_| 1);
            }
            #[cfg(feature = "x20-time")]
            {
                ok += hostcalls::get_current_time().map_or(0, |_| 1);
            }
            #[cfg(feature = "x20-counter")]
            {
                ok += hostcalls::increment_metric(self.metric, 1).map_or(0, |_| 1);
            }
            #[cfg(feature = "x20-set-header")]
            {
                ok += hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-claim-sub", Some("alice@example.com"))
                    .map_or(0, |_| 1);
            }
            #[cfg(feature = "x20-remove-absent-header")]
            {
                ok += hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-absent", None).map_or(0, |_| 1);
            }
        }
        if std::hint::black_box(ok) > 20 {
            return Action::Pause;
        }
        Action::Continue
    }
}

#[cfg(any(feature = "raw-header-map", feature = "x20-raw-header-map"))]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: MapType, data: *mut *mut u8, size: *mut usize) -> proxy_wasm::types::Status;
}

/// Calls `proxy_get_header_map_pairs` and frees the buffer; returns its length.
#[cfg(any(feature = "raw-header-map", feature = "x20-raw-header-map"))]
fn raw_header_map_len() -> usize {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: as in claimguard's src/host/glue.rs: the host allocated `size` bytes at `data` through
    // this module's proxy_on_memory_allocate.
    unsafe {
        match proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) {
            proxy_wasm::types::Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size).len(),
            _ => 0,
        }
    }
}
