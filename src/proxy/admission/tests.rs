//! Admission's decisions on requests made up in memory, over a compiled test config.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::authorize::Forbidden;
use crate::config::Source;
use crate::token::{self, TokenSpec};

const ISS: &str = "https://idp.test";

fn dev(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("conf/dev")
        .join(file)
}

fn snapshot(extra: &str) -> Snapshot {
    let text = format!(
        r#"[server]
listen = ["127.0.0.1:1"]

[issuers.idp]
issuer = "{ISS}"
audiences = ["api"]
jwks_file = "{jwks}"

[upstreams.backend]
targets = ["127.0.0.1:9"]

[[routes]]
path = "/public"
access = "public"
upstream = "backend"

[[routes]]
path_prefix = "/agents"
access = "authenticated"
upstream = "backend"
[[routes.allow]]
methods = ["GET"]
roles = ["agent"]

[[routes]]
path = "/hello"
access = "public"
respond = {{ body = "hi" }}
{extra}"#,
        jwks = dev("jwks.json").display()
    );
    let source = Source {
        path: PathBuf::from("test.toml"),
        text,
    };
    let config = source.parse().expect("test config parses");
    Snapshot::compile(&config, &source, None).expect("test config compiles")
}

fn token(roles: &[&str]) -> String {
    let key =
        token::load_key(&dev("private-key.pem"), jsonwebtoken::Algorithm::RS256).expect("dev key");
    let spec = TokenSpec {
        alg: jsonwebtoken::Algorithm::RS256,
        kid: Some("dev-1".into()),
        typ: "at+jwt".into(),
        issuer: ISS.into(),
        audience: vec!["api".into()],
        subject: "alice".into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        scope: None,
        azp: None,
        ttl: Some(Duration::from_secs(300)),
        issued_ago: Duration::ZERO,
        not_before_in: None,
        claims: Vec::new(),
    };
    token::mint(&key, &spec).expect("mint")
}

fn request(method: &str, path: &str, token: Option<&str>) -> RequestHeader {
    let mut req = RequestHeader::build(method, path.as_bytes(), None).expect("request");
    if let Some(t) = token {
        req.insert_header("authorization", format!("Bearer {t}"))
            .expect("header");
    }
    req
}

async fn decide<'s>(snap: &'s Snapshot, req: &RequestHeader) -> Admission<'s> {
    let client = Client {
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        cert: None,
        audit: true,
    };
    admit(req, snap, &client).await
}

#[tokio::test]
async fn unknown_paths_are_not_found_and_bad_ones_are_refused() {
    let snap = snapshot("");
    let a = decide(&snap, &request("GET", "/nowhere", None)).await;
    assert!(matches!(a.decision, Err(Rejection::NotFound)));
    assert!(a.facts.route.is_none());
    let a = decide(&snap, &request("GET", "/a/%2e%2e/%2e%2e/x", None)).await;
    assert!(
        matches!(a.decision, Err(Rejection::BadPath(_))),
        "{:?}",
        a.decision
    );
}

#[tokio::test]
async fn public_routes_forward_without_identity() {
    let snap = snapshot("");
    let a = decide(&snap, &request("GET", "/public", Some("not-even-a-token"))).await;
    let Ok(Decision::Forward(pass)) = a.decision else {
        panic!("{:?}", a.decision);
    };
    assert!(pass.identity().is_none());
    assert!(a.facts.principal.is_none());
    assert!(a.facts.token_id.is_none());
}

#[tokio::test]
async fn a_missing_token_is_unauthorized_on_its_route() {
    let snap = snapshot("");
    let a = decide(&snap, &request("GET", "/agents/7", None)).await;
    assert!(matches!(
        a.decision,
        Err(Rejection::Unauthorized(AuthError::Missing))
    ));
    assert_eq!(
        a.facts.route.map(|id| &*snap.router[id].name),
        Some("/agents")
    );
    let a = decide(&snap, &request("GET", "/agents/7", Some("x.y.z"))).await;
    assert!(matches!(a.decision, Err(Rejection::Unauthorized(_))));
}

#[tokio::test]
async fn a_valid_token_without_the_role_is_forbidden_but_known() {
    let snap = snapshot("");
    let t = token(&["viewer"]);
    let a = decide(&snap, &request("GET", "/agents/7", Some(&t))).await;
    assert!(matches!(
        a.decision,
        Err(Rejection::Forbidden(Forbidden::Insufficient))
    ));
    assert_eq!(
        a.facts.principal.map(|p| p.subject.clone()).as_deref(),
        Some("alice")
    );
    assert!(a.facts.token_id.is_some());
    let t = token(&["agent"]);
    let a = decide(&snap, &request("DELETE", "/agents/7", Some(&t))).await;
    assert!(matches!(
        a.decision,
        Err(Rejection::Forbidden(Forbidden::MethodNotCovered))
    ));
}

#[tokio::test]
async fn an_admitted_request_gets_a_pass_with_its_identity() {
    let snap = snapshot("");
    let t = token(&["agent"]);
    let a = decide(&snap, &request("GET", "/%61gents/7", Some(&t))).await;
    assert_eq!(a.facts.granted, Some(Granted::Rule(0)), "{:?}", a.decision);
    let Ok(Decision::Forward(pass)) = a.decision else {
        panic!("{:?}", a.decision);
    };
    assert_eq!(snap.upstreams[pass.upstream()].name.as_ref(), "backend");
    assert!(pass.identity().is_some());
    assert_eq!(pass.upstream_path(), Some("/agents/7"));
    assert!(!pass.is_websocket());
}

#[tokio::test]
async fn direct_answers_are_the_routes_own() {
    let snap = snapshot("");
    let a = decide(&snap, &request("GET", "/hello", None)).await;
    let Ok(Decision::Respond(reply)) = a.decision else {
        panic!("{:?}", a.decision);
    };
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], b"hi");
}

#[tokio::test]
async fn the_tier_limit_refuses_the_request_over_it() {
    let snap = snapshot(
        "\n[[rate_limit.tiers]]\nname = \"anonymous\"\ncallers = \"anonymous\"\nlimits = [\"1/minute\"]\n",
    );
    let first = decide(&snap, &request("GET", "/public", None)).await;
    assert!(first.decision.is_ok());
    assert!(first.facts.quota.is_some_and(|q| q.allowed()));
    let second = decide(&snap, &request("GET", "/public", None)).await;
    assert!(matches!(second.decision, Err(Rejection::Limited(_))));
    assert!(second.facts.quota.is_some_and(|q| !q.allowed()));
}

/// Every request's future holds admission's whole state, and moving it costs a copy: the
/// calls that go to the network are boxed so that the common case stays small.
#[test]
fn admission_is_small_to_carry() {
    let snap = snapshot("");
    let req = RequestHeader::build("GET", b"/agents", None).unwrap();
    let client = Client {
        ip: Ipv4Addr::LOCALHOST.into(),
        cert: None,
        audit: false,
    };
    let admission = crate::trace::within(None, admit(&req, &snap, &client));
    let size = std::mem::size_of_val(&admission);
    assert!(size <= 2048, "admission's future is {size} bytes");
}
