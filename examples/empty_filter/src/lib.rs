//! An HTTP filter that lets every request through: what any proxy-wasm Rust filter costs
//! Envoy before it does any work (`examples/ab.rs` compares it with claimguard).
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;
impl Context for Root {}
impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Pass))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Pass;
impl Context for Pass {}
impl HttpContext for Pass {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        #[cfg(feature = "headers")]
        {
            // Read (and drop) the header map, as claimguard does first.
            let headers = proxy_wasm::hostcalls::get_map(proxy_wasm::types::MapType::HttpRequestHeaders);
            if headers.is_err() {
                return Action::Pause;
            }
        }
        Action::Continue
    }
}
