//! The command-line tool's `bench` and `info`: tables, JSON, SVG, forced
//! variants, quiet headless runs and exit codes.

mod cli_common;

use cli_common::{bin, stdout_of_success, tmp};

#[test]
fn tiny_bench_runs_and_prints_a_row() {
    let out = bin()
        .args(["bench", "--shape", "1,2,1,16,40,32", "--runs", "2"])
        .output()
        .unwrap();
    let text = stdout_of_success(&out);
    assert!(
        text.contains("FMA probe") && text.contains("16×40 d32"),
        "{text}"
    );
}

#[test]
fn headless_runs_are_quiet_and_name_what_is_wrong() {
    // No display of any kind, as on CI: Mesa's device-select Vulkan layer
    // would print "error: XDG_RUNTIME_DIR is invalid …" per Vulkan instance.
    let headless = || {
        let mut c = bin();
        for var in [
            "XDG_RUNTIME_DIR",
            "WAYLAND_DISPLAY",
            "DISPLAY",
            "NODEVICE_SELECT",
        ] {
            c.env_remove(var);
        }
        c
    };
    let out = headless()
        .args([
            "bench",
            "--shape",
            "1,1,1,3,5,8",
            "--runs",
            "1",
            "--no-naive",
        ])
        .output()
        .unwrap();
    stdout_of_success(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("error"), "a successful run printed {err:?}");
    // A bad --shape is named as such (not as a .npy file error), exit 2.
    for (shape, needle) in [("1,2,x", "invalid digit"), ("1,2,3", "has 3 numbers")] {
        let out = headless()
            .args(["bench", "--shape", shape])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("error: --shape: ") && err.contains(needle) && err.lines().count() == 1,
            "{err:?}"
        );
    }
}

#[test]
fn bench_forces_variant_and_splits_and_rejects_unknown_ones() {
    let out = bin()
        .args([
            "bench",
            "--shape",
            "1,4,2,1,300,32",
            "--runs",
            "1",
            "--variant",
            "decode",
            "--splits",
            "3",
            "--no-naive",
        ])
        .output()
        .unwrap();
    let text = stdout_of_success(&out);
    assert!(text.contains("1×300 d32"), "{text}");
    for bad in [["--variant", "fastest"], ["--suite", "nope"]] {
        let out = bin().arg("bench").args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(bad[1]),
            "{bad:?}"
        );
    }
}

#[test]
fn bench_json_and_svg_are_valid_and_complete() {
    let (json, svg) = (tmp("bench.json"), tmp("bench.svg"));
    let out = bin()
        .env_remove("MESA_SHADER_CACHE_DIR")
        .args([
            "bench",
            "--shape",
            "2,4,2,33,77,40",
            "--runs",
            "1",
            "--json",
        ])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["schema"], "xattn-bench/3");
    assert_eq!(doc["suite"], "custom");
    assert!(!doc["adapter"]["name"].as_str().unwrap().is_empty());
    assert!(doc["probe"]["fma_gflops"].as_f64().unwrap() > 0.0);
    assert!(doc["probe"]["copy_gbps"].as_f64().unwrap() > 0.0);
    // No MESA_SHADER_CACHE_DIR given: the run used a fresh empty one.
    assert!(doc["shader_cache"].as_str().unwrap().starts_with("empty"));
    let row = &doc["rows"][0];
    let first = &row["first_call"];
    let (first_ms, build_ms) = (
        first["ms"].as_f64().unwrap(),
        first["build_ms"].as_f64().unwrap(),
    );
    assert!(first_ms >= build_ms && build_ms > 0.0, "{first}");
    assert!(first["compile_ms"].as_f64().unwrap() >= 0.0);
    for (field, want) in [
        ("batch", 2),
        ("heads", 4),
        ("kv_heads", 2),
        ("n_q", 33),
        ("n_kv", 77),
        ("head_dim", 40),
    ] {
        assert_eq!(row["problem"][field], want, "{field}");
    }
    assert_eq!(
        row["flops"].as_f64().unwrap(),
        4.0 * 8.0 * 33.0 * 77.0 * 40.0
    );
    let fused = &row["fused"];
    assert!(fused["ms"].as_f64().unwrap() > 0.0);
    let gflops = row["flops"].as_f64().unwrap() / fused["ms"].as_f64().unwrap() / 1e6;
    assert!((fused["gflops"].as_f64().unwrap() / gflops - 1.0).abs() < 1e-9);
    assert!(row["naive"]["ms"].as_f64().unwrap() > 0.0);
    assert!(row["speedup_over_naive"].as_f64().unwrap() > 0.0);
    assert!(row["cpu_reference"]["ms"].as_f64().unwrap() >= 0.0);
    assert!(row["check"]["max_err"].as_f64().unwrap() <= row["check"]["bound"].as_f64().unwrap());
    assert!(row["plan"]["variant"].is_string() && row["plan"]["splits"].as_u64().unwrap() >= 1);
    assert!(
        row["naive"]["device_bytes"].as_u64().unwrap() > fused["device_bytes"].as_u64().unwrap()
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg") && text.trim_end().ends_with("</svg>"),
        "{}",
        &text[..80.min(text.len())]
    );
    assert!(text.contains("<rect") && text.contains("GFLOP/s") && text.contains("custom"));
}

#[test]
fn info_json_lists_adapter_features_limits_and_probes() {
    let out = bin().args(["info", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["schema"], "xattn-info/1");
    assert!(!doc["adapters"].as_array().unwrap().is_empty());
    assert!(!doc["chosen"]["name"].as_str().unwrap().is_empty());
    assert!(doc["features"]["timestamps"].is_boolean());
    assert!(
        doc["limits"]["max_workgroup_storage_bytes"]
            .as_u64()
            .unwrap()
            >= 16384
    );
    assert!(doc["plans"]["square_2k_d64"]
        .as_str()
        .unwrap()
        .contains("Bc"));
    assert!(doc["probe"]["fma_gflops"].as_f64().unwrap() > 0.0);
}

#[test]
fn unwritable_json_path_is_exit_2_before_measuring() {
    let out = bin()
        .args([
            "bench",
            "--shape",
            "1,1,1,1,8,8",
            "--json",
            "/nonexistent-dir/x.json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent-dir/x.json") && err.contains("cannot write"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "measured before failing");
}

#[test]
fn bench_in_f16_reports_the_speed_up_over_f32() {
    let out = bin()
        .args([
            "bench",
            "--shape",
            "1,2,2,40,77,64",
            "--runs",
            "1",
            "--dtype",
            "f16",
        ])
        .output()
        .unwrap();
    let text = stdout_of_success(&out);
    assert!(
        text.contains("storage: f16") && text.contains("×f32"),
        "{text}"
    );
    assert!(text.contains("naive baseline stores f32 only"), "{text}");
}
