//! `portcullis check` and reload: bad configs are refused with file, line and key.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{get, repo_path, Gateway, BIN};

/// Runs `portcullis check` on `text`; returns (success, stderr).
fn check(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

const BASE: &str = r#"[server]
listen = ["127.0.0.1:1"]

[issuers.idp]
issuer = "https://idp.test"
audiences = ["api"]
jwks_url = "https://idp.test/jwks"

[upstreams.backend]
targets = ["127.0.0.1:9"]
"#;

fn assert_refused(extra: &str, line: usize, needles: &[&str]) {
    let (ok, err, path) = check(&format!("{BASE}{extra}"));
    assert!(!ok, "accepted:\n{extra}");
    assert!(
        err.contains(&format!("{path}:{line}:")),
        "no {path}:{line}: in {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
}

#[test]
fn shipped_configs_are_valid() {
    for conf in [
        "conf/gateway.toml",
        "conf/keycloak.example.toml",
        "conf/package.toml",
        "deploy/container.toml",
    ] {
        let out = Command::new(BIN)
            .args(["check", "-c"])
            .arg(repo_path(conf))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{conf}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    }
    // Pingora-style flags do the same.
    let out = Command::new(BIN)
        .args(["-t", "-c"])
        .arg(repo_path("conf/gateway.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn unknown_keys_are_errors() {
    assert_refused(
        "\n[[routes]]\npath = \"/a\"\nupstream = \"backend\"\naccess = \"public\"\ntimeout = 3\n",
        16,
        &["unknown field `timeout`"],
    );
    assert_refused(
        "\n[responses]\nrelam = \"x\"\n",
        13,
        &["unknown field `relam`"],
    );
}

#[test]
fn dangling_references_are_errors() {
    assert_refused(
        "\n[[routes]]\npath = \"/a\"\nupstream = \"nope\"\naccess = \"public\"\n",
        14,
        &[
            "routes[0].upstream",
            "no upstream named \"nope\"",
            "defined: backend",
        ],
    );
    assert_refused(
        "\n[[routes]]\npath = \"/a\"\nupstream = \"backend\"\naccess = \"authenticated\"\nissuers = [\"idp\", \"kc\"]\n",
        16,
        &["routes[0].issuers", "no issuer named \"kc\""],
    );
}

#[test]
fn semantic_errors_name_the_key() {
    assert_refused(
        "\n[[routes]]\npath = \"/a/{x\"\nupstream = \"backend\"\naccess = \"public\"\n",
        13,
        &["routes[0].path"],
    );
    assert_refused(
        "\n[[routes]]\npath = \"/a\"\nupstream = \"backend\"\naccess = \"public\"\n\n[[routes]]\npath = \"/a\"\nupstream = \"backend\"\naccess = \"public\"\n",
        18,
        &["routes[1].path", "overlaps route \"/a\""],
    );
    assert_refused(
        "\n[[routes]]\npath = \"/a\"\nmethods = [\"FETCH\"]\nupstream = \"backend\"\naccess = \"public\"\n",
        14,
        &["routes[0].methods", "unknown method"],
    );
    assert_refused(
        "\n[[routes]]\npath = \"/a\"\naccess = \"public\"\n",
        12,
        &["routes[0].upstream", "exactly one of upstream and respond"],
    );
    assert_refused(
        "\n[[routes]]\npath = \"/a\"\nupstream = \"backend\"\naccess = \"maybe\"\n",
        15,
        &["unknown variant `maybe`"],
    );
}

#[test]
fn rate_limit_mistakes_are_errors() {
    let tier = |body: &str| format!("\n[[rate_limit.tiers]]\nname = \"users\"\n{body}");
    assert_refused(
        &tier("limits = [\"5/fortnight\"]\n"),
        14,
        &[
            "rate_limit.tiers[0].limits",
            "\"5/fortnight\": expected COUNT/PERIOD",
        ],
    );
    assert_refused(
        &tier("limits = [\"5/minute\"]\nbackend = \"redis\"\n"),
        15,
        &[
            "rate_limit.tiers[0].backend",
            "needs a [rate_limit.redis] table",
        ],
    );
    assert_refused(
        &tier("limits = [\"5/minute\"]\ngroup_limits = { nope = [\"1/minute\"] }\n"),
        15,
        &[
            "rate_limit.tiers[0].group_limits",
            "no route has limit_group = \"nope\"",
        ],
    );
    assert_refused(
        &tier("callers = \"anonymous\"\nlimits = [\"5/minute\"]\nconsumer = \"sub\"\n"),
        16,
        &[
            "rate_limit.tiers[0].consumer",
            "only be told apart by client_ip",
        ],
    );
    assert_refused(
        &tier("limits = [\"5/minute\", \"10/60s\"]\n"),
        14,
        &["two limits of the same period"],
    );
    assert_refused(
        "\n[client_ip]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
        12,
        &[
            "client_ip.trusted_proxies",
            "\"10.0.0.0/33\" is not an address or CIDR block",
        ],
    );
    assert_refused(
        "\n[[routes]]\npath = \"/a\"\nupstream = \"backend\"\naccess = \"public\"\ncallers = \"services\"\n",
        15,
        &["routes[0].access", "takes no `allow` rules, `issuers` or `callers`"],
    );
}

#[test]
fn tls_mistakes_are_errors() {
    assert_refused(
        "\n[upstreams.secure]\ntargets = [\"127.0.0.1:9\"]\n\n[upstreams.secure.tls]\nsni = \"\"\n",
        15,
        &[
            "upstreams.secure.tls",
            "an empty one would leave its certificate unverified",
        ],
    );
    assert_refused(
        "\n[upstreams.secure]\ntargets = [\"127.0.0.1:9\"]\n\n[upstreams.secure.tls]\nsni = \"a\"\nca_file = \"missing-ca.pem\"\n",
        15,
        &["upstreams.secure.tls: ca_file", "missing-ca.pem"],
    );
}

#[test]
fn issuer_rules_are_enforced() {
    let issuer = |body: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[issuers.x]\nissuer = \"https://x\"\n{body}"
        )
    };
    let cases: &[(&str, usize, &str)] = &[
        ("audiences = []\njwks_url = \"https://x/j\"\n", 6, "issuers.x.audiences"),
        ("audiences = [\"a\"]\nalgorithms = [\"none\"]\njwks_url = \"https://x/j\"\n", 7, "unknown variant `none`"),
        ("audiences = [\"a\"]\nalgorithms = [\"HS256\"]\n", 7, "need hmac_secret_file or hmac_secret_env"),
        ("audiences = [\"a\"]\nalgorithms = [\"HS256\"]\nhmac_secret = \"inline\"\n", 8, "unknown field `hmac_secret`"),
        ("audiences = [\"a\"]\n", 4, "asymmetric algorithms need keys"),
        ("audiences = [\"a\"]\njwks_url = \"https://x/j\"\ndiscovery = true\n", 8, "choose one key source; jwks_url is set too"),
        ("audiences = [\"a\"]\njwks_file = \"missing.json\"\n", 7, "issuers.x.jwks_file"),
        ("audiences = [\"a\"]\njwks_url = \"ftp://x/j\"\n", 7, "http:// or https://"),
        ("audiences = [\"a\"]\nalgorithms = [\"HS256\"]\nhmac_secret_env = \"PORTCULLIS_TEST_UNSET_VARIABLE\"\n", 8, "is not set"),
        ("audiences = [\"a\"]\njwks_url = \"https://x/j\"\nservice_tokens = \"maybe\"\n", 8, "issuers.x.service_tokens"),
    ];
    for (body, line, needle) in cases {
        let (ok, err, path) = check(&issuer(body));
        assert!(!ok, "accepted: {body}");
        assert!(
            err.contains(&format!("{path}:{line}:")) && err.contains(needle),
            "{body}\n=> {err}"
        );
    }
}

#[test]
fn unreadable_file_is_named() {
    let out = Command::new(BIN)
        .args(["check", "-c", "/nonexistent/gw.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gw.toml"));
}

const SERVED: &str = r#"
[[routes]]
path = "/a"
access = "public"
respond = { body = "first" }
"#;

#[tokio::test]
async fn sighup_applies_a_good_config_and_keeps_the_old_one_on_a_bad_one() {
    let mut gw = Gateway::start(SERVED);
    assert_eq!(get(&gw.url("/a"), None).await.body, "first");
    let hup = |pid: u32| {
        let ok = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };

    let (port, dir) = (gw.port, gw.dir.path().to_path_buf());
    let config = |body: &str| Gateway::config(port, &dir, body);
    std::fs::write(
        &gw.conf,
        config("[[routes]]\npath = \"/a\"\naccess = \"public\"\nrespond = { body = 1 }\n"),
    )
    .unwrap();
    hup(gw.pid());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(gw.is_running(), "SIGHUP killed the gateway");
    assert_eq!(
        get(&gw.url("/a"), None).await.body,
        "first",
        "a bad config replaced the good one"
    );
    assert!(
        gw.log().contains("keeping the running config"),
        "{}",
        gw.log()
    );

    std::fs::write(&gw.conf, config(&SERVED.replace("first", "second"))).unwrap();
    hup(gw.pid());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&gw.url("/a"), None).await.body, "second");
}

#[test]
fn policy_mistakes_are_named() {
    let route = "\n[[routes]]\npath = \"/agencies/{agency}/reports\"\nmethods = [\"GET\", \"DELETE\"]\nupstream = \"backend\"\naccess = \"authenticated\"\n";
    // The rule's first key is on line 18.
    assert_refused(
        &format!("{route}[[routes.allow]]\nclaims = {{ amr = {{ includes = \"mfa\" }} }}\n"),
        18,
        &[
            "routes[0].allow[0].claims.amr.includes",
            "unknown claim operator \"includes\"",
        ],
    );
    assert_refused(
        &format!("{route}[[routes.allow]]\nmatch = {{ tenant = \"claim:agency_id\" }}\n"),
        18,
        &[
            "routes[0].allow[0].match.tenant",
            "no parameter {tenant} (it has: {agency})",
        ],
    );
    assert_refused(
        &format!("{route}[[routes.allow]]\nmatch = {{ agency = \"agency_id\" }}\n"),
        18,
        &["must name a claim, as in \"claim:agency_id\""],
    );
    assert_refused(
        &format!("{route}[[routes.deny]]\nmethods = [\"POST\"]\n"),
        18,
        &["routes[0].deny[0].methods", "can never match"],
    );
    assert_refused(
        &format!("{route}[[routes.deny]]\nfrom = [\"10.0.0.300/8\"]\n"),
        18,
        &[
            "routes[0].deny[0].from[0]",
            "not an address or a CIDR network",
        ],
    );
    assert_refused(
        "\n[[routes]]\npath = \"/s\"\nupstream = \"backend\"\naccess = \"public\"\n[[routes.deny]]\nroles = [\"x\"]\n",
        16,
        &["routes[0].deny[0]", "can never match: a public route reads no token"],
    );
    assert_refused(
        &format!("{route}[routes.ext_authz]\nkind = \"opa\"\nurl = \"opa:8181\"\n"),
        19,
        &["routes[0].ext_authz.url", "http:// or https:// URL"],
    );
}

#[test]
fn the_json_schema_is_current_and_checks_configs() {
    let out = Command::new(BIN).arg("schema").output().unwrap();
    assert!(out.status.success());
    let committed = std::fs::read(repo_path("conf/portcullis.schema.json")).unwrap();
    assert!(
        out.stdout == committed,
        "conf/portcullis.schema.json is stale: run `portcullis schema > conf/portcullis.schema.json`"
    );

    // What an editor's TOML language server does with it: the shipped configs conform, and
    // a misspelt key and a value of the wrong type do not.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"127.0.0.1:8080\"\nthreds = 2\n\n[[routes]]\npath = \"/a\"\naccess = \"open\"\nrespond = { body = \"a\" }\n",
    )
    .unwrap();
    let check = |files: &[&std::path::Path]| {
        let out = Command::new("python3")
            .arg(repo_path("tests/support/schema_check.py"))
            .arg(repo_path("conf/portcullis.schema.json"))
            .args(files)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let shipped = [
        repo_path("conf/gateway.toml"),
        repo_path("conf/keycloak.example.toml"),
        repo_path("conf/package.toml"),
        repo_path("deploy/container.toml"),
    ];
    let (ok, report) = check(&[&shipped[0], &shipped[1], &shipped[2], &shipped[3]]);
    assert!(ok, "{report}");
    let (ok, report) = check(&[&bad]);
    assert!(!ok, "{report}");
    assert!(
        report.contains("server: Additional properties are not allowed ('threds'"),
        "{report}"
    );
    assert!(
        report.contains("server.listen: '127.0.0.1:8080' is not of type 'array'"),
        "{report}"
    );
    assert!(
        report.contains("routes.0.access: 'open' is not valid under any of the given schemas"),
        "{report}"
    );
}

#[test]
fn path_rewrites_are_checked_against_the_route() {
    let route = "\n[[routes]]\npath_prefix = \"/agencies/{agency}\"\nupstream = \"backend\"\naccess = \"public\"\n";
    assert_refused(
        &format!("{route}rewrite = \"/v2/{{tenant}}\"\n"),
        16,
        &["routes[0].rewrite", "no parameter {tenant}"],
    );
    assert_refused(
        &format!("{route}strip_prefix = \"/agency\"\n"),
        16,
        &["routes[0].strip_prefix", "literal leading segments"],
    );
    assert_refused(
        &format!("{route}[routes.request_headers]\nset = {{ \"Bad Name\" = \"x\" }}\n"),
        17,
        &[
            "routes[0].request_headers.set.Bad Name",
            "not a header name",
        ],
    );
}

/// The container image and the Kubernetes example agree with the config they ship: probes on
/// the admin listener's port and paths, a grace period longer than the drain, files that exist.
#[test]
fn the_container_files_agree_with_their_config() {
    let (config, _) = portcullis::config::load(&repo_path("deploy/container.toml")).expect("load");
    let admin_port = config
        .admin
        .listen
        .as_deref()
        .and_then(|a| a.rsplit(':').next())
        .expect("admin listener")
        .to_string();
    let k8s = std::fs::read_to_string(repo_path("deploy/kubernetes.yaml")).unwrap();
    assert!(
        k8s.contains(&format!("containerPort: {admin_port} }}")),
        "admin port"
    );
    assert!(k8s.contains("httpGet: { path: /readyz, port: admin }"));
    assert!(k8s.contains("httpGet: { path: /healthz, port: admin }"));
    assert!(k8s.contains("readOnlyRootFilesystem: true"));
    let grace: u64 = k8s
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds: "))
        .and_then(|v| v.parse().ok())
        .expect("terminationGracePeriodSeconds");
    let drain = config.server.drain_delay + config.server.grace_period;
    assert!(
        grace > drain.as_secs(),
        "{grace}s must exceed drain + grace ({drain:?})"
    );
    for dir in ["pid_file", "upgrade_sock"] {
        let path = if dir == "pid_file" {
            &config.server.pid_file
        } else {
            &config.server.upgrade_sock
        };
        assert!(
            path.starts_with("/run/portcullis/"),
            "{dir} on the writable mount"
        );
    }
    assert!(k8s.contains("mountPath: /run/portcullis"));

    let dockerfile = std::fs::read_to_string(repo_path("Dockerfile")).unwrap();
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let source = line.split_whitespace().nth(1).unwrap();
        if source != "." {
            assert!(
                repo_path(source).exists(),
                "{line}: {source} is not in the repository"
            );
        }
    }
    assert!(dockerfile.contains("USER nonroot"));
}
