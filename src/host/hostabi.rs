//! The proxy-wasm host calls claimguard makes, declared here against the ABI (0.2.1) and
//! answered with a `Result`, never a panic. The only file that declares host imports
//! (tests/no_sdk_hostcalls.rs keeps it so).
//!
//! Why not the SDK's `proxy_wasm::hostcalls` (0.2.5):
//! * every call there ends in `panic!("unexpected status: …")` on a status it does not expect
//!   (`log` included), and a panic in the VM is a trap (`panic = "abort"`) that takes the
//!   workload's traffic down: "no panics" would hold only as far as the host never surprises
//!   the SDK. Here every status other than the documented successes is a [`HostError`], and
//!   the callers fail closed on it (a 500, a refused configuration, a callout counted as
//!   failed); a failed `log` is ignored.
//! * its imports type the returned status as the `Status` enum (and `proxy_get_log_level`'s
//!   out-parameter as `LogLevel`): a host answering a value outside the enum (another or a
//!   newer host; Envoy reports the level "off" as 6) is undefined behaviour before any
//!   `match` runs. Here statuses and levels arrive as `u32` and are compared as numbers.
//! * its `dispatch_http_call` registers each token with the SDK's dispatcher, which
//!   claimguard does not use (src/host/roots.rs): that map only grew, one entry per callout, and
//!   panicked on a token seen before. claimguard keeps its own callouts (host/flow.rs).
//!
//! The `proxy-wasm` crate stays for its types and for the exports the host needs from it
//! (`proxy_on_memory_allocate`, `proxy_abi_version_0_2_1`, `_initialize`).
//!
//! Memory the host returns (header maps, buffers, properties, shared data) was allocated
//! through this module's `proxy_on_memory_allocate` (the SDK's: a `Box<[u8]>` of exactly the
//! size asked for, leaked), so it is adopted as the SDK adopts it,
//! `Vec::from_raw_parts(ptr, size, size)`, and freed when dropped; a null pointer is no data
//! (what Envoy writes for an empty value) and nothing is adopted. Nothing is copied: the
//! costs are the SDK's, less a few allocations it made for arguments (a `Vec` of header
//! pairs, an empty trailer map, a property path).

use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};
use std::fmt;
use std::ptr::{null, null_mut};

/// The ABI's status codes (`WasmResult`) the SDK's `Status` enum leaves out.
const BAD_EXPRESSION: u32 = 5;
const INVALID_MEMORY_ACCESS: u32 = 6;
const RESULT_MISMATCH: u32 = 9;
const BROKEN_CONNECTION: u32 = 11;
const UNIMPLEMENTED: u32 = 12;

/// `proxy_continue_stream`'s stream type for the HTTP request (the SDK's `StreamType`).
const STREAM_HTTP_REQUEST: u32 = 0;

/// A host call answered with a status it was not expected to give (the raw ABI code).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

impl HostError {
    /// Whether the host answered this (SDK-named) status.
    pub fn is(self, status: Status) -> bool {
        self.0 == status as u32
    }
}

/// The status's name (as the SDK's `Status` prints it, so log lines read as before), or its
/// number when it has none.
impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            0 => "Ok",
            1 => "NotFound",
            2 => "BadArgument",
            3 => "SerializationFailure",
            4 => "ParseFailure",
            BAD_EXPRESSION => "BadExpression",
            INVALID_MEMORY_ACCESS => "InvalidMemoryAccess",
            7 => "Empty",
            8 => "CasMismatch",
            RESULT_MISMATCH => "ResultMismatch",
            10 => "InternalFailure",
            BROKEN_CONNECTION => "BrokenConnection",
            UNIMPLEMENTED => "Unimplemented",
            n => return write!(f, "status {n}"),
        };
        f.write_str(name)
    }
}

impl fmt::Debug for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// The ABI 0.2.1 imports, with the SDK's signatures except that enums are passed and returned
// as the `u32` they are on the wire (`usize` is the ABI's 32-bit size on wasm32).
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map_type: u32, return_map_data: *mut *mut u8, return_map_size: *mut usize) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(path_data: *const u8, path_size: usize, value_data: *const u8, value_size: usize) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_http_call(
        upstream_data: *const u8,
        upstream_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        body_data: *const u8,
        body_size: usize,
        trailers_data: *const u8,
        trailers_size: usize,
        timeout: u32,
        return_token: *mut u32,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
}

const OK: u32 = Status::Ok as u32;
const NOT_FOUND: u32 = Status::NotFound as u32;

/// `Ok(())` for the status `Ok`, the status as an error otherwise.
fn ok(status: u32) -> Result<(), HostError> {
    match status {
        OK => Ok(()),
        s => Err(HostError(s)),
    }
}

/// Takes ownership of what the host wrote to (`data`, `size`): `None` for a null pointer.
///
/// # Safety
/// A non-null `data` must be a block of `size` bytes the host allocated through this
/// module's `proxy_on_memory_allocate` for this call, adopted nowhere else.
unsafe fn adopt(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        // SAFETY: `proxy_on_memory_allocate(size)` leaks a `Box<[u8]>` of length `size`
        // (allocated with the layout of `size` bytes, align 1; nothing at all for 0), which is
        // a `Vec` of length and capacity `size`: the SDK adopts it the same way.
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }
}

/// Writes to Envoy's log for this plugin. Callers ignore a failure: nothing is left to do
/// when the host cannot log.
pub fn log(level: LogLevel, message: &str) -> Result<(), HostError> {
    // SAFETY: the host only reads `message` for the duration of the call.
    ok(unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) })
}

/// The level the host logs this plugin at; `None` for a level past `Critical` (Envoy's
/// "off").
pub fn get_log_level() -> Result<Option<LogLevel>, HostError> {
    let mut level: u32 = 0;
    // SAFETY: the host writes one `u32` to the pointer during the call.
    ok(unsafe { proxy_get_log_level(&mut level) })?;
    Ok(match level {
        0 => Some(LogLevel::Trace),
        1 => Some(LogLevel::Debug),
        2 => Some(LogLevel::Info),
        3 => Some(LogLevel::Warn),
        4 => Some(LogLevel::Error),
        5 => Some(LogLevel::Critical),
        _ => None,
    })
}

/// The host's wall clock, in nanoseconds since the Unix epoch.
pub fn get_current_time_nanos() -> Result<u64, HostError> {
    let mut nanos: u64 = 0;
    // SAFETY: the host writes one `u64` to the pointer during the call.
    ok(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
    Ok(nanos)
}

/// Asks for `proxy_on_tick` on the current root context every `ms` milliseconds.
pub fn set_tick_period_ms(ms: u32) -> Result<(), HostError> {
    // SAFETY: no memory is passed.
    ok(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// Up to `max_size` bytes of a host buffer from `start`; `None` when the host has none (the
/// SDK's answer to `NotFound` and to a null pointer).
pub fn get_buffer(buffer_type: BufferType, start: usize, max_size: usize) -> Result<Option<Vec<u8>>, HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size during the call.
    let status = unsafe { proxy_get_buffer_bytes(buffer_type as u32, start, max_size, &mut data, &mut size) };
    match status {
        // SAFETY: on `Ok`, (`data`, `size`) is a block the host allocated for this call.
        OK => Ok(unsafe { adopt(data, size) }),
        NOT_FOUND => Ok(None),
        s => Err(HostError(s)),
    }
}

/// A header map as the host serializes it, to decode with [`crate::base::abi::decode_pairs`]
/// (the SDK's `get_map` panics on a value that is not UTF-8 and copies every name and value
/// into a `String`). Empty when the host has no headers.
pub fn get_header_map_pairs(map_type: MapType) -> Result<Vec<u8>, HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size during the call.
    ok(unsafe { proxy_get_header_map_pairs(map_type as u32, &mut data, &mut size) })?;
    // SAFETY: on `Ok`, (`data`, `size`) is a block the host allocated for this call.
    Ok(unsafe { adopt(data, size) }.unwrap_or_default())
}

/// Removes every value of header `key` (nothing to do is not an error).
pub fn remove_header_map_value(map_type: MapType, key: &str) -> Result<(), HostError> {
    // SAFETY: the host only reads `key` during the call.
    ok(unsafe { proxy_remove_header_map_value(map_type as u32, key.as_ptr(), key.len()) })
}

/// Sets header `key` to `value`, replacing any value it had.
pub fn replace_header_map_value(map_type: MapType, key: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: the host only reads `key` and `value` during the call.
    ok(
        unsafe {
            proxy_replace_header_map_value(map_type as u32, key.as_ptr(), key.len(), value.as_ptr(), value.len())
        },
    )
}

/// A host property by its serialized path, the segments joined by NUL (`b"source\0address"`;
/// one segment is just its bytes). `None` when the host has no value, or an empty one (the SDK
/// answers `NotFound` and a null pointer alike).
pub fn get_property(path: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host reads `path` and writes a pointer and a size during the call.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    match status {
        // SAFETY: on `Ok`, (`data`, `size`) is a block the host allocated for this call.
        OK => Ok(unsafe { adopt(data, size) }),
        NOT_FOUND => Ok(None),
        s => Err(HostError(s)),
    }
}

/// Sets a host property (for a path, see [`get_property`]): filter state other filters and
/// the access log read.
pub fn set_property(path: &[u8], value: &[u8]) -> Result<(), HostError> {
    // SAFETY: the host only reads `path` and `value` during the call.
    ok(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

/// The value and CAS token of a shared-data key (shared by every VM with this vm_id); each
/// `None` when the host has none (a CAS of 0 is none), both for `NotFound`.
pub fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: the host reads `key` and writes a pointer, a size and a CAS during the call.
    let status = unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match status {
        // SAFETY: on `Ok`, (`data`, `size`) is a block the host allocated for this call.
        OK => Ok((unsafe { adopt(data, size) }, (cas != 0).then_some(cas))),
        NOT_FOUND => Ok((None, None)),
        s => Err(HostError(s)),
    }
}

/// Stores a shared-data value, if `cas` is given only when the key's CAS token still is it
/// (`CasMismatch` otherwise: see [`HostError::is`]).
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
    // SAFETY: the host only reads `key` and `value` during the call.
    ok(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas.unwrap_or(0)) })
}

/// Resumes the current (paused) HTTP request.
pub fn resume_http_request() -> Result<(), HostError> {
    // SAFETY: no memory is passed.
    ok(unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) })
}

/// Answers the current HTTP request locally; `headers` serialized with
/// [`crate::base::abi::encode_pairs`].
pub fn send_http_response<K: AsRef<str>, V: AsRef<str>>(
    status_code: u32,
    headers: &[(K, V)],
    body: &[u8],
) -> Result<(), HostError> {
    let headers = crate::base::abi::encode_pairs(headers);
    // SAFETY: the host only reads `body` and `headers` during the call.
    ok(unsafe {
        proxy_send_local_response(
            status_code,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1, // not gRPC
        )
    })
}

/// An empty serialized map (a count of 0): the trailers of a callout.
const NO_PAIRS: [u8; 4] = [0; 4];

/// Sends a GET-style callout (no body, no trailers) to `cluster`; its token, by which
/// `proxy_on_http_call_response` names it.
pub fn dispatch_http_call(cluster: &str, headers: &[(&str, &str)], timeout_ms: u64) -> Result<u32, HostError> {
    let headers = crate::base::abi::encode_pairs(headers);
    let mut token: u32 = 0;
    // SAFETY: the host reads the cluster name and the maps, and writes the token, during the
    // call.
    ok(unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            null(),
            0,
            NO_PAIRS.as_ptr(),
            NO_PAIRS.len(),
            u32::try_from(timeout_ms).unwrap_or(u32::MAX),
            &mut token,
        )
    })?;
    Ok(token)
}

/// Makes `context_id` (a paused request) the context later calls act on; an error when the
/// host no longer knows it.
pub fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: no memory is passed.
    ok(unsafe { proxy_set_effective_context(context_id) })
}

/// Defines (or finds) a metric; its id.
pub fn define_metric(metric_type: MetricType, name: &str) -> Result<u32, HostError> {
    let mut id: u32 = 0;
    // SAFETY: the host reads `name` and writes the id during the call.
    ok(unsafe { proxy_define_metric(metric_type as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Sets a gauge.
pub fn record_metric(metric_id: u32, value: u64) -> Result<(), HostError> {
    // SAFETY: no memory is passed.
    ok(unsafe { proxy_record_metric(metric_id, value) })
}

/// Adds to a counter.
pub fn increment_metric(metric_id: u32, offset: i64) -> Result<(), HostError> {
    // SAFETY: no memory is passed.
    ok(unsafe { proxy_increment_metric(metric_id, offset) })
}
