//! The claimguard OCI image: a reproducible OCI image layout of the `.wasm`, in the format
//! Istio's Wasm image fetcher accepts (`pkg/wasm/imagefetcher.go`, "oci variant" of the Wasm
//! artifact image spec): an OCI image manifest whose config has media type
//! `application/vnd.module.wasm.config.v1+json` and which has exactly two layers, that same
//! runtime config (`application/vnd.module.wasm.config.v1+json`) and the raw module
//! (`application/vnd.module.wasm.content.layer.v1+wasm`, not compressed, not tarred).
//!
//! Nothing here depends on time, the file system's order or compression: the same module
//! gives the same blobs, the same manifest and so the same manifest digest. That digest is
//! what Istio compares a WasmPlugin's `sha256` with for an `oci://` URL (for `http(s)://` it
//! is the module's own sha256), so it is what `istio/components/image` pins.

use serde_json::{json, Value};
use std::fs;
use std::path::Path;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.module.wasm.config.v1+json";
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// The module's file name inside the image (an annotation only: the layer is the raw module).
pub const MODULE_TITLE: &str = "claimguard.wasm";
/// The proxy-wasm root id the module registers; a WasmPlugin's `pluginName` must name it.
pub const ROOT_ID: &str = "claimguard";

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hmac_sha256::Hash::hash(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An image built from one module: its blobs and the digests that identify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmImage {
    pub module: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    /// sha256 of the module: what the sidecar finally loads.
    pub module_sha256: String,
    /// sha256 of the manifest: the image digest, and the WasmPlugin `sha256` for `oci://`.
    pub manifest_sha256: String,
}

fn descriptor(media_type: &str, bytes: &[u8], title: &str) -> Value {
    json!({
        "mediaType": media_type,
        "digest": format!("sha256:{}", sha256_hex(bytes)),
        "size": bytes.len(),
        "annotations": {"org.opencontainers.image.title": title}
    })
}

impl WasmImage {
    /// Builds the image for `module`, labelled with the claimguard `version`.
    pub fn build(module: &[u8], version: &str) -> Result<WasmImage, String> {
        if module.get(..4) != Some(b"\0asm".as_slice()) {
            return Err("not a WebAssembly module (no \\0asm magic)".into());
        }
        // The runtime config of the Wasm artifact spec: runtime type and the root ids the
        // module registers (Istio reads none of it; tools like wasme do).
        let config = serde_json::to_vec(&json!({
            "type": "envoy_proxy",
            "abiVersions": ["v0.2.1"],
            "config": {"rootIds": [ROOT_ID]}
        }))
        .map_err(|e| e.to_string())?;
        let mut config_descriptor = descriptor(WASM_CONFIG_MEDIA_TYPE, &config, "runtime-config.json");
        if let Some(obj) = config_descriptor.as_object_mut() {
            obj.remove("annotations");
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config_descriptor,
            "layers": [
                descriptor(WASM_CONFIG_MEDIA_TYPE, &config, "runtime-config.json"),
                descriptor(WASM_LAYER_MEDIA_TYPE, module, MODULE_TITLE)
            ],
            "annotations": {
                "org.opencontainers.image.title": "claimguard",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.description": "claimguard proxy-wasm JWT + claim RBAC filter"
            }
        }))
        .map_err(|e| e.to_string())?;
        Ok(WasmImage {
            module_sha256: sha256_hex(module),
            manifest_sha256: sha256_hex(&manifest),
            module: module.to_vec(),
            config,
            manifest,
        })
    }

    /// Writes an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/*`) to `dir`,
    /// replacing what was there, with the manifest tagged `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Result<(), String> {
        let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(|e| io(&blobs, e))?;
        for blob in [&self.module, &self.config, &self.manifest] {
            let path = blobs.join(sha256_hex(blob));
            fs::write(&path, blob).map_err(|e| io(&path, e))?;
        }
        let layout = dir.join("oci-layout");
        fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(|e| io(&layout, e))?;
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [{
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": format!("sha256:{}", self.manifest_sha256),
                "size": self.manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag}
            }]
        }))
        .map_err(|e| e.to_string())?;
        let path = dir.join("index.json");
        fs::write(&path, index).map_err(|e| io(&path, e))
    }
}

/// What an OCI layout holds for `tag`, read the way Istio's fetcher reads a pulled image:
/// the manifest's digest and the raw bytes of its `…content.layer.v1+wasm` layer. Every
/// blob is checked against its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    pub manifest_sha256: String,
    pub module: Vec<u8>,
}

pub fn read_layout(dir: &Path, tag: &str) -> Result<PulledImage, String> {
    let blob = |digest: &str| -> Result<Vec<u8>, String> {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("unsupported digest {digest}"))?;
        let path = dir.join("blobs/sha256").join(hex);
        let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if sha256_hex(&bytes) != hex {
            return Err(format!("blob {digest} does not match its digest"));
        }
        Ok(bytes)
    };
    let index_path = dir.join("index.json");
    let index: Value =
        serde_json::from_slice(&fs::read(&index_path).map_err(|e| format!("{}: {e}", index_path.display()))?)
            .map_err(|e| format!("index.json: {e}"))?;
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    let entry = entries
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .or_else(|| if entries.len() == 1 { entries.first() } else { None })
        .ok_or_else(|| format!("no manifest tagged {tag:?} in {}", index_path.display()))?;
    let digest = entry["digest"].as_str().ok_or("index entry without digest")?;
    let manifest_bytes = blob(digest)?;
    let manifest: Value = serde_json::from_slice(&manifest_bytes).map_err(|e| format!("manifest: {e}"))?;
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    if layers.len() != 2 {
        return Err(format!(
            "Istio's fetcher wants exactly 2 layers in a Wasm artifact image, found {}",
            layers.len()
        ));
    }
    let wasm = layers
        .iter()
        .find(|l| l["mediaType"] == WASM_LAYER_MEDIA_TYPE)
        .ok_or_else(|| format!("no {WASM_LAYER_MEDIA_TYPE} layer"))?;
    let module = blob(wasm["digest"].as_str().ok_or("layer without digest")?)?;
    Ok(PulledImage {
        manifest_sha256: sha256_hex(&manifest_bytes),
        module,
    })
}

/// Where `make oci` pins the image for every overlay (a kustomize patch in the component
/// `istio/components/image`, included by `istio/base`).
pub const PIN_FILE: &str = "istio/components/image/image.yaml";
/// The annotation that records the module's own sha256 next to the image digest.
pub const MODULE_SHA256_ANNOTATION: &str = "claimguard.dev/module-sha256";

/// The pin patch for `image` published as `url` (`oci://host/repo:tag`).
pub fn pin_yaml(url: &str, image: &WasmImage) -> String {
    format!(
        "# Written by `make oci` (src/bin/claimguard-oci.rs): do not edit by hand.\n\
         # spec.sha256 is the OCI image (manifest) digest, which is what Istio checks for an\n\
         # oci:// url; the annotation is the sha256 of the module the image carries.\n\
         apiVersion: extensions.istio.io/v1alpha1\n\
         kind: WasmPlugin\n\
         metadata:\n  name: claimguard\n  annotations:\n    {MODULE_SHA256_ANNOTATION}: \"{}\"\n\
         spec:\n  url: {url}\n  sha256: \"{}\"\n",
        image.module_sha256, image.manifest_sha256
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn same_module_same_digest_and_layout_round_trips() {
        let a = WasmImage::build(MODULE, "1.2.3").unwrap();
        let b = WasmImage::build(MODULE, "1.2.3").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.module_sha256, sha256_hex(MODULE));
        let dir = std::env::temp_dir().join(format!("claimguard-oci-unit-{}", std::process::id()));
        a.write_layout(&dir, "1.2.3").unwrap();
        let pulled = read_layout(&dir, "1.2.3").unwrap();
        assert_eq!(pulled.module, MODULE);
        assert_eq!(pulled.manifest_sha256, a.manifest_sha256);
        let manifest: Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(manifest["config"]["mediaType"], WASM_CONFIG_MEDIA_TYPE);
        assert_eq!(manifest["layers"][1]["mediaType"], WASM_LAYER_MEDIA_TYPE);
        assert_eq!(manifest["layers"][1]["size"], MODULE.len());
        // A tampered blob is noticed.
        fs::write(dir.join("blobs/sha256").join(&a.module_sha256), b"\0asmX").unwrap();
        assert!(read_layout(&dir, "1.2.3").unwrap_err().contains("does not match"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_different_module_or_version_changes_the_image_digest() {
        let a = WasmImage::build(MODULE, "1").unwrap();
        let b = WasmImage::build(b"\0asm\x01\0\0\0\0", "1").unwrap();
        let c = WasmImage::build(MODULE, "2").unwrap();
        assert_ne!(a.manifest_sha256, b.manifest_sha256);
        assert_ne!(a.manifest_sha256, c.manifest_sha256);
        assert_eq!(a.module_sha256, c.module_sha256);
        assert!(WasmImage::build(b"not wasm", "1").is_err());
    }
}
