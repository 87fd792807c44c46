//! The proxy-wasm layer, and the only module that imports `proxy_wasm`: read the plugin config
//! (refusing a bad one), hand each request's headers to [`crate::decision::authenticate`] and
//! carry out the decision. Host calls go through `hostcalls` directly so that a failing host
//! call becomes a handled error instead of an SDK `unwrap` panic inside the VM.

use crate::config::Config;
use crate::decision::{evaluate, Decision, Evaluation, HttpRequest};
use crate::policy::{Effect, RuleAction};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use serde_json::json;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
}}

fn log(level: LogLevel, msg: &str) {
    // Nothing sensible is left to do when the host cannot log.
    let _ = hostcalls::log(level, msg);
}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                log(LogLevel::Error, &format!("cannot read plugin configuration: {e:?}"));
                return false;
            }
        };
        match Config::from_json(&bytes) {
            Ok(cfg) => {
                for w in &cfg.warnings {
                    log(LogLevel::Warn, w);
                }
                log(
                    LogLevel::Info,
                    &format!("configured {} provider(s): {}", cfg.providers.len(), summary(&cfg)),
                );
                self.config = Some(Rc::new(cfg));
                true
            }
            Err(e) => {
                // Refusing the config keeps the proxy on its last good state (or, at start-up,
                // keeps the listener from serving with a broken filter).
                log(LogLevel::Error, &format!("rejected plugin configuration: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            config: self.config.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

fn summary(cfg: &Config) -> String {
    cfg.providers
        .iter()
        .map(|p| format!("{} ({} key(s))", p.name, p.keys.keys.len()))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Filter {
    config: Option<Rc<Config>>,
}

impl Context for Filter {}

impl Filter {
    fn reply(&self, status: u32, headers: &[(String, String)], body: &str) -> Action {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if let Err(e) = hostcalls::send_http_response(status, hs, Some(body.as_bytes())) {
            log(LogLevel::Error, &format!("cannot send local reply: {e:?}"));
        }
        Action::Pause
    }

    fn internal_error(&self, what: &str) -> Action {
        // Fail closed: never let a request through that was not checked.
        log(LogLevel::Error, &format!("{what}; refusing the request"));
        let headers = vec![("content-type".to_string(), "application/json".to_string())];
        self.reply(
            500,
            &headers,
            r#"{"error":"internal_error","message":"authentication could not be performed"}"#,
        )
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            return self.internal_error("no configuration");
        };
        let headers = match hostcalls::get_map(MapType::HttpRequestHeaders) {
            Ok(h) => h,
            Err(e) => return self.internal_error(&format!("cannot read request headers: {e:?}")),
        };
        let now = match hostcalls::get_current_time().map(|t| t.duration_since(UNIX_EPOCH)) {
            Ok(Ok(d)) => d.as_secs(),
            _ => return self.internal_error("cannot read the clock"),
        };
        let req = HttpRequest::from_headers(&headers);
        let ev = evaluate(&config, &req, now);
        report(&config, &req, &ev);
        match ev.decision {
            Decision::Allow { .. } => Action::Continue,
            Decision::Deny(d) => self.reply(d.status, &d.headers, &d.body),
        }
    }
}

/// Log lines for what the policy saw but did not enforce (dry-run, AUDIT), and for denials.
fn report(config: &Config, req: &HttpRequest, ev: &Evaluation) {
    let (sub, provider) = match &ev.decision {
        Decision::Allow { identity: Some(id) } => (id.subject.as_deref().unwrap_or("-"), id.provider.as_str()),
        Decision::Deny(d) => ("-", d.provider.as_deref().unwrap_or("-")),
        _ => ("-", "-"),
    };
    let path = ev.normalized_path.as_deref().unwrap_or(req.path);
    if let Some(pd) = &ev.policy {
        for t in &pd.trace {
            let audit = config
                .policy
                .rules
                .get(t.rule)
                .is_some_and(|r| r.action == RuleAction::Audit);
            if audit && t.outcome.is_ok() {
                let line = json!({"claimguard": "audit", "rule": config.policy.rule_name(t.rule),
                    "method": req.method, "path": path, "provider": provider, "sub": sub});
                log(LogLevel::Info, &line.to_string());
            }
        }
        if let Some(shadow) = &pd.shadow {
            let (would, rule) = match shadow {
                Effect::Deny { rule, .. } => ("deny", rule.map(|r| config.policy.rule_name(r))),
                Effect::Allow { rule } => ("allow", rule.map(|r| config.policy.rule_name(r))),
            };
            let why: Vec<String> = pd.trace.iter().map(|t| config.policy.describe(t)).collect();
            let line = json!({"claimguard": "dry_run", "wouldBe": would, "rule": rule,
                "enforced": if pd.effect.is_allow() { "allow" } else { "deny" },
                "method": req.method, "path": path, "provider": provider, "sub": sub, "trace": why});
            log(LogLevel::Info, &line.to_string());
        }
    }
    if let Decision::Deny(d) = &ev.decision {
        let line = json!({"claimguard": "deny", "status": d.status, "reason": d.reason,
            "description": d.description, "provider": d.provider, "method": req.method, "path": path});
        log(LogLevel::Debug, &line.to_string());
    }
}
