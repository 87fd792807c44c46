// The shipped module's whole request path in Node's V8, behind a minimal proxy-wasm host written
// here: configure it with the benchmark's plugin config, then per request create a context,
// call proxy_on_request_headers with the benchmark's headers, and end the stream (done,
// delete), as Envoy does. Reports µs per request of the VM side (host calls included, at what
// a JS host function costs) and which host calls one request makes. `make host-profile`.
//
//   node examples/host_profile.mjs MODULE.wasm < target/vm-profile-inputs.json
//
// Env: HOST_PROFILE_REQUESTS (default 200000; 20000 cold), HOST_PROFILE_ALG (rs256 | es256 |
// es384 | ps256 | eddsa), HOST_PROFILE_COLD=1: the benchmark's `direct-nocache` path, every
// request verified (`jwtCacheSize: 0`, which also turns the decision memo off), the tokens
// (distinct, 200 per alg) taken in turn. HOST_PROFILE_ALG=hs256: the rs256 tokens' claims,
// re-signed here with HS256 and a `hmacSecret` added to the provider: the whole request but
// for the public-key operation (an HMAC is two SHA-256 passes), what everything around the
// signature costs.
import { readFileSync } from "node:fs";
import { WASI } from "node:wasi";
import { createHmac } from "node:crypto";

const input = JSON.parse(readFileSync(0, "utf8"));
const alg = process.env.HOST_PROFILE_ALG || "rs256";
const cold = process.env.HOST_PROFILE_COLD === "1";
const hmacSecret = Buffer.alloc(32, 7);
const hs256 = (t) => {
  const b64 = (b) => Buffer.from(b).toString("base64url");
  const head = JSON.parse(Buffer.from(t.split(".")[0], "base64url"));
  const input = `${b64(JSON.stringify({ ...head, alg: "HS256" }))}.${t.split(".")[1]}`;
  return `${input}.${createHmac("sha256", hmacSecret).update(input).digest("base64url")}`;
};
const all = alg === "hs256" ? input.rs256.map(hs256) : input[alg];
const tokens = cold ? all : all.slice(0, 100);
const requests = Number(process.env.HOST_PROFILE_REQUESTS || (cold ? 20000 : 200000));
let config = cold ? { ...input.config, jwtCacheSize: 0 } : input.config;
if (alg === "hs256") {
  config = { ...config, providers: config.providers.map((p) => ({
    ...p, algorithms: [...p.algorithms, "HS256"], hmacSecret: hmacSecret.toString("base64url"),
  })) };
}
const pluginConfig = new TextEncoder().encode(JSON.stringify(config));

const wasi = new WASI({ version: "preview1", args: [], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(readFileSync(process.argv[2]));
let mem, ex;
// Views of the VM's memory, made again only when it grew (so the harness itself allocates
// nothing per request and its garbage collection does not blur instruction counts).
let viewed = null, u8view, dvview;
const refresh = () => {
  if (mem.buffer !== viewed) { viewed = mem.buffer; u8view = new Uint8Array(viewed); dvview = new DataView(viewed); }
};
const u8 = () => (refresh(), u8view);
const dv = () => (refresh(), dvview);
const text = (p, n) => new TextDecoder().decode(u8().subarray(p, p + n));
const calls = new Map();
const count = (name) => calls.set(name, (calls.get(name) || 0) + 1);

// Copies bytes into the VM the way Envoy does: through the module's allocator.
function give(bytes, ptrPtr, sizePtr) {
  const p = ex.proxy_on_memory_allocate(bytes.length);
  u8().set(bytes, p);
  dv().setUint32(ptrPtr, p, true);
  dv().setUint32(sizePtr, bytes.length, true);
  return 0;
}
function pairs(list) {
  const enc = new TextEncoder();
  const kv = list.map(([k, v]) => [enc.encode(k), enc.encode(v)]);
  let size = 4 + kv.length * 8;
  for (const [k, v] of kv) size += k.length + v.length + 2;
  const out = new Uint8Array(size);
  const d = new DataView(out.buffer);
  d.setUint32(0, kv.length, true);
  let at = 4 + kv.length * 8;
  kv.forEach(([k, v], i) => {
    d.setUint32(4 + i * 8, k.length, true);
    d.setUint32(8 + i * 8, v.length, true);
    out.set(k, at); at += k.length + 1;
    out.set(v, at); at += v.length + 1;
  });
  return out;
}
// What Envoy's HTTP/1 codec hands the filter for wrk's request.
const headerBuffers = tokens.map((t) => pairs([
  [":authority", "127.0.0.1:10000"], [":path", "/orders"], [":method", "GET"], [":scheme", "http"],
  ["authorization", `Bearer ${t}`], ["x-forwarded-proto", "http"],
  ["x-request-id", "0c6b7bb3-6cbe-4bd0-9c8e-1a1f5d8a7f31"],
]));
let current = 0;
let replied = 0;
const now = BigInt(input.now) * 1000000000n;
const env = {
  proxy_log: (level, p, n) => { count("log"); return 0; },
  proxy_get_log_level: (p) => { count("get_log_level"); dv().setUint32(p, 2, true); return 0; },
  proxy_get_current_time_nanoseconds: (p) => { count("get_current_time"); dv().setBigUint64(p, now, true); return 0; },
  proxy_set_tick_period_milliseconds: () => 0,
  proxy_get_buffer_bytes: (type, start, max, pp, sp) => {
    count("get_buffer_bytes");
    // 7: plugin configuration; 6: VM configuration (empty).
    return type === 7 ? give(pluginConfig, pp, sp) : give(new Uint8Array(0), pp, sp);
  },
  proxy_define_metric: (t, p, n, ret) => { count("define_metric"); dv().setUint32(ret, 1, true); return 0; },
  proxy_increment_metric: () => { count("increment_metric"); return 0; },
  proxy_record_metric: () => { count("record_metric"); return 0; },
  proxy_get_header_map_pairs: (type, pp, sp) => { count("get_header_map_pairs"); return give(headerBuffers[current % headerBuffers.length], pp, sp); },
  proxy_get_header_map_value: (type, kp, ks, pp, sp) => { count("get_header_map_value"); return 1; },
  proxy_remove_header_map_value: () => { count("remove_header_map_value"); return 0; },
  proxy_replace_header_map_value: () => { count("replace_header_map_value"); return 0; },
  proxy_add_header_map_value: () => { count("add_header_map_value"); return 0; },
  proxy_get_property: () => { count("get_property"); return 1; },
  proxy_set_property: () => { count("set_property"); return 0; },
  proxy_get_shared_data: () => { count("get_shared_data"); return 1; },
  proxy_set_shared_data: () => { count("set_shared_data"); return 0; },
  proxy_set_effective_context: () => { count("set_effective_context"); return 0; },
  proxy_send_local_response: () => { count("send_local_response"); replied++; return 0; },
};
const imports = wasi.getImportObject();
imports.env = {};
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.module === "env") {
    imports.env[imp.name] = env[imp.name] || (() => { throw new Error(`unexpected host call ${imp.name}`); });
  }
}
const instance = await WebAssembly.instantiate(module, imports);
ex = instance.exports;
mem = ex.memory;
wasi.initialize({ exports: { memory: mem, _initialize: ex._initialize } });

const ROOT = 1;
ex.proxy_on_context_create(ROOT, 0);
if (!ex.proxy_on_vm_start(ROOT, 0)) throw new Error("vm start refused");
if (!ex.proxy_on_configure(ROOT, pluginConfig.length)) throw new Error("config refused");
ex.proxy_on_tick(ROOT);

// The stream's remaining callbacks, those the module exports (Envoy skips the others).
const noop = () => 0;
const onResponseHeaders = ex.proxy_on_response_headers || noop;
const onLog = ex.proxy_on_log || noop;
const onDone = ex.proxy_on_done || noop;
const onDelete = ex.proxy_on_delete || noop;
function request(id) {
  current = id;
  ex.proxy_on_context_create(id, ROOT);
  const action = ex.proxy_on_request_headers(id, 7, 1);
  if (action !== 0) throw new Error(`request ${id} not continued (action ${action}, replies ${replied})`);
  onResponseHeaders(id, 3, 1);
  onLog(id);
  onDone(id);
  onDelete(id);
}
// Warm-up: fills the verified-token cache and lets V8 tier the hot functions up.
let id = 2;
for (let i = 0; i < (cold ? 4000 : 20000); i++) request(id++);
calls.clear();
// HOST_PROFILE_SYNC=DIR: hand over to a counting harness (valgrind's callgrind_control) before
// and after the measured requests: write DIR/ready, wait for DIR/go; write DIR/done, wait for
// DIR/exit.
const sync = process.env.HOST_PROFILE_SYNC;
const handOver = async (mark, until) => {
  if (!sync) return;
  const { writeFileSync, existsSync } = await import("node:fs");
  writeFileSync(`${sync}/${mark}`, "");
  const nap = new Int32Array(new SharedArrayBuffer(4));
  while (!existsSync(`${sync}/${until}`)) Atomics.wait(nap, 0, 0, 20);
};
if (sync) {
  // Under valgrind, let V8's background compiler finish (tiering the JS glue and the module)
  // before counting: otherwise its work lands in the counted window.
  const nap = new Int32Array(new SharedArrayBuffer(4));
  for (let round = 0; round < 3; round++) {
    Atomics.wait(nap, 0, 0, 3000);
    for (let i = 0; i < 5000; i++) request(id++);
  }
  Atomics.wait(nap, 0, 0, 3000);
}
await handOver("ready", "go");
const t0 = process.hrtime.bigint();
for (let i = 0; i < requests; i++) {
  request(id++);
  if (i % 40000 === 39999) ex.proxy_on_tick(ROOT);
}
const us = Number(process.hrtime.bigint() - t0) / 1000 / requests;
await handOver("done", "exit");
console.log(`${alg}: ${us.toFixed(2)} µs per ${cold ? "verified (cold)" : "cached"} request (VM side, ${requests} requests)`);
console.log("host calls per request:", Object.fromEntries([...calls].map(([k, v]) => [k, +(v / requests).toFixed(3)])));
