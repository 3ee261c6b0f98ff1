//! Entry points for the fuzz targets in `fuzz/` and the corpus replay in `tests/fuzz_corpus.rs`:
//! each takes arbitrary bytes through one parser that reads what clients, providers or
//! operators send, and must return, never panic.

use std::sync::LazyLock;

use http::Method;

use crate::authenticate::jwt;
use crate::authenticate::ClaimPath;
use crate::config::{ClaimsConf, KeyPath, RolesFormat, Source};
use crate::route::{self, MethodSet, PathKind, RouteKey, Router};
use crate::websocket::frame::Position;
use crate::websocket::inband::{ClientStream, RenewalShape};

/// A token, as a bearer header would carry it: split, decoded, its registered claims checked
/// and its identity read the way both claim layouts do.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = jwt::is_compact(text);
    let Ok(token) = jwt::parse(text) else {
        return;
    };
    let audiences: Vec<Box<str>> = vec!["api".into()];
    let rules = jwt::TimeRules {
        audiences: &audiences,
        leeway: 30,
        allow_non_expiring: false,
        audience_required: true,
    };
    let _ = jwt::check_claims(&token.claims, &rules, 1_700_000_000);
    claims(&token.claims);
}

/// An introspection answer, as a provider's body: parsed, judged active or not, its identity
/// read.
pub fn introspection(data: &[u8]) {
    if let Ok(answer) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(data) {
        let _ = crate::authenticate::introspect::judge(&answer);
        claims(&answer);
    }
}

fn claims(claims: &serde_json::Map<String, serde_json::Value>) {
    static LAYOUTS: LazyLock<[crate::authenticate::ClaimMap; 2]> = LazyLock::new(|| {
        let spaced = ClaimsConf {
            roles: vec!["roles".into(), "realm_access.roles".into()],
            roles_format: RolesFormat::SpaceSeparated,
            tenant: Some("agency.id".into()),
            ..ClaimsConf::default()
        };
        [ClaimsConf::default(), spaced].map(|c| {
            crate::authenticate::ClaimMap::compile(&c).unwrap_or_else(|e| panic!("layout: {e}"))
        })
    });
    for layout in LAYOUTS.iter() {
        let _ = layout.read(claims);
    }
    if let Ok(path) = ClaimPath::parse("a.b") {
        let _ = path.get(claims);
    }
}

/// A request path and method, normalized and routed through a table of templates and
/// prefixes, host-bound and not.
pub fn route(data: &[u8]) {
    static ROUTER: LazyLock<Router<usize>> = LazyLock::new(|| {
        let mut router = Router::default();
        let routes = [
            (None, "/public", PathKind::Prefix),
            (None, "/agents/{id}", PathKind::Exact),
            (None, "/agents/{id}/reports/{report}", PathKind::Exact),
            (Some("api.example.com"), "/agents", PathKind::Prefix),
            (None, "/", PathKind::Prefix),
        ];
        for (i, (host, path, kind)) in routes.into_iter().enumerate() {
            let segments = route::parse_pattern(path, kind).unwrap_or_default();
            let key = RouteKey {
                host,
                segments: &segments,
                kind,
                methods: MethodSet::parse(None).unwrap_or_else(|e| panic!("methods: {e}")),
            };
            let _ = router.add(key, i);
        }
        router
    });
    let (method, rest) = data.split_first().unwrap_or((&0, &[]));
    let method = [Method::GET, Method::POST, Method::DELETE][usize::from(*method) % 3].clone();
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (host, path) = text.split_once('\n').unwrap_or(("", text));
    if let Ok(path) = route::normalize(path) {
        let _ = ROUTER.find(Some(host), &path, &method);
        // Normalizing twice changes nothing: what was authorized is what is forwarded.
        assert_eq!(route::normalize(&path).as_deref(), Ok(&*path));
    }
    let _ = route::parse_pattern(text, PathKind::Exact);
}

/// Client-to-gateway WebSocket bytes in arbitrary pieces: frames followed, renewal messages
/// (plain and compressed) taken out.
pub fn websocket(data: &[u8]) {
    let shape = RenewalShape {
        type_field: "type".into(),
        type_value: "access_token".into(),
        token_field: "token".into(),
        max_bytes: 16 * 1024,
    };
    let (cut, bytes) = data.split_first().unwrap_or((&1, &[]));
    let piece = usize::from(*cut).max(1);
    for deflate in [false, true] {
        let mut stream = ClientStream::new(Some(&shape), deflate);
        let mut position = Position::default();
        let mut out = bytes::BytesMut::new();
        let mut events = Vec::new();
        for chunk in bytes.chunks(piece) {
            stream.push(chunk, &mut out, &mut events);
            position.feed(chunk, |_| {});
        }
    }
    let _ = crate::websocket::frame::Head::parse(bytes);
    let _ = crate::websocket::frame::close_code(bytes);
}

/// A config file: parsed and compiled (as `portcullis check` does) without touching the
/// network: key sources, providers and Redis are only contacted by the runtime, and
/// upstreams, whose targets are resolved at compile time, are left out.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Source {
        path: "fuzz.toml".into(),
        text: text.to_string(),
    };
    if let Ok(mut config) = source.parse() {
        // Targets are resolved when compiled: a fuzzed host name would be a DNS query.
        config.upstreams.clear();
        // Files it names are looked for under a directory that does not exist.
        let source = Source {
            path: "/nonexistent/fuzz.toml".into(),
            text: source.text,
        };
        if let Err(e) = crate::snapshot::Snapshot::compile(&config, &source, None) {
            let _ = source.locate(e);
        }
    }
    let _ = KeyPath::root().key("fuzz").index(0).to_string();
}

/// An APISIX file, as `portcullis import apisix` reads it: whatever it makes of it must be a
/// TOML document.
pub fn apisix(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(imported) = crate::import::apisix::translate(text) {
        if let Err(e) = imported.toml.parse::<toml::Table>() {
            panic!("the import wrote no TOML ({e}):\n{}", imported.toml);
        }
    }
}
