//! `fetch_manifest` against a loopback HTTP server: success, already cached, a served file with the
//! wrong hash, a 404, an unreachable server, and replacement of a tampered cached copy.

use std::path::PathBuf;
use std::thread;

use keel_data::{fetch_manifest, Cache, CacheStatus, DataError, Manifest};

const GOOD: &[u8] = b"goal,target\nWrite a poem,Sure\n";
const EVIL: &[u8] = b"goal,target\nSomething else,Sure\n";

/// Serves `/good.csv`, `/evil.csv` and 404 for everything else, on an ephemeral loopback port.
fn serve() -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    thread::spawn(move || {
        for req in server.incoming_requests() {
            let resp = match req.url() {
                "/good.csv" => tiny_http::Response::from_data(GOOD.to_vec()),
                "/evil.csv" => tiny_http::Response::from_data(EVIL.to_vec()),
                _ => tiny_http::Response::from_data(b"not found".to_vec()).with_status_code(404),
            };
            let _ = req.respond(resp);
        }
    });
    format!("http://127.0.0.1:{port}")
}

fn manifest(urls: Vec<String>) -> Manifest {
    let yaml = format!(
        "name: tiny\ntitle: t\ndescription: d\nhomepage: https://example.org\nlicense: MIT\ncitation: c\n\
         file:\n  path: tiny/data.csv\n  urls: [{}]\n  sha256: {}\nrows: 1\nformat: csv\nmapping:\n  prompt: [goal]\n",
        urls.join(", "),
        keel_core::sha256_bytes(GOOD)
    );
    Manifest::from_yaml(&yaml, "tiny.yaml").unwrap()
}

fn cache(name: &str) -> Cache {
    let d = std::env::temp_dir().join(format!("keel-data-fetch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    Cache::new(d)
}

#[test]
fn fetch_verifies_writes_and_reuses() {
    let base = serve();
    let c = cache("ok");
    // The first URL 404s; the second serves the pinned bytes.
    let m = manifest(vec![format!("{base}/missing.csv"), format!("{base}/good.csv")]);
    assert_eq!(c.status(&m).unwrap(), CacheStatus::Missing);
    let f = fetch_manifest(&m, &c).unwrap();
    let expected_path: PathBuf = c.root().join("tiny").join("data.csv");
    assert_eq!(f.path, expected_path);
    assert_eq!(f.url.as_deref(), Some(format!("{base}/good.csv").as_str()));
    assert_eq!(f.bytes, GOOD.len() as u64);
    assert_eq!(std::fs::read(&f.path).unwrap(), GOOD);
    assert_eq!(c.status(&m).unwrap(), CacheStatus::Verified);
    let loaded = m.load(&c).unwrap();
    assert_eq!(loaded.examples[0].prompt.user_text(), "Write a poem");
    // Second fetch: nothing downloaded.
    assert_eq!(fetch_manifest(&m, &c).unwrap().url, None);
    // Only the file itself is in the directory (no temporary left behind).
    let names: Vec<_> = std::fs::read_dir(expected_path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("data.csv")]);
}

#[test]
fn served_file_with_wrong_hash_is_refused_and_not_written() {
    let base = serve();
    let c = cache("evil");
    let url = format!("{base}/evil.csv");
    let m = manifest(vec![url.clone()]);
    let e = fetch_manifest(&m, &c).unwrap_err();
    match &e {
        DataError::HashMismatch { path, expected, actual, .. } => {
            assert!(path.contains(&url), "{path}");
            assert_eq!(expected, &keel_core::sha256_bytes(GOOD));
            assert_eq!(actual, &keel_core::sha256_bytes(EVIL));
        }
        other => panic!("expected a hash mismatch, got {other}"),
    }
    assert!(!c.path_for(&m).exists());
}

#[test]
fn failed_download_names_urls_and_manual_path() {
    let base = serve();
    let c = cache("404");
    let m = manifest(vec![format!("{base}/nope.csv")]);
    let text = fetch_manifest(&m, &c).unwrap_err().to_string();
    let path = c.path_for(&m);
    assert!(text.contains(&format!("{base}/nope.csv: HTTP 404")), "{text}");
    assert!(text.contains(&format!("save it at {}", path.display())), "{text}");

    // A port nobody listens on: connection refused, same advice.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://127.0.0.1:{}/good.csv", listener.local_addr().unwrap().port());
    drop(listener);
    let m = manifest(vec![dead.clone()]);
    let text = fetch_manifest(&m, &c).unwrap_err().to_string();
    assert!(text.contains(&dead) && text.contains(&path.display().to_string()), "{text}");

    // Loading without the file says where to put it.
    let text = m.load(&c).unwrap_err().to_string();
    assert!(text.contains("is not in the cache") && text.contains(&path.display().to_string()), "{text}");
}

#[test]
fn tampered_cached_copy_is_detected_then_replaced() {
    let base = serve();
    let c = cache("tamper");
    let m = manifest(vec![format!("{base}/good.csv")]);
    let path = c.path_for(&m);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, EVIL).unwrap();
    let text = m.load(&c).unwrap_err().to_string();
    assert!(text.contains(&format!("sha256 mismatch for {}", path.display())), "{text}");
    assert!(text.contains(&format!("expected {}", keel_core::sha256_bytes(GOOD))), "{text}");
    assert!(text.contains(&format!("got {}", keel_core::sha256_bytes(EVIL))), "{text}");
    assert!(matches!(c.status(&m).unwrap(), CacheStatus::Mismatch { .. }));
    let f = fetch_manifest(&m, &c).unwrap();
    assert!(f.url.is_some());
    assert_eq!(std::fs::read(&path).unwrap(), GOOD);
}
