// Runs examples/vm_profile.rs, built for wasm32-wasip1, in Node's V8 with WASI (stdin, stdout
// and the clock only; no file system): `make vm-profile`. The filter's proxy-wasm imports are
// linked into the module but never called here; they are stubbed to trap if they were.
import { readFileSync } from "node:fs";
import { WASI } from "node:wasi";

const wasi = new WASI({ version: "preview1", args: ["vm_profile"], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(readFileSync(process.argv[2]));
const imports = wasi.getImportObject();
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.kind === "function" && !(imports[imp.module] && imports[imp.module][imp.name])) {
    imports[imp.module] = imports[imp.module] || {};
    imports[imp.module][imp.name] = () => { throw new Error(`host call ${imp.module}.${imp.name}`); };
  }
}
const instance = await WebAssembly.instantiate(module, imports);
// A command module must not export _initialize; the proxy-wasm entry point linked in from the
// library does, and is not ours to run here.
process.exitCode = wasi.start({ exports: { ...instance.exports, _initialize: undefined } });
