//! Every backend passes the conformance suite: memory, the local file system, and a real
//! S3-compatible server (moto, started by `scripts/test`; see `scripts/s3-server`).

use arca_engine::store::conformance;
use arca_engine::{StoreOptions, open_store};

#[tokio::test]
async fn memory_store_conforms() {
    let s = open_store("memory://", &StoreOptions::default()).unwrap();
    conformance::run(&*s).await.unwrap();
}

#[tokio::test]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_store(
        dir.path().join("repo").to_str().unwrap(),
        &StoreOptions::default(),
    )
    .unwrap();
    conformance::run(&*s).await.unwrap();
    let url = format!("file://{}", dir.path().join("repo2").display());
    let s = open_store(&url, &StoreOptions::default()).unwrap();
    conformance::run(&*s).await.unwrap();
}

/// The S3 endpoint of the test server, or `None` (test skipped) when none runs and none
/// is required.
fn s3_endpoint() -> Option<String> {
    match std::env::var("ARCA_TEST_S3_ENDPOINT") {
        Ok(e) => Some(e),
        Err(_) if std::env::var_os("ARCA_REQUIRE_S3").is_some() => {
            panic!(
                "ARCA_REQUIRE_S3 is set but ARCA_TEST_S3_ENDPOINT is not: start scripts/s3-server"
            )
        }
        Err(_) => {
            eprintln!("no S3 test server (ARCA_TEST_S3_ENDPOINT unset): skipped");
            None
        }
    }
}

#[tokio::test]
async fn s3_store_conforms() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let opts = StoreOptions {
        s3_endpoint: Some(endpoint),
        ..Default::default()
    };
    let prefix = format!("conformance-{}-{}", std::process::id(), rand_suffix());
    let s = open_store(&format!("s3://arca-test/{prefix}"), &opts).unwrap();
    conformance::run(&*s).await.unwrap();
}

#[tokio::test]
async fn unreachable_s3_fails_clearly_and_fast() {
    let opts = StoreOptions {
        // Nothing listens here.
        s3_endpoint: Some("http://127.0.0.1:9".into()),
        retry_timeout: Some(std::time::Duration::from_secs(2)),
        s3_credentials: Some(("x".into(), "x".into())),
        ..Default::default()
    };
    let s = open_store("s3://nobucket/x", &opts).unwrap();
    let t = std::time::Instant::now();
    let err = s.get("config").await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("s3://nobucket/x") && msg.contains("config"),
        "{msg}"
    );
    assert!(err.is_transient(), "{err:?}");
    assert!(t.elapsed() < std::time::Duration::from_secs(30));
}

fn rand_suffix() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{:x}", t.as_nanos())
}

#[tokio::test]
async fn missing_s3_credentials_are_named() {
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        return; // credentials in the environment: nothing to show
    }
    let opts = StoreOptions {
        s3_endpoint: Some("http://127.0.0.1:9".into()),
        retry_timeout: Some(std::time::Duration::from_secs(2)),
        ..Default::default()
    };
    let s = open_store("s3://nobucket/x", &opts).unwrap();
    let msg = s.get("config").await.unwrap_err().to_string();
    assert!(
        msg.contains("no S3 credentials") || msg.contains("127.0.0.1"),
        "{msg}"
    );
}
