//! `morphogen demo`, `serve`, `get` and `bench` from the outside: real
//! processes on loopback, exit codes and output.

mod common;

use common::{Serving, build_from_csv, build_named, morphogen, serve, serve_with, serve_with_env, text};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn demo_looks_keys_up_through_two_servers_without_mismatches() {
    let output = morphogen(&["demo", "--records", "3000", "--lookups", "200"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", text(&output.stderr));
    assert!(stdout.contains("lookups: 200 (180 present, 20 absent), mismatches: 0"), "{stdout}");
}

#[test]
fn serve_and_get_find_present_keys_and_report_absent_ones() {
    let dir = tempfile::tempdir().unwrap();
    let records: String =
        (0..500u32).map(|i| format!("{:08x},{:016x}\n", i * 2, u64::from(i) * 7 + 1)).collect();
    let table = build_from_csv(dir.path(), &records);

    // The two servers may run different engines: they hold the same table.
    let (a, b) = (serve(&table, "cpu"), serve(&table, "reference"));
    let output =
        morphogen(&["get", "--server", &a.url, "--server", &b.url, "00000000", "0x000003e6", "00000001"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        format!("00000000 {:016x}\n000003e6 {:016x}\n00000001 not found\n", 1, 499 * 7 + 1)
    );

    let json = morphogen(&["get", "--server", &a.url, "--server", &b.url, "--json", "00000002", "00000003"]);
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        parsed,
        serde_json::json!([{"key": "00000002", "value": format!("{:016x}", 8)}, {"key": "00000003", "value": null}])
    );
}

#[test]
fn serve_with_tls_and_get_with_ca_look_keys_up_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let records: String = (0..300u32).map(|i| format!("{:08x},{:016x}\n", i * 2, u64::from(i) + 5)).collect();
    let table = build_from_csv(dir.path(), &records);
    // A self-signed certificate for 127.0.0.1 is its own authority.
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    fs::write(&cert, certified.cert.pem()).unwrap();
    fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let options = [
        "--db",
        table.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let (a, b) = (serve_with(&options), serve_with(&options));
    let (a, b) = (a.url.replace("http://", "https://"), b.url.replace("http://", "https://"));

    let output =
        morphogen(&["get", "--ca", cert.to_str().unwrap(), "--server", &a, "--server", &b, "00000004"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), format!("00000004 {:016x}\n", 7));
    // The load generator's lookups and its readings of the servers' memory
    // go over https with the same authority.
    let report = dir.path().join("load.json");
    let ca = cert.to_str().unwrap();
    let load = ["load", "--single-server", "--ca", ca, "--server", &a, "--duration", "0.3"];
    let output = morphogen(&[&load[..], &["--json", report.to_str().unwrap()]].concat());
    assert!(output.status.success(), "{}", text(&output.stderr));
    if cfg!(target_os = "linux") {
        let report: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
        assert!(report["server_memory_mib"][0]["end"].as_f64().unwrap() > 1.0, "{report}");
    }
    // Without --ca the system's roots do not vouch for it.
    let output = morphogen(&["get", "--server", &a, "--server", &b, "00000004"]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("UnknownIssuer"), "{}", text(&output.stderr));
    // A key file that is not one stops serve before it loads the table.
    let output = morphogen(&[
        "serve",
        "--db",
        table.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        cert.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("private key"), "{}", text(&output.stderr));
}

#[test]
fn cert_makes_an_authority_and_certificates_that_tls_lookups_accept() {
    let dir = tempfile::tempdir().unwrap();
    let records: String = (0..300u32).map(|i| format!("{:08x},{:016x}\n", i * 2, u64::from(i) + 5)).collect();
    let table = build_from_csv(dir.path(), &records);
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    let made = morphogen(&["cert", "--dir", certs_arg, "--server", "127.0.0.1", "--server", "localhost,::1"]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    assert!(text(&made.stdout).contains("--tls-cert"), "{}", text(&made.stdout));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(certs.join("localhost.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "a key only its owner reads: {mode:o}");
    }
    let twice = dir.path().join("twice");
    let twice = morphogen(&[
        "cert",
        "--dir",
        twice.to_str().unwrap(),
        "--server",
        "a.test",
        "--server",
        "a.test,b.test",
    ]);
    assert!(
        !twice.status.success() && text(&twice.stderr).contains("named \"a.test\" first"),
        "{}",
        text(&twice.stderr)
    );
    assert!(!dir.path().join("twice").exists(), "nothing was written");
    let again = morphogen(&["cert", "--dir", certs_arg, "--server", "127.0.0.1"]);
    assert!(
        !again.status.success() && text(&again.stderr).contains("exists already"),
        "{}",
        text(&again.stderr)
    );

    let tls = |name: &str| {
        let (cert, key) = (certs.join(format!("{name}.pem")), certs.join(format!("{name}.key")));
        let options = [
            "--db",
            table.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ];
        serve_with(&options)
    };
    let (server_a, server_b) = (tls("127.0.0.1"), tls("localhost"));
    let a = server_a.url.replace("http://", "https://");
    let b = server_b.url.replace("http://127.0.0.1", "https://localhost");
    let ca = certs.join("ca.pem");
    let output =
        morphogen(&["get", "--ca", ca.to_str().unwrap(), "--server", &a, "--server", &b, "00000004"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), format!("00000004 {:016x}\n", 7));

    // A self-signed certificate marked as an authority, as `openssl req
    // -x509` makes: refused, with what to do about it.
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let authority = params.self_signed(&key).unwrap();
    let (cert, key_file) = (dir.path().join("ca-as-server.pem"), dir.path().join("ca-as-server.key"));
    fs::write(&cert, authority.pem()).unwrap();
    fs::write(&key_file, key.serialize_pem()).unwrap();
    let options = [
        "--db",
        table.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key_file.to_str().unwrap(),
    ];
    let server_c = serve_with(&options);
    let c = server_c.url.replace("http://", "https://");
    // Trusting both the authority of `a` and the certificate of `c`.
    let bundle = dir.path().join("bundle.pem");
    fs::write(&bundle, fs::read_to_string(&ca).unwrap() + &authority.pem()).unwrap();
    let output =
        morphogen(&["get", "--ca", bundle.to_str().unwrap(), "--server", &a, "--server", &c, "00000004"]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("marked as a certificate authority") && stderr.contains("morphogen cert"),
        "{stderr}"
    );
}

#[test]
fn get_needs_two_reachable_servers_and_hex_keys() {
    let output = morphogen(&["get", "--server", "http://127.0.0.1:9", "01"]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("exactly two --server"), "{}", text(&output.stderr));

    let output =
        morphogen(&["get", "--server", "http://127.0.0.1:9", "--server", "http://127.0.0.1:9", "01"]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("could not connect"), "{}", text(&output.stderr));

    let output = morphogen(&["get", "--server", "a", "--server", "b", "xyz"]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("hex"), "{}", text(&output.stderr));

    // Key shares to hosts other than this machine over plain HTTP: a warning
    // before anything is sent (`.invalid` names resolve nowhere).
    let output = morphogen(&[
        "get",
        "--timeout",
        "5",
        "--server",
        "http://a.invalid:9",
        "--server",
        "http://b.invalid:9",
        "01",
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("over plain HTTP to a host that is not this machine"),
        "{}",
        text(&output.stderr)
    );
    let output =
        morphogen(&["get", "--server", "http://127.0.0.1:9", "--server", "http://localhost:9", "01"]);
    assert!(
        !text(&output.stderr).contains("plain HTTP"),
        "loopback is not warned about: {}",
        text(&output.stderr)
    );
}

#[test]
fn bench_reports_json_with_verified_answers() {
    let output = morphogen(&[
        "bench",
        "--pages",
        "300",
        "--engine",
        "cpu",
        "--batch",
        "1,3",
        "--iterations",
        "2",
        "--warmup",
        "0",
        "--json",
        "-",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["engine"], "cpu");
    assert_eq!(report["verified"], true);
    assert_eq!(report["pages"], 300);
    assert_eq!(report["table_bytes"], 300 * 4096);
    assert!(report["read_pass_ms"].as_f64().unwrap() > 0.0);
    let batches: Vec<u64> =
        report["results"].as_array().unwrap().iter().map(|r| r["batch"].as_u64().unwrap()).collect();
    assert_eq!(batches, [1, 3]);
    for field in ["pass_ms", "pass_ms_min", "per_query_ms", "qps", "effective_gbps"] {
        assert!(report["results"][0][field].as_f64().unwrap() > 0.0, "{field}");
    }
}

#[test]
fn selftest_finds_the_cpu_engine_equal_to_the_reference() {
    let output = morphogen(&["selftest", "--engine", "cpu"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", text(&output.stderr));
    assert!(stdout.contains("ok  1 pages × 2 sub-tables, 512-byte pages, batch 1"), "{stdout}");
    assert!(stdout.contains("ok  129 pages × 4 sub-tables, 4096-byte pages, batch 33"), "{stdout}");
    assert!(stdout.contains("selftest passed: 23 cases"), "{stdout}");
}

#[test]
fn the_cuda_engine_without_a_gpu_is_a_clear_error_and_auto_falls_back() {
    // CI machines have no GPU (and test builds may lack the `cuda` feature).
    let output = morphogen(&["selftest", "--engine", "cuda"]);
    if !output.status.success() {
        let stderr = text(&output.stderr);
        assert!(stderr.contains("no usable GPU") || stderr.contains("no CUDA engine"), "{stderr}");
        let output = morphogen(&["selftest", "--engine", "auto"]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert!(text(&output.stdout).contains("checking engine cpu on"), "{}", text(&output.stdout));
    }
}

#[test]
fn load_checks_every_answer_and_writes_a_json_report() {
    let dir = tempfile::tempdir().unwrap();
    let (table, report) = (dir.path().join("t.mgdb"), dir.path().join("load.json"));
    let built = morphogen(&[
        "build",
        "--synthetic",
        "3000",
        "--page-size",
        "1024",
        "--output",
        table.to_str().unwrap(),
    ]);
    assert!(built.status.success(), "{}", text(&built.stderr));
    let options = [
        "--db",
        table.to_str().unwrap(),
        "--engine",
        "cpu",
        "--cpu-threads",
        "1",
        "--max-batch",
        "4",
        "--max-queue",
        "8",
    ];
    let (a, b) = (serve_with(&options), serve_with(&options));

    let output = morphogen(&[
        "load",
        "--server",
        &a.url,
        "--server",
        &b.url,
        "--synthetic",
        "3000",
        "--concurrency",
        "6",
        "--duration",
        "1.5",
        "--json",
        report.to_str().unwrap(),
    ]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", text(&output.stderr));
    assert!(stdout.contains("wrong answers: 0"), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    assert_eq!((report["mode"].as_str(), report["checked"].as_bool()), (Some("two-server"), Some(true)));
    assert!(report["lookups"].as_u64().unwrap() > 6, "{report}");
    assert_eq!(report["wrong"], 0);
    assert_eq!(report["errors"], serde_json::json!({}));
    let latency = &report["latency_ms"];
    assert!(latency["p50"].as_f64().unwrap() <= latency["p99"].as_f64().unwrap());
    assert!(latency["max"].as_f64().unwrap() < 10_000.0, "no lookup may outlive its deadline");
    if cfg!(target_os = "linux") {
        assert!(report["server_memory_mib"][1]["end"].as_f64().unwrap() > 1.0, "{report}");
    }

    let single = morphogen(&[
        "load",
        "--single-server",
        "--server",
        &a.url,
        "--concurrency",
        "2",
        "--duration",
        "0.5",
    ]);
    let stdout = text(&single.stdout);
    assert!(single.status.success(), "{stdout}\n{}", text(&single.stderr));
    assert!(stdout.contains("single-server load, 2 clients") && stdout.contains("not checked"), "{stdout}");

    let wrong_count = morphogen(&[
        "load",
        "--server",
        &a.url,
        "--server",
        &b.url,
        "--synthetic",
        "2999",
        "--duration",
        "0.2",
    ]);
    assert!(!wrong_count.status.success());
    assert!(
        text(&wrong_count.stderr).contains("holds 3000 records, --synthetic says 2999"),
        "{}",
        text(&wrong_count.stderr)
    );
}

#[test]
fn load_counts_wrong_answers_and_fails() {
    // A table of 40 records that are not the synthetic ones: every lookup of
    // a "present" key comes back not found, which the load test must call wrong.
    let dir = tempfile::tempdir().unwrap();
    let records: String = (0..40u32).map(|i| format!("{i:08x},{:016x}\n", i * 3)).collect();
    let table = build_from_csv(dir.path(), &records);
    let (a, b) = (serve(&table, "cpu"), serve(&table, "cpu"));
    let output = morphogen(&[
        "load",
        "--server",
        &a.url,
        "--server",
        &b.url,
        "--synthetic",
        "40",
        "--duration",
        "0.5",
    ]);
    assert!(!output.status.success());
    let stdout = text(&output.stdout);
    let wrong: u64 = stdout.lines().find_map(|l| l.strip_prefix("wrong answers: ")).unwrap().parse().unwrap();
    assert!(wrong > 0, "{stdout}");
    assert!(text(&output.stderr).contains("got a wrong answer"), "{}", text(&output.stderr));
}

/// Random batches of changes to the keys `0..500` (8-byte hex keys of the
/// tables these tests build), about a fifth of them deletions.
fn update_batches(count: usize) -> Vec<morphogen_protocol::UpdateRequest> {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    (1..=count as u64)
        .map(|sequence| {
            let changes = (0..rng.random_range(1..30))
                .map(|_| morphogen_protocol::ChangeBody {
                    key: format!("{:08x}", rng.random_range(0..500u32) * 2),
                    value: rng.random_bool(0.8).then(|| format!("{:016x}", rng.random::<u64>())),
                })
                .collect();
            morphogen_protocol::UpdateRequest { sequence, changes, label: None }
        })
        .collect()
}

#[test]
fn update_and_snapshot_take_the_table_of_a_server_of_several() {
    let dir = tempfile::tempdir().unwrap();
    let rows =
        |offset: u64| -> String { (0..200u64).map(|i| format!("{:08x},{:016x}\n", i, i + offset)).collect() };
    build_named(dir.path(), "alpha.mgdb", &rows(100));
    build_named(dir.path(), "beta.mgdb", &rows(900));
    let manifest = dir.path().join("tables.json");
    fs::write(&manifest, r#"{"tables": {"alpha": "alpha.mgdb", "beta": "beta.mgdb"}}"#).unwrap();
    let token = dir.path().join("token");
    fs::write(&token, "tables test token\n").unwrap();
    let (manifest, token) = (manifest.to_str().unwrap(), token.to_str().unwrap());
    let options = ["--tables", manifest, "--engine", "cpu", "--admin-token-file", token];
    let (a, b) = (serve_with(&options), serve_with(&options));
    let changes = dir.path().join("changes.csv");
    fs::write(&changes, "key,value\n00000005,00000000000000cc\n").unwrap();
    let admin_args = ["--admin", &a.url, "--admin", &b.url, "--token-file", token];
    let run = |command: &str, extra: &[&str]| morphogen(&[&[command][..], &admin_args, extra].concat());

    let updated = run("update", &["--table", "beta", "--input", changes.to_str().unwrap()]);
    assert!(updated.status.success(), "{}", text(&updated.stderr));
    assert_eq!(
        text(&updated.stdout).matches("epoch 1, 1 rows changed").count(),
        2,
        "{}",
        text(&updated.stdout)
    );
    let get = |table: &str| {
        let output =
            morphogen(&["get", "--table", table, "--server", &a.url, "--server", &b.url, "00000005"]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        text(&output.stdout)
    };
    assert_eq!(get("beta"), "00000005 00000000000000cc\n");
    assert_eq!(get("alpha"), format!("00000005 {:016x}\n", 105), "the other table is unchanged");

    // Without --table the servers cannot tell which table is meant.
    let ambiguous = run("update", &["--input", changes.to_str().unwrap()]);
    assert!(!ambiguous.status.success());
    assert!(text(&ambiguous.stderr).contains("table_not_named"), "{}", text(&ambiguous.stderr));
    let misnamed = run("update", &["--table", "no such", "--input", changes.to_str().unwrap()]);
    assert!(!misnamed.status.success());
    assert!(text(&misnamed.stderr).contains("names no table"), "{}", text(&misnamed.stderr));
    // A server of several tables has no snapshot directory; the swap reaches the table and is refused.
    let swap = run("snapshot", &["--table", "alpha", "--file", "alpha.mgdb"]);
    assert!(!swap.status.success());
    assert!(text(&swap.stderr).contains("snapshots_disabled"), "{}", text(&swap.stderr));
}

#[test]
fn a_server_killed_mid_stream_of_updates_keeps_every_acknowledged_one() {
    use std::sync::Arc;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let records: String = (0..500u32).map(|i| format!("{:08x},{:016x}\n", i * 2, u64::from(i))).collect();
    let table = build_from_csv(dir.path(), &records);
    let twin_table = dir.path().join("twin.mgdb");
    fs::copy(&table, &twin_table).unwrap();
    let token = dir.path().join("token");
    fs::write(&token, "kill test admin token\n").unwrap();
    let options = |db: &Path| {
        let (db, token) = (db.to_str().unwrap().to_string(), token.to_str().unwrap().to_string());
        vec!["--db".to_string(), db, "--engine".into(), "cpu".into(), "--admin-token-file".into(), token]
    };
    let start = |db: &Path| serve_with(&options(db).iter().map(String::as_str).collect::<Vec<_>>());
    let admin = |server: &Serving| Arc::new(common::admin(&server.url, "kill test admin token"));
    let batches = update_batches(40);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // A server that never crashes: the digest of every epoch.
    let twin = start(&twin_table);
    let twin_admin = admin(&twin);
    let digests: Vec<String> = runtime.block_on(async {
        let mut digests = vec![twin_admin.status().await.unwrap().meta.digest];
        for batch in &batches {
            digests.push(twin_admin.update(batch).await.unwrap().digest);
        }
        digests
    });

    let mut crashing = start(&table);
    let crashing_admin = admin(&crashing);
    let acknowledged = runtime.block_on(async {
        for batch in &batches[..15] {
            crashing_admin.update(batch).await.unwrap();
        }
        // Kill it (SIGKILL) while the 16th batch is in flight.
        let in_flight = tokio::spawn({
            let (admin, batch) = (crashing_admin.clone(), batches[15].clone());
            async move { admin.update(&batch).await }
        });
        tokio::time::sleep(Duration::from_micros(300)).await;
        crashing.child.kill().unwrap();
        crashing.child.wait().unwrap();
        15 + u64::from(in_flight.await.unwrap().is_ok())
    });

    let restarted = start(&table);
    let restarted_admin = admin(&restarted);
    runtime.block_on(async {
        let status = restarted_admin.status().await.unwrap().meta;
        // The 16th batch may have reached the log unacknowledged: either is right.
        assert!(
            status.epoch == acknowledged || status.epoch == 16,
            "epoch {} after {acknowledged}",
            status.epoch
        );
        assert_eq!(status.digest, digests[status.epoch as usize], "epoch {}", status.epoch);
        for batch in &batches[status.epoch as usize..] {
            restarted_admin.update(batch).await.unwrap();
        }
        assert_eq!(restarted_admin.status().await.unwrap().meta.digest, digests[40]);
    });
    // Lookups through the restarted server and its twin see the last value
    // each batch gave the key.
    let key = "00000000";
    let last = batches.iter().flat_map(|b| &b.changes).rfind(|c| c.key == key).map(|c| c.value.clone());
    let expected = last.unwrap_or(Some("0000000000000000".to_string()));
    let output = morphogen(&["get", "--json", "--server", &restarted.url, "--server", &twin.url, key]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let found: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(found[0]["value"].as_str(), expected.as_deref(), "{found}");
}

#[test]
fn morphogen_snapshot_swaps_both_servers_and_a_restart_serves_the_new_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let old_rows: String = (0..500u32).map(|i| format!("{:08x},{:016x}\n", i * 2, u64::from(i))).collect();
    let new_rows: String =
        (0..900u32).map(|i| format!("{:08x},{:016x}\n", i * 2, u64::from(i) + 7)).collect();
    let token = dir.path().join("token");
    fs::write(&token, "swap test admin token\n").unwrap();
    let token = token.to_str().unwrap().to_string();
    // Two servers, each with its own snapshot directory holding both files.
    let dirs: Vec<PathBuf> = ["a", "b"].iter().map(|name| dir.path().join(name)).collect();
    for server_dir in &dirs {
        fs::create_dir(server_dir).unwrap();
        build_named(server_dir, "old.mgdb", &old_rows);
        build_named(server_dir, "new.mgdb", &new_rows);
    }
    let options = |server_dir: &Path| {
        let db = server_dir.join("old.mgdb").to_str().unwrap().to_string();
        let snapshots = server_dir.to_str().unwrap().to_string();
        ["--db", &db, "--snapshot-dir", &snapshots, "--engine", "cpu", "--admin-token-file", &token]
            .map(str::to_string)
    };
    let start =
        |server_dir: &Path| serve_with(&options(server_dir).iter().map(String::as_str).collect::<Vec<_>>());
    let (mut a, b) = (start(&dirs[0]), start(&dirs[1]));
    let admins = |a: &Serving, b: &Serving| {
        vec![
            "--admin".to_string(),
            a.url.clone(),
            "--admin".into(),
            b.url.clone(),
            "--token-file".into(),
            token.clone(),
        ]
    };
    let run = |command: &str, admins: &[String], extra: &[&str]| {
        let mut args = vec![command];
        args.extend(admins.iter().map(String::as_str));
        args.extend(extra);
        morphogen(&args)
    };

    let changes = dir.path().join("changes.csv");
    fs::write(&changes, "key,value\n00000002,00000000000000aa\n").unwrap();
    let updated = run("update", &admins(&a, &b), &["--input", changes.to_str().unwrap()]);
    assert!(updated.status.success(), "{}", text(&updated.stderr));

    let missing = run("snapshot", &admins(&a, &b), &["--file", "missing.mgdb"]);
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("did not swap"), "{}", text(&missing.stderr));
    let swapped = run("snapshot", &admins(&a, &b), &["--file", "new.mgdb"]);
    let stdout = text(&swapped.stdout);
    assert!(swapped.status.success(), "{}", text(&swapped.stderr));
    assert_eq!(stdout.matches("swapped to new.mgdb at epoch 2, 900 records").count(), 2, "{stdout}");

    fs::write(&changes, "key,value\n00000004,00000000000000bb\n").unwrap();
    let updated = run("update", &admins(&a, &b), &["--input", changes.to_str().unwrap(), "--json"]);
    assert!(updated.status.success(), "{}", text(&updated.stderr));
    let replies: serde_json::Value = serde_json::from_slice(&updated.stdout).unwrap();
    assert_eq!(replies[0]["epoch"], 3);
    let digest = replies[0]["digest"].as_str().unwrap().to_string();

    // Killed and started again with the same command line, the server
    // serves the new snapshot and its update, not --db.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let a = start(&dirs[0]);
    let looked_up: serde_json::Value = serde_json::from_slice(
        &morphogen(&["get", "--json", "--server", &a.url, "--server", &b.url, "00000004"]).stdout,
    )
    .unwrap();
    assert_eq!(looked_up[0]["value"].as_str(), Some("00000000000000bb"), "{looked_up}");
    let output =
        morphogen(&["get", "--json", "--server", &a.url, "--server", &b.url, "00000002", "00000640"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let found: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // key 2 is the new file's (the update to the old snapshot is gone with it); key 0x640 = 800 * 2 is new.
    assert_eq!(found[0]["value"].as_str(), Some("0000000000000008"), "{found}");
    assert_eq!(found[1]["value"].as_str(), Some("0000000000000327"), "{found}");
    // Batch 3 was replayed: sent again it is known as applied, and another
    // batch 3 is refused.
    let again = run("update", &admins(&a, &b), &["--input", changes.to_str().unwrap(), "--sequence", "3"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout).matches("applied before").count(), 2, "{}", text(&again.stdout));
    let other = dir.path().join("other.csv");
    fs::write(&other, "key,value\n00000004,00000000000000cc\n").unwrap();
    let status = run("update", &admins(&a, &b), &["--input", other.to_str().unwrap(), "--sequence", "3"]);
    assert!(!status.status.success(), "another batch 3 was taken: the restarted server expects 4");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let restarted = runtime.block_on(async {
        let admin = common::admin(&a.url, "swap test admin token");
        admin.status().await.unwrap().meta
    });
    assert_eq!((restarted.epoch, restarted.digest), (3, digest));

    // Without the admin routes there are no swaps.
    let refused = morphogen(&["serve", "--snapshot-dir", dirs[0].to_str().unwrap(), "--engine", "cpu"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("--snapshot-dir needs an admin token"),
        "{}",
        text(&refused.stderr)
    );
}

#[test]
fn nothing_secret_reaches_the_logs_or_metrics_at_the_most_verbose_level() {
    let dir = tempfile::tempdir().unwrap();
    // Keys and values no log line has any business holding.
    let (key, value) = (hex::encode("secret-key-0451"), hex::encode("secret-value-0451"));
    let (new_key, new_value) = (hex::encode("secret-key-1984"), hex::encode("secret-value-1984"));
    let others: String = (0..300u32).map(|i| format!("{:08x},{:016x}\n", i * 2, u64::from(i))).collect();
    let table = build_from_csv(dir.path(), &format!("{key},{value}\n{others}"));
    let token = "token-that-must-stay-secret";
    let token_file = dir.path().join("token");
    fs::write(&token_file, token).unwrap();
    let options = [
        "--db",
        table.to_str().unwrap(),
        "--engine",
        "cpu",
        "--admin-token-file",
        token_file.to_str().unwrap(),
    ];
    let copy = dir.path().join("copy.mgdb");
    fs::copy(&table, &copy).unwrap();
    let mut copy_options = options;
    copy_options[1] = copy.to_str().unwrap();
    let trace = [("RUST_LOG", "trace")];
    let (a, b) = (serve_with_env(&options, &trace), serve_with_env(&copy_options, &trace));

    let changes = dir.path().join("changes.csv");
    fs::write(&changes, format!("key,value\n{new_key},{new_value}\n")).unwrap();
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_morphogen"))
            .args(args)
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {}", text(&output.stderr));
        output
    };
    let updated = run(&[
        "update",
        "--admin",
        &a.url,
        "--admin",
        &b.url,
        "--token-file",
        token_file.to_str().unwrap(),
        "--input",
        changes.to_str().unwrap(),
    ]);
    let got = run(&["get", "--server", &a.url, "--server", &b.url, &key, &new_key]);
    let found = text(&got.stdout);
    assert!(found.contains(&value) && found.contains(&new_value), "{found}");

    let metrics: String = [&a, &b].iter().map(|server| text(&morphogen_metrics(&server.url))).collect();
    let mut everything = [&a, &b].iter().map(|server| server.log.lock().unwrap().clone()).collect::<String>();
    everything += &text(&updated.stderr);
    everything += &text(&got.stderr);
    everything += &metrics;
    assert!(everything.contains("TRACE") || everything.contains("DEBUG"), "the most verbose level was on");
    for secret in [&key, &value, &new_key, &new_value, &hex::encode(token), token] {
        let plain = String::from_utf8(hex::decode(secret).unwrap_or_default()).unwrap_or_default();
        for form in [secret.to_string(), secret.to_uppercase(), plain] {
            if !form.is_empty() {
                assert!(!everything.contains(&form), "{form:?} appears in the logs or metrics");
            }
        }
    }
    // Nor byte arrays printed with Debug, which is how key shares would show.
    let byte_list = regex_lite_byte_list(&everything);
    assert!(byte_list.is_none(), "a byte list in the logs: {byte_list:?}");
}

/// The text of `GET {url}/metrics`.
fn morphogen_metrics(url: &str) -> Vec<u8> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        reqwest::get(format!("{url}/metrics")).await.unwrap().bytes().await.unwrap().to_vec()
    })
}

/// The first run of eight or more comma-separated small numbers in
/// brackets (`[12, 250, 7, ...]`), if any.
fn regex_lite_byte_list(text: &str) -> Option<String> {
    text.match_indices('[').find_map(|(start, _)| {
        let rest = &text[start + 1..];
        let end = rest.find(']')?;
        let items: Vec<&str> = rest[..end].split(',').map(str::trim).collect();
        let bytes = items.len() >= 8 && items.iter().all(|item| item.parse::<u8>().is_ok());
        bytes.then(|| rest[..end].chars().take(60).collect())
    })
}
