//! `claimguard-oci`: writes the reproducible OCI image layout of the filter and pins its
//! digest in the Istio manifests (what `make oci` runs).
//!
//! ```text
//! claimguard-oci --wasm FILE --out DIR --tag TAG --url oci://HOST/REPO:TAG [--pin FILE]
//! claimguard-oci --check-pin FILE --wasm FILE --tag TAG   exit 1 if FILE does not pin FILE's image
//! ```

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("claimguard-oci: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn run(args: &[String]) -> Result<(), String> {
    use claimguard_tools::oci::{pin_yaml, WasmImage};
    use std::path::Path;

    let mut opt = std::collections::BTreeMap::new();
    let mut it = args.iter();
    while let Some(name) = it.next() {
        let key = name
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {name:?}"))?;
        let value = it.next().ok_or_else(|| format!("{name} needs a value"))?;
        opt.insert(key.to_string(), value.clone());
    }
    let get = |k: &str| opt.get(k).cloned().ok_or_else(|| format!("--{k} is required"));
    let wasm_path = get("wasm")?;
    let tag = get("tag")?;
    let module = std::fs::read(&wasm_path).map_err(|e| format!("{wasm_path}: {e}"))?;
    let image = WasmImage::build(&module, &tag)?;
    if let Some(pin) = opt.get("check-pin") {
        let text = std::fs::read_to_string(pin).map_err(|e| format!("{pin}: {e}"))?;
        if !text.contains(&image.manifest_sha256) || !text.contains(&image.module_sha256) {
            return Err(format!(
                "{pin} does not pin {wasm_path} (image sha256 {}, module sha256 {}): run `make oci`",
                image.manifest_sha256, image.module_sha256
            ));
        }
        println!("{pin} pins image sha256:{}", image.manifest_sha256);
        return Ok(());
    }
    let out = get("out")?;
    let url = get("url")?;
    if !url.starts_with("oci://") {
        return Err(format!("--url {url:?} must start with oci://"));
    }
    image.write_layout(Path::new(&out), &tag)?;
    println!("{out}: image sha256:{}", image.manifest_sha256);
    println!(
        "module {wasm_path}: sha256 {} ({} bytes)",
        image.module_sha256,
        module.len()
    );
    if let Some(pin) = opt.get("pin") {
        std::fs::write(pin, pin_yaml(&url, &image)).map_err(|e| format!("{pin}: {e}"))?;
        println!("{pin}: pinned {url} sha256 {}", image.manifest_sha256);
    }
    Ok(())
}
