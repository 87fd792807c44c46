// Validates Kubernetes manifests (multi-document YAML files, or `-` for stdin) against
// Istio's CRD schemas, as the API server would with kubectl's default strict field
// validation, plus claimguard's own rules for WasmPlugins. One line per problem:
//
//   FILE: Kind/name: field.path: message
//
// and exit status 1 if there was any. The schemas are @kubernetes-models/istio (pinned in
// package.json / package-lock.json; generated from Istio 1.29.2's crd-all.gen.yaml).
//
// Istio's CRDs are structural schemas without `additionalProperties: false`: a JSON-schema
// validator alone would accept `spec.selctor`, while the API server rejects it ("unknown
// field"). So each document is validated through a proxy that records which properties the
// compiled schema looks at; a key the schema never looked at, in an object whose properties
// the schema does define, is an unknown field. Maps (the schema enumerates their keys) and
// free-form objects such as `pluginConfig` (the schema reads none of their keys) are exempt.

import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";

const SCHEMAS = new URL("./node_modules/@kubernetes-models/istio/_schemas/", import.meta.url);
const ISTIO_VERSION = "1.29.2";

const camel = (s) => s.replace(/(^|[.-])([a-z0-9])/g, (_, __, c) => c.toUpperCase());

async function schemaFor(apiVersion, kind) {
  const [group, version] = String(apiVersion).split("/");
  if (!group || !version || !group.endsWith("istio.io")) return null;
  try {
    const mod = await import(new URL(`${camel(group)}${camel(version)}${kind}.js`, SCHEMAS));
    return mod.validate;
  } catch {
    return null;
  }
}

const dotted = (pointer) =>
  pointer
    .split("/")
    .slice(1)
    .map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"))
    .reduce((acc, p) => (/^\d+$/.test(p) ? `${acc}[${p}]` : acc ? `${acc}.${p}` : p), "");

// Wraps `value` so that reads and key enumerations are recorded per JSON pointer.
function track(value, pointer, seen) {
  if (value === null || typeof value !== "object") return value;
  const info = { read: new Set(), enumerated: false, value };
  seen.set(pointer, info);
  const copy = Array.isArray(value)
    ? value.map((v, i) => track(v, `${pointer}/${i}`, seen))
    : Object.fromEntries(Object.entries(value).map(([k, v]) => [k, track(v, `${pointer}/${k}`, seen)]));
  return new Proxy(copy, {
    get(t, k, r) {
      if (typeof k === "string") info.read.add(k);
      return Reflect.get(t, k, r);
    },
    has(t, k) {
      if (typeof k === "string") info.read.add(k);
      return Reflect.has(t, k);
    },
    ownKeys(t) {
      info.enumerated = true;
      return Reflect.ownKeys(t);
    },
  });
}

function unknownFields(seen) {
  const unknown = [];
  for (const [pointer, info] of seen) {
    if (Array.isArray(info.value) || info.enumerated || info.read.size === 0) continue;
    if (unknown.some((u) => pointer.startsWith(`${u}/`))) continue;
    for (const key of Object.keys(info.value)) {
      if (!info.read.has(key)) unknown.push(`${pointer}/${key}`);
    }
  }
  return unknown;
}

function ajvMessage(e) {
  const p = e.params || {};
  if (e.keyword === "enum") return `${e.message || "must be one of"}: ${p.allowedValues.join(", ")}`;
  if (e.keyword === "required") return `missing required field "${p.missingProperty}"`;
  if (e.keyword === "type") return `must be ${p.type}`;
  return e.message || `fails ${e.keyword} (${JSON.stringify(p)})`;
}

// claimguard's deployment rules, on top of the schema.
function claimguardRules(doc) {
  const problems = [];
  const spec = doc.spec || {};
  if (doc.kind === "WasmPlugin") {
    const labels = spec.selector && spec.selector.matchLabels;
    const hasSelector = labels && typeof labels === "object" && Object.keys(labels).length > 0;
    const hasTargets = Array.isArray(spec.targetRefs) ? spec.targetRefs.length > 0 : !!spec.targetRef;
    if (!hasSelector && !hasTargets) {
      problems.push([
        "spec.selector",
        "missing: set selector.matchLabels (or targetRefs for a gateway); without them the plugin applies to every workload in the namespace",
      ]);
    }
    if (hasSelector && hasTargets) {
      // Istio's CRD says so in a CEL rule, which a JSON-schema validator does not run.
      problems.push(["spec.targetRefs", "only one of targetRefs or selector can be set"]);
    }
    if (spec.failStrategy !== "FAIL_CLOSE") {
      problems.push(["spec.failStrategy", "must be FAIL_CLOSE: an authentication filter must not fail open"]);
    }
    if (typeof spec.url === "string" && spec.url.startsWith("oci://") && !spec.sha256) {
      problems.push(["spec.sha256", "missing: pin the image digest (make oci writes it)"]);
    }
  }
  return problems;
}

export async function validateText(text, file) {
  const out = [];
  const docs = parseAllDocuments(text);
  let index = 0;
  for (const d of docs) {
    index += 1;
    if (d.errors.length) {
      out.push(`${file}: document ${index}: YAML: ${d.errors[0].message}`);
      continue;
    }
    const doc = d.toJS();
    if (doc === null || doc === undefined) continue;
    const name = `${doc.kind || "?"}/${(doc.metadata && doc.metadata.name) || "?"}`;
    const say = (path, message) => out.push(`${file}: ${name}: ${path}: ${message}`);
    if (typeof doc !== "object" || Array.isArray(doc)) {
      out.push(`${file}: document ${index}: not a Kubernetes object`);
      continue;
    }
    const validate = await schemaFor(doc.apiVersion, doc.kind);
    if (!validate) {
      say("apiVersion", `${doc.apiVersion} ${doc.kind} is not an Istio ${ISTIO_VERSION} resource`);
      continue;
    }
    const seen = new Map();
    if (!validate(track(doc, "", seen))) {
      for (const e of validate.errors || []) {
        say(dotted(e.instancePath) || "(document)", ajvMessage(e));
      }
    }
    for (const pointer of unknownFields(seen)) {
      say(dotted(pointer), `unknown field (not in Istio ${ISTIO_VERSION}'s ${doc.kind} schema)`);
    }
    for (const [path, message] of claimguardRules(doc)) say(path, message);
  }
  return out;
}

// --plugin-configs DIR: also write each WasmPlugin's pluginConfig to DIR/NAMESPACE.NAME.json,
// the JSON text istiod hands the filter, for `claimguard check`.
const args = process.argv.slice(2);
let pluginConfigDir = null;
const at = args.indexOf("--plugin-configs");
if (at >= 0) {
  pluginConfigDir = args[at + 1];
  args.splice(at, 2);
}
const files = args;
if (files.length === 0 || (at >= 0 && !pluginConfigDir)) {
  console.error("usage: node validate.mjs [--plugin-configs DIR] FILE.yaml... (- for stdin)");
  process.exit(2);
}
if (pluginConfigDir) mkdirSync(pluginConfigDir, { recursive: true });
let problems = 0;
let documents = 0;
for (const file of files) {
  const text = readFileSync(file === "-" ? 0 : file, "utf8");
  const docs = parseAllDocuments(text);
  documents += docs.length;
  for (const d of docs) {
    const doc = d.errors.length ? null : d.toJS();
    if (pluginConfigDir && doc && doc.kind === "WasmPlugin" && doc.spec && doc.spec.pluginConfig) {
      const name = `${(doc.metadata && doc.metadata.namespace) || "default"}.${doc.metadata && doc.metadata.name}`;
      writeFileSync(join(pluginConfigDir, `${name}.json`), JSON.stringify(doc.spec.pluginConfig));
    }
  }
  for (const line of await validateText(text, file)) {
    console.log(line);
    problems += 1;
  }
}
if (problems) process.exit(1);
console.log(`${documents} documents valid against Istio ${ISTIO_VERSION} schemas`);
