//! The binary's start-up contract: bad configuration fails at once with a message naming the key.

use std::process::Command;

fn touchstream(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_touchstream")).args(args).envs(env.iter().copied()).output().expect("run");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn bad_config_fails_at_start_naming_the_key() {
    let (ok, out) = touchstream(&["run", "--set", "journey.lookbak=3d"], &[]);
    assert!(!ok);
    assert!(out.contains("lookbak"), "{out}");

    let (ok, out) = touchstream(&["run"], &[("TOUCHSTREAM__ALERTS__TARGET_DELAY", "half an hour")]);
    assert!(!ok);
    assert!(out.contains("alerts.target_delay"), "{out}");

    let (ok, out) = touchstream(&["run", "--set", "topics.partitions=0"], &[]);
    assert!(!ok);
    assert!(out.contains("topics.partitions"), "{out}");

    let dir = std::env::temp_dir().join(format!("touchstream-cli-{}.toml", std::process::id()));
    std::fs::write(&dir, "[kafka]\nbrokers = \"b:9092\"\nguarantee = \"sometimes\"\n").unwrap();
    let (ok, out) = touchstream(&["run", "--config", dir.to_str().unwrap()], &[]);
    std::fs::remove_file(&dir).ok();
    assert!(!ok);
    assert!(out.contains("kafka.guarantee"), "{out}");

    let (ok, out) = touchstream(&["check-config", "--set", "models.candidate=/nonexistent/candidate-models"], &[]);
    assert!(!ok);
    assert!(out.contains("models.candidate") && out.contains("/nonexistent/candidate-models"), "{out}");
}

#[test]
fn check_config_accepts_the_example_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/touchstream.toml");
    let (ok, out) = touchstream(&["check-config", "--config", path], &[("TOUCHSTREAM__KAFKA__GROUP_ID", "from-env")]);
    assert!(ok, "{out}");
    assert!(out.contains("config ok") && out.contains("from-env"), "{out}");
}

#[test]
fn check_config_prints_toml_that_loads_back_with_secrets_masked() {
    let dir = std::env::temp_dir().join(format!("touchstream-cli-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.toml");
    std::fs::write(&input, "[kafka.options]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\"sasl.password\" = \"topsecret-1\"\n[kafka.consumer]\n\"ssl.key.password\" = \"topsecret-2\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_touchstream"))
        .args(["check-config", "--config", input.to_str().unwrap()])
        .env("TOUCHSTREAM__REGISTRY__PASSWORD", "topsecret-3")
        .env("TOUCHSTREAM__REGISTRY__USERNAME", "svc")
        .output()
        .expect("run");
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    for secret in ["topsecret-1", "topsecret-2", "topsecret-3"] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
    assert!(printed.contains("SCRAM-SHA-512"), "{printed}");
    // stdout is the configuration alone: it loads back as a config file.
    let back = dir.join("printed.toml");
    std::fs::write(&back, &printed).unwrap();
    let (ok, again) = touchstream(&["check-config", "--config", back.to_str().unwrap()], &[]);
    std::fs::remove_dir_all(&dir).ok();
    assert!(ok && again.contains("SCRAM-SHA-512"), "{again}");
}

/// Serves one HTTP response on a free port; returns the address.
fn one_response(status_line: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            // Read the whole request head before answering and closing.
            let (mut buf, mut len) = ([0u8; 1024], 0);
            while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf[len..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => len += n,
                }
            }
            let _ = write!(s, "{status_line}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    addr
}

#[test]
fn probe_exits_zero_only_on_200() {
    let (ok, out) = touchstream(&["probe", "--addr", &one_response("HTTP/1.1 200 OK"), "--path", "/readyz"], &[]);
    assert!(ok, "{out}");
    let (ok, _) = touchstream(&["probe", "--addr", &one_response("HTTP/1.1 503 Service Unavailable")], &[]);
    assert!(!ok, "503 is unhealthy");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (ok, out) = touchstream(&["probe", "--addr", &closed], &[]);
    assert!(!ok && out.contains("probe"), "nothing listening: {out}");
}
