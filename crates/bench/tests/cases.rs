//! The benchmark checks what each case needs before starting it: a case the host's mapping
//! limit does not allow is reported as skipped (with the numbers) and the others still run.

#[test]
fn a_case_the_mapping_limit_does_not_allow_is_skipped_and_the_rest_runs() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "the benchmark boots guests and needs /dev/kvm, which is missing"
    );
    let json = std::env::temp_dir().join(format!("cxlvm-bench-cases-{}.json", std::process::id()));
    // 2 000 mappings left: each stitched map of the host-side build case (4096 pieces in
    // --quick) cannot be made; every guest region can (a volatile interleave is one region
    // store: one mapping at any granularity).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cxlvm-bench"))
        .args(["--quick", "--vma-room", "2000", "--json"])
        .arg(&json)
        .env("CXLVM_BENCH_KERNEL", "/nonexistent/vmlinux")
        .output()
        .expect("cxlvm-bench runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let skipped = &v["not_run"]["stitch build 256 MiB @ 4 KiB"];
    assert_eq!(skipped["kind"], "skipped", "{v}");
    assert_eq!(skipped["needed"], 4096, "{v}");
    assert_eq!(skipped["room"], 2000, "{v}");
    // The other cases ran and have figures, the 4 KiB interleave included.
    let ratios = v["bandwidth_ratio"].as_object().unwrap();
    assert!(ratios.keys().any(|k| k.starts_with("2-way 16K")), "{v}");
    assert!(ratios.keys().any(|k| k.starts_with("2-way 4K")), "{v}");
    assert!(v["mmio"].as_object().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(
        v["remap_us"].as_object().is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    // A missing kernel is reported too, not fatal.
    assert_eq!(v["not_run"]["Linux start-up"]["kind"], "missing", "{v}");
    let _ = std::fs::remove_file(&json);
}
