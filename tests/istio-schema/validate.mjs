// Validates Kubernetes manifests (multi-document YAML files, or `-` for stdin) against
// Istio's CRD schemas, as the API server would with kubectl's default strict field
// validation, plus claimguard's own rules for WasmPlugins and TrafficExtensions. One line per
// problem:
//
//   FILE: Kind/name: field.path: message
//
// and exit status 1 if there was any. The schemas are @kubernetes-models/istio (pinned in
// package.json / package-lock.json; generated from Istio 1.29.2's crd-all.gen.yaml), and for
// what that Istio release does not have, TrafficExtension (Istio 1.30), the CRD vendored from
// istio/api under vendor/istio-api/ (its source commit is in the file), compiled here with
// the same ajv and ObjectMeta schema the models use. ConfigMaps (the stats-tags component)
// are checked against a small core/v1 schema.
//
// Istio's CRDs are structural schemas without `additionalProperties: false`: a JSON-schema
// validator alone would accept `spec.selctor`, while the API server rejects it ("unknown
// field"). So each document is validated through a proxy that records which properties the
// compiled schema looks at; a key the schema never looked at, in an object whose properties
// the schema does define, is an unknown field. Maps (the schema enumerates their keys) and
// free-form objects such as `pluginConfig` (the schema reads none of their keys) are exempt.

import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parse, parseAllDocuments } from "yaml";
import { Ajv } from "ajv";
import { formats } from "@kubernetes-models/validate";
import { validate as validateObjectMeta } from "@kubernetes-models/apimachinery/_schemas/IoK8sApimachineryPkgApisMetaV1ObjectMeta";

const SCHEMAS = new URL("./node_modules/@kubernetes-models/istio/_schemas/", import.meta.url);
const ISTIO_VERSION = "1.29.2";
// The Istio release whose TrafficExtension CRD is vendored (vendor/istio-api/).
const TRAFFIC_EXTENSION_VERSION = "1.30.3";
const TRAFFIC_EXTENSION_CRD = new URL(
  "./vendor/istio-api/trafficextensions.extensions.istio.io.yaml",
  import.meta.url,
);

const camel = (s) => s.replace(/(^|[.-])([a-z0-9])/g, (_, __, c) => c.toUpperCase());

// Kubernetes' extensions to OpenAPI: the API server acts on them (CEL rules, list types);
// here they are known keywords that validate nothing. The CEL rules claimguard relies on are
// re-checked in claimguardRules below.
// No messages, as in the models' compiled validators: ajvMessage words them alike.
const ajv = new Ajv({ allErrors: true, messages: false, strictTypes: false, formats });
ajv.addVocabulary([
  "x-kubernetes-preserve-unknown-fields",
  "x-kubernetes-validations",
  "x-kubernetes-list-type",
  "x-kubernetes-list-map-keys",
  "x-kubernetes-int-or-string",
]);

// A validator for a whole object of one kind, from the schema of its body: apiVersion and
// kind fixed, metadata checked with the ObjectMeta schema the Istio models use. Same calling
// convention as the models' compiled validators (returns a boolean, sets .errors).
function objectValidator(apiVersion, kind, body) {
  const validateBody = ajv.compile({
    type: "object",
    required: ["apiVersion", "kind", "metadata", ...(body.required || [])],
    properties: {
      apiVersion: { type: "string", enum: [apiVersion] },
      kind: { type: "string", enum: [kind] },
      metadata: { type: "object" },
      ...body.properties,
    },
  });
  const validate = (doc) => {
    let ok = validateBody(doc);
    const errors = [...(validateBody.errors || [])];
    if (doc && typeof doc.metadata === "object" && doc.metadata !== null) {
      if (!validateObjectMeta(doc.metadata, { instancePath: "/metadata", parentData: doc, parentDataProperty: "metadata", rootData: doc })) {
        ok = false;
        errors.push(...(validateObjectMeta.errors || []));
      }
    }
    validate.errors = errors;
    return ok;
  };
  return validate;
}

// The openAPIV3Schema of one version of a vendored CRD.
function crdSchema(file, version) {
  const crd = parse(readFileSync(file, "utf8"));
  const v = crd.spec.versions.find((x) => x.name === version);
  return v.schema.openAPIV3Schema;
}

// Kinds validated here rather than by @kubernetes-models/istio: what validates them, and
// whose schema it is (for messages).
const LOCAL = {
  "extensions.istio.io/v1alpha1 TrafficExtension": {
    source: `Istio ${TRAFFIC_EXTENSION_VERSION}'s TrafficExtension schema`,
    summary: `TrafficExtension: Istio ${TRAFFIC_EXTENSION_VERSION}'s CRD`,
    validate: objectValidator(
      "extensions.istio.io/v1alpha1",
      "TrafficExtension",
      crdSchema(TRAFFIC_EXTENSION_CRD, "v1alpha1"),
    ),
  },
  "v1 ConfigMap": {
    source: "Kubernetes' ConfigMap schema",
    summary: "ConfigMap: core/v1",
    validate: objectValidator("v1", "ConfigMap", {
      properties: {
        data: { type: "object", additionalProperties: { type: "string" } },
        binaryData: { type: "object", additionalProperties: { type: "string", format: "byte" } },
        immutable: { type: "boolean" },
      },
    }),
  },
};
const used = new Set();

async function schemaFor(apiVersion, kind) {
  const local = LOCAL[`${apiVersion} ${kind}`];
  if (local) {
    used.add(local.summary);
    return local;
  }
  const [group, version] = String(apiVersion).split("/");
  if (!group || !version || !group.endsWith("istio.io")) return null;
  try {
    const mod = await import(new URL(`${camel(group)}${camel(version)}${kind}.js`, SCHEMAS));
    return { validate: mod.validate, source: `Istio ${ISTIO_VERSION}'s ${kind} schema` };
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
  if (e.keyword === "oneOf") return "must match exactly one of the schema's alternatives (oneOf)";
  return e.message || `fails ${e.keyword} (${JSON.stringify(p)})`;
}

// Labels by which a `selector` picks gateway pods rather than sidecars.
const isGatewaySelector = (labels) =>
  Object.entries(labels || {}).some(
    ([k, v]) => k === "gateway.networking.k8s.io/gateway-name" || (k === "istio" && /gateway/.test(String(v))),
  );

// claimguard's deployment rules, on top of the schema, for WasmPlugins and TrafficExtensions
// (whose Wasm fields are under spec.wasm), and for the stats-tags ConfigMap.
function claimguardRules(doc) {
  const problems = [];
  const spec = doc.spec || {};
  if (doc.kind === "ConfigMap" && doc.metadata && doc.metadata.name === "claimguard-stats-tags") {
    problems.push(...statsTagsRules(doc));
  }
  if (doc.kind !== "WasmPlugin" && doc.kind !== "TrafficExtension") return problems;
  const labels = spec.selector && spec.selector.matchLabels;
  const hasSelector = labels && typeof labels === "object" && Object.keys(labels).length > 0;
  const targets = Array.isArray(spec.targetRefs) ? spec.targetRefs : spec.targetRef ? [spec.targetRef] : [];
  const hasTargets = targets.length > 0;
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
  // Where it runs. Istio classes a gateway's listeners as CLIENT and a sidecar's as SERVER
  // (inbound) or CLIENT (outbound) (pilot/pkg/model/extensions.go), and runs a plugin without
  // `match` on all of them.
  const match = Array.isArray(spec.match) ? spec.match : [];
  const modeOf = (m) => (m && m.mode) || "CLIENT_AND_SERVER";
  const gateway =
    targets.some((t) => t && (t.kind === "Gateway" || t.kind === "GatewayClass")) ||
    (hasSelector && !hasTargets && isGatewaySelector(labels));
  if (gateway) {
    if (match.length > 0 && match.every((m) => modeOf(m) === "SERVER")) {
      problems.push([
        "spec.match",
        "mode SERVER on a gateway: Istio treats every gateway listener as CLIENT, so the filter would never run there; leave match out",
      ]);
    }
  } else if (hasSelector && !hasTargets) {
    if (match.length === 0) {
      problems.push([
        "spec.match",
        "missing: set match: [{mode: SERVER}]; without it Istio also runs the filter on the sidecar's outbound listeners, on the calls the application makes",
      ]);
    }
    match.forEach((m, i) => {
      if (modeOf(m) !== "SERVER") {
        problems.push([
          `spec.match[${i}].mode`,
          "must be SERVER on a sidecar: any other mode also runs the filter on the calls the application makes",
        ]);
      }
    });
  }
  if (doc.kind === "TrafficExtension" && !spec.wasm === !spec.lua) {
    // The CRD's CEL rule (its oneOf also lets neither through).
    problems.push(["spec", "exactly one of wasm or lua must be set"]);
  }
  if (doc.kind === "TrafficExtension" && !spec.wasm) return problems; // Lua: not claimguard
  const wasm = doc.kind === "TrafficExtension" ? spec.wasm : spec;
  const at = doc.kind === "TrafficExtension" ? "spec.wasm" : "spec";
  if (wasm.failStrategy !== "FAIL_CLOSE" && wasm.failStrategy !== "FAIL_RELOAD") {
    problems.push([
      `${at}.failStrategy`,
      "must be FAIL_CLOSE (or FAIL_RELOAD, Istio 1.27+): an authentication filter must not fail open",
    ]);
  }
  if (typeof wasm.url === "string") {
    const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(wasm.url);
    if (doc.kind === "TrafficExtension" && scheme && !["http", "https", "file", "oci"].includes(scheme[1])) {
      // The CRD's CEL rule on spec.wasm.url.
      problems.push([`${at}.url`, "url must have schema one of [http, https, file, oci]"]);
    }
    if (wasm.url.startsWith("oci://") && !wasm.sha256) {
      problems.push([`${at}.sha256`, "missing: pin the image digest (make oci writes it)"]);
    }
  }
  return problems;
}

// The ConfigMap a pod names in sidecar.istio.io/bootstrapOverride: Envoy gets its
// custom_bootstrap.json with --config-yaml, so it must be a bootstrap fragment that only adds
// stats tags (claimguard-stats-tags is about labels, nothing else).
function statsTagsRules(doc) {
  const text = doc.data && doc.data["custom_bootstrap.json"];
  if (typeof text !== "string") return [["data.custom_bootstrap.json", "missing"]];
  let boot;
  try {
    boot = JSON.parse(text);
  } catch (e) {
    return [["data.custom_bootstrap.json", `not JSON: ${e.message}`]];
  }
  const keys = Object.keys(boot || {});
  const tags = boot && boot.stats_config && boot.stats_config.stats_tags;
  if (keys.join() !== "stats_config" || Object.keys(boot.stats_config).join() !== "stats_tags" || !Array.isArray(tags) || tags.length === 0) {
    return [["data.custom_bootstrap.json", "must be {\"stats_config\": {\"stats_tags\": [...]}} and nothing else"]];
  }
  const problems = [];
  tags.forEach((t, i) => {
    const ok = t && typeof t.tag_name === "string" && typeof t.regex === "string" && Object.keys(t).length === 2;
    if (!ok) problems.push([`data.custom_bootstrap.json: stats_tags[${i}]`, "must be {tag_name, regex}"]);
  });
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
    const schema = await schemaFor(doc.apiVersion, doc.kind);
    if (!schema) {
      say("apiVersion", `${doc.apiVersion} ${doc.kind} is not an Istio ${ISTIO_VERSION} resource`);
      continue;
    }
    const { validate, source } = schema;
    const seen = new Map();
    if (!validate(track(doc, "", seen))) {
      // A failed oneOf is reported once, not with each failing alternative's own errors.
      for (const e of (validate.errors || []).filter((x) => !/\/oneOf\/\d+\//.test(x.schemaPath || ""))) {
        say(dotted(e.instancePath) || "(document)", ajvMessage(e));
      }
    }
    for (const pointer of unknownFields(seen)) {
      say(dotted(pointer), `unknown field (not in ${source})`);
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
    // A TrafficExtension's config goes to NAMESPACE.NAME.TrafficExtension.json, beside the
    // WasmPlugin's of the same overlay.
    const config =
      doc && doc.spec && (doc.kind === "WasmPlugin" ? doc.spec.pluginConfig : doc.kind === "TrafficExtension" && doc.spec.wasm && doc.spec.wasm.pluginConfig);
    if (pluginConfigDir && config) {
      const name = `${(doc.metadata && doc.metadata.namespace) || "default"}.${doc.metadata && doc.metadata.name}`;
      const suffix = doc.kind === "TrafficExtension" ? ".TrafficExtension" : "";
      writeFileSync(join(pluginConfigDir, `${name}${suffix}.json`), JSON.stringify(config));
    }
  }
  for (const line of await validateText(text, file)) {
    console.log(line);
    problems += 1;
  }
}
if (problems) process.exit(1);
const also = used.size ? ` (${[...used].sort().join("; ")})` : "";
console.log(`${documents} documents valid against Istio ${ISTIO_VERSION} schemas${also}`);
