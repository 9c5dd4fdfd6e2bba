//! The `worldbridge` binary as a user runs it: flags, config errors, the seed's
//! environment variables, and a clean exit on SIGTERM.

mod common;
use common::*;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn help_and_version() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--http",
        "--line",
        "--world",
        "--data-dir",
        "--memory",
        "--agent",
        "export",
        "import",
    ] {
        assert!(text.contains(flag), "--help mentions {flag}");
    }
    let out = bin().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("worldbridge {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_flags_and_config_are_refused_with_the_name() {
    let out = bin().arg("--htp").arg("x").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--htp"), "{err}");
    assert_eq!(
        err.matches("--help").count(),
        1,
        "one pointer to --help: {err}"
    );

    let cfg = temp_file(
        "bad.toml",
        "[http]\nlisten = [\"127.0.0.1:0\"]\nlistne = 3\n",
    );
    let out = bin().arg("--config").arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("http.listne"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cfg = temp_file("badval.toml", "[sessions]\nmax = 0\n");
    let out = bin().arg("--config").arg(&cfg).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("sessions.max"));

    let out = bin()
        .args(["--http", "0.0.0.0:0", "--line", "127.0.0.1:0", "--memory"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to bind 0.0.0.0:0") && err.contains("http.token"),
        "{err}"
    );
}

#[test]
fn serves_then_stops_cleanly_on_sigterm() {
    let (mut child, addr, logs) =
        spawn(bin().args(["--http", "127.0.0.1:0", "--line", "127.0.0.1:0", "--memory"]));
    assert_eq!(get(addr, "/bridge/health")["status"], "ok");
    let mut c = Client::connect(addr);
    assert_eq!(
        c.call(
            "POST",
            "/bridge/chat",
            Some(r#"{"user_id":"t","message":"hello","room":"The Threshold"}"#)
        )
        .status,
        200
    );
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait().unwrap()).unwrap());
    let status = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    // The reader thread may still be passing on the last lines: read until the pipe ends.
    let all: Vec<String> =
        std::iter::from_fn(|| logs.recv_timeout(Duration::from_secs(5)).ok()).collect();
    assert!(all.iter().any(|l| l.contains("stopped")), "{all:?}");
}

#[test]
fn the_seeds_port_variable_sets_the_first_http_listener() {
    let port = free_port();
    let cfg = temp_file(
        "env.toml",
        "[http]\nlisten = [\"127.0.0.1:0\"]\n[line]\nlisten = []\n",
    );
    let (mut child, addr, _logs) = spawn(
        bin()
            .arg("--config")
            .arg(&cfg)
            .arg("--memory")
            .env("TIMMY_BRIDGE_PORT", port.to_string())
            .env("TIMMY_BRIDGE_HOST", "127.0.0.1"),
    );
    assert_eq!(addr.port(), port);
    assert_eq!(get(addr, "/bridge/health")["status"], "ok");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn localhost_listeners_serve_on_127_0_0_1_and_start_up_names_what_is_used() {
    let (ph, pl) = (free_port(), free_port());
    let (mut child, rx) = spawn_logged(bin().args([
        "--http",
        &format!("localhost:{ph}"),
        "--line",
        &format!("localhost:{pl}"),
        "--memory",
    ]));
    // Everything up to the IPv4 line listener's "listening on" line.
    let line_v4 = format!("listening on 127.0.0.1:{pl} (line protocol)");
    let mut logs = Vec::new();
    while !logs.iter().any(|l: &String| l.contains(&line_v4)) {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => logs.push(l),
            Err(_) => panic!("no {line_v4:?} in {logs:#?}"),
        }
    }
    let all = logs.join("\n");
    assert!(
        all.contains(&format!("listening on 127.0.0.1:{ph} (http, websocket)")),
        "{all}"
    );
    for want in [
        "world: local",
        "world file: the built-in world",
        "workshop state file: ",
        "workshop inbox: ",
        "federation peers: none",
        "game dials: none",
        "data directory: none (--memory",
    ] {
        let n = logs.iter().filter(|l| l.contains(want)).count();
        assert_eq!(n, 1, "one INFO line with {want:?} in {all}");
    }
    assert!(!all.contains("Some(") && !all.contains("(Http)"), "{all}");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{ph}").parse().unwrap();
    assert_eq!(get(addr, "/bridge/health")["status"], "ok");
    let mut game = LineClient::connect(format!("127.0.0.1:{pl}").parse().unwrap());
    game.hello("mud", "evennia");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn the_world_key_is_made_once_printed_by_worldbridge_key_and_shown_in_health() {
    let dir = scratch_dir("world-key");
    // Before any bridge ran: `worldbridge key` creates the key and prints its public half.
    let out = bin()
        .args(["key", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        public.starts_with("ed25519:") && public.len() == 8 + 44,
        "{public}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("created the world key"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("world.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "only the owner reads the secret key");
    }
    // A second call prints the same key and creates nothing.
    let again = bin()
        .args(["key", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), public);
    assert!(
        again.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // A bridge on that directory uses it, shows it in health, and `key` still works while
    // the bridge holds the directory.
    let (mut child, addr, _logs) = spawn(
        bin()
            .args([
                "--http",
                "127.0.0.1:0",
                "--line",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&dir),
    );
    assert_eq!(get(addr, "/bridge/health")["public_key"], public.as_str());
    let during = bin()
        .args(["key", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&during.stdout).trim(), public);
    let _ = child.kill();
    let _ = child.wait();
    // federation.key_file names another place; a broken key file is refused at start.
    let elsewhere = dir.join("keys").join("mine.key");
    let cfg = temp_file(
        "key.toml",
        &format!(
            "[federation]\nkey_file = {:?}\n",
            elsewhere.display().to_string()
        ),
    );
    let out = bin().args(["key", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), public);
    assert!(elsewhere.exists());
    std::fs::write(dir.join("world.key"), "not a key\n").unwrap();
    let out = bin()
        .args([
            "--http",
            "127.0.0.1:0",
            "--line",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("world.key") && err.contains("not a world key file"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
